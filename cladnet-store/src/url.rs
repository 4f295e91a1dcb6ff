//! `StoreUrl`: which store to use, as one string (`embedded:PATH`, `etcd://HOST:PORT,...`).

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::Error;

const EMBEDDED_PREFIX: &str = "embedded:";
const ETCD_PREFIX: &str = "etcd://";
const EXPECTED: &str = "expected `embedded:PATH` or `etcd://HOST:PORT[,HOST:PORT...]`";

/// Which store to use.
///
/// Syntax (see `docs/store.md`):
///
/// - `embedded:PATH`: the embedded store in the redb file `PATH` (relative or absolute;
///   created if missing).
/// - `etcd://HOST:PORT[,HOST:PORT...]`: an etcd cluster, through all the listed client
///   endpoints (plain HTTP/2). `HOST` is a name, an IPv4 address or a bracketed IPv6 address.
///
/// ```
/// use cladnet_store::StoreUrl;
/// let url: StoreUrl = "etcd://10.0.0.1:2379,[fd00::2]:2379".parse().unwrap();
/// assert_eq!(url.to_string(), "etcd://10.0.0.1:2379,[fd00::2]:2379");
/// let err = "etcd://10.0.0.1:99999".parse::<StoreUrl>().unwrap_err();
/// assert!(err.to_string().contains("endpoint 1 port"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoreUrl {
    /// The embedded single-node store.
    Embedded {
        /// The redb file.
        path: PathBuf,
    },
    /// An etcd cluster.
    Etcd {
        /// The client endpoints (at least one, no duplicates).
        endpoints: Vec<EtcdEndpoint>,
    },
}

/// One etcd client endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EtcdEndpoint {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl EtcdEndpoint {
    /// The endpoint as the `http://` URL the etcd client dials.
    pub fn http_url(&self) -> String {
        format!("http://{self}")
    }
}

impl fmt::Display for EtcdEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded { path } => write!(f, "{EMBEDDED_PREFIX}{}", path.display()),
            Self::Etcd { endpoints } => {
                f.write_str(ETCD_PREFIX)?;
                for (i, ep) in endpoints.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{ep}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for StoreUrl {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let fail = |field: &str, reason: String| Error::InvalidUrl {
            input: input.to_owned(),
            field: field.to_owned(),
            reason,
        };
        if let Some(path) = input.strip_prefix(EMBEDDED_PREFIX) {
            if path.is_empty() {
                return Err(fail("path", "is empty (write embedded:PATH)".into()));
            }
            if path.starts_with("//") {
                return Err(fail(
                    "path",
                    "takes a file path, not `//`: write embedded:/abs/path or embedded:rel/path"
                        .into(),
                ));
            }
            if path.contains('\0') {
                return Err(fail("path", "contains a NUL byte".into()));
            }
            return Ok(Self::Embedded {
                path: PathBuf::from(path),
            });
        }
        if let Some(list) = input.strip_prefix(ETCD_PREFIX) {
            if list.is_empty() {
                return Err(fail(
                    "endpoints",
                    "no endpoint given (write etcd://HOST:PORT)".into(),
                ));
            }
            let mut endpoints: Vec<EtcdEndpoint> = Vec::new();
            let mut seen = HashMap::new();
            for (i, raw) in list.split(',').enumerate() {
                let n = i + 1;
                let ep = parse_endpoint(raw).map_err(|(part, reason)| {
                    let field = match part {
                        "" => format!("endpoint {n}"),
                        part => format!("endpoint {n} {part}"),
                    };
                    fail(&field, reason)
                })?;
                if let Some(first) = seen.insert(ep.clone(), n) {
                    return Err(fail(
                        &format!("endpoint {n}"),
                        format!("`{ep}` duplicates endpoint {first}"),
                    ));
                }
                endpoints.push(ep);
            }
            return Ok(Self::Etcd { endpoints });
        }
        let reason = match input.split_once(':') {
            None if input.is_empty() => format!("is empty; {EXPECTED}"),
            None => format!("missing; {EXPECTED}"),
            Some(("etcd", _)) => format!("`etcd:` must be followed by `//`; {EXPECTED}"),
            Some((scheme, _)) => format!("unknown scheme `{scheme}`; {EXPECTED}"),
        };
        Err(fail("scheme", reason))
    }
}

/// Parses `HOST:PORT`; on error returns (which part: "", "host" or "port", reason).
fn parse_endpoint(raw: &str) -> Result<EtcdEndpoint, (&'static str, String)> {
    if raw.is_empty() {
        return Err(("", "is empty (stray comma?)".into()));
    }
    if let Some(c) = raw
        .chars()
        .find(|c| matches!(c, '/' | '?' | '#' | '@') || c.is_whitespace())
    {
        return Err((
            "",
            format!("`{raw}` contains {c:?}: only HOST:PORT is allowed (no path, query, user)"),
        ));
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(("host", format!("`{raw}` opens `[` without closing `]`")));
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(("host", format!("`{host}` is not an IPv6 address")));
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err((
                "port",
                format!("missing after `[{host}]` (write [IPV6]:PORT)"),
            ));
        };
        (host, port)
    } else {
        let Some((host, port)) = raw.rsplit_once(':') else {
            return Err(("port", format!("missing in `{raw}` (write HOST:PORT)")));
        };
        if host.contains(':') {
            return Err((
                "host",
                format!("`{host}`: put IPv6 addresses in brackets, [{host}]"),
            ));
        }
        if host.is_empty() {
            return Err(("host", "is empty".into()));
        }
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(("host", format!("`{host}` contains {c:?}")));
        }
        (host, port)
    };
    let port = parse_port(port).map_err(|reason| ("port", reason))?;
    Ok(EtcdEndpoint {
        host: host.to_owned(),
        port,
    })
}

fn parse_port(port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err("is empty".into());
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{port}` is not a number"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err("0 is not a valid port".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("`{port}` is out of range 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &str) -> (String, String) {
        match input.parse::<StoreUrl>() {
            Err(Error::InvalidUrl { field, reason, .. }) => (field, reason),
            other => panic!("{input:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn parses_embedded() {
        let url: StoreUrl = "embedded:/var/lib/cladnet/store.redb".parse().unwrap();
        assert_eq!(
            url,
            StoreUrl::Embedded {
                path: "/var/lib/cladnet/store.redb".into()
            }
        );
        let url: StoreUrl = "embedded:data/store.redb".parse().unwrap();
        assert_eq!(url.to_string(), "embedded:data/store.redb");
    }

    #[test]
    fn parses_etcd_lists() {
        let url: StoreUrl = "etcd://127.0.0.1:2379,etcd-2.local:2380,[::1]:12379"
            .parse()
            .unwrap();
        let StoreUrl::Etcd { endpoints } = &url else {
            panic!("not etcd: {url:?}")
        };
        assert_eq!(endpoints.len(), 3);
        assert_eq!(endpoints[1].host, "etcd-2.local");
        assert_eq!(endpoints[2].host, "::1");
        assert_eq!(endpoints[2].http_url(), "http://[::1]:12379");
        assert_eq!(
            url.to_string(),
            "etcd://127.0.0.1:2379,etcd-2.local:2380,[::1]:12379"
        );
        assert_eq!(url.to_string().parse::<StoreUrl>().unwrap(), url);
    }

    #[test]
    fn errors_name_field_and_reason() {
        assert_eq!(
            err("embedded:"),
            ("path".into(), "is empty (write embedded:PATH)".into())
        );
        assert_eq!(err("embedded:///x").0, "path");
        assert_eq!(err("").0, "scheme");
        assert!(err("/var/lib/x").1.starts_with("missing"));
        assert!(err("http://h:1").1.contains("unknown scheme `http`"));
        assert!(err("etcd:h:1").1.contains("`//`"));
        assert_eq!(err("etcd://").0, "endpoints");
        assert_eq!(
            err("etcd://h:1,,h:2"),
            ("endpoint 2".into(), "is empty (stray comma?)".into())
        );
        assert_eq!(
            err("etcd://h"),
            (
                "endpoint 1 port".into(),
                "missing in `h` (write HOST:PORT)".into()
            )
        );
        assert_eq!(
            err("etcd://h:"),
            ("endpoint 1 port".into(), "is empty".into())
        );
        assert_eq!(err("etcd://h:x1").1, "`x1` is not a number");
        assert_eq!(
            err("etcd://a:1,h:70000"),
            (
                "endpoint 2 port".into(),
                "`70000` is out of range 1-65535".into()
            )
        );
        assert_eq!(err("etcd://h:0").1, "0 is not a valid port");
        assert_eq!(
            err("etcd://:1"),
            ("endpoint 1 host".into(), "is empty".into())
        );
        assert_eq!(err("etcd://::1:5").0, "endpoint 1 host");
        assert_eq!(err("etcd://[::1:5").0, "endpoint 1 host");
        assert_eq!(err("etcd://[zz]:5").0, "endpoint 1 host");
        assert_eq!(err("etcd://[::1]").0, "endpoint 1 port");
        assert_eq!(err("etcd://h:1/path").0, "endpoint 1");
        assert_eq!(err("etcd://h$:1").0, "endpoint 1 host");
        assert_eq!(err("etcd://h:1,h:1").1, "`h:1` duplicates endpoint 1");
        // The message carries the input, the field and the reason.
        let msg = "etcd://h:1,h:x"
            .parse::<StoreUrl>()
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "invalid store URL \"etcd://h:1,h:x\": endpoint 2 port: `x` is not a number"
        );
    }
}
