//! Value parsers for flags, so bad values are rejected by clap (naming the flag) before any
//! call is made.

use std::net::{Ipv4Addr, SocketAddrV4};

use base64::Engine as _;
use ipnet::Ipv4Net;

/// Parses a duration such as `90s`, `30m`, `1h`, `7d`, `2w` or `1h30m` into seconds.
///
/// Every number needs a unit (`s`, `m`, `h`, `d`, `w`); the total must be positive.
pub(crate) fn duration_secs(s: &str) -> Result<u64, String> {
    const HINT: &str = "use a number with a unit s, m, h, d or w, e.g. 90s, 30m, 1h, 7d, 1h30m";
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("empty duration ({HINT})"));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(format!("unexpected '{c}' in duration ({HINT})")),
        };
        if number.is_empty() {
            return Err(format!("unit '{c}' without a number ({HINT})"));
        }
        let n: u64 = number.parse().map_err(|_| "duration too long".to_owned())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or("duration too long")?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(format!("missing unit after {number} ({HINT})"));
    }
    if total == 0 {
        return Err("duration must be positive (omit the flag for no expiry)".into());
    }
    Ok(total)
}

/// Parses an IPv4 CIDR (host bits may be set, as in `192.168.1.10/24`).
pub(crate) fn ipv4_cidr(s: &str) -> Result<String, String> {
    s.trim()
        .parse::<Ipv4Net>()
        .map(|n| n.to_string())
        .map_err(|_| "expected an IPv4 CIDR such as 10.77.0.0/24".to_owned())
}

/// Parses the address space of a new network: an IPv4 CIDR or `auto` (let the controller
/// recommend one).
pub(crate) fn address_space(s: &str) -> Result<String, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok("auto".to_owned());
    }
    ipv4_cidr(s).map_err(|_| "expected an IPv4 CIDR such as 10.77.0.0/24, or auto".to_owned())
}

/// Parses a network id: 1 to 63 characters of `a-z`, `0-9` and `-`.
pub(crate) fn network_id(s: &str) -> Result<String, String> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("expected 1 to 63 characters of a-z, 0-9 and -".to_owned())
    }
}

/// Parses an external peer's name: 1 to 63 characters of `a-z`, `0-9` and `-`, not starting
/// or ending with `-` (its host id becomes `ext-NAME`).
pub(crate) fn peer_name(s: &str) -> Result<String, String> {
    let ok = network_id(s).is_ok() && !s.starts_with('-') && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(
            "expected 1 to 63 characters of a-z, 0-9 and -, not starting or ending with -"
                .to_owned(),
        )
    }
}

/// Parses a WireGuard public key: base64 of 32 bytes, as `wg pubkey` prints it.
pub(crate) fn public_key(s: &str) -> Result<String, String> {
    let s = s.trim();
    match base64::engine::general_purpose::STANDARD.decode(s) {
        Ok(k) if k.len() == 32 => Ok(s.to_owned()),
        Ok(k) => Err(format!(
            "decodes to {} bytes; a WireGuard public key is 32 bytes of base64 (`wg pubkey`)",
            k.len()
        )),
        Err(e) => Err(format!("not base64 ({e}); use the output of `wg pubkey`")),
    }
}

/// Parses an `IPv4:PORT` endpoint.
pub(crate) fn endpoint(s: &str) -> Result<String, String> {
    s.trim()
        .parse::<SocketAddrV4>()
        .map(|e| e.to_string())
        .map_err(|_| "expected IPv4:PORT such as 198.51.100.20:51820".to_owned())
}

/// Parses an IPv4 address.
pub(crate) fn ipv4(s: &str) -> Result<String, String> {
    s.trim()
        .parse::<Ipv4Addr>()
        .map(|a| a.to_string())
        .map_err(|_| "expected an IPv4 address such as 10.77.0.50".to_owned())
}

/// Parses the controller URL: `http://` or `https://` with a host.
pub(crate) fn controller_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or("expected an http:// or https:// URL, e.g. http://127.0.0.1:8053")?;
    if rest.is_empty() {
        return Err("the URL has no host".into());
    }
    tonic::transport::Endpoint::from_shared(s.to_owned()).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// A controller pin: `sha256:<64 hex digits>` (or the bare hex).
pub(crate) fn pin(s: &str) -> Result<cladnet_proto::tls::Pin, String> {
    s.trim()
        .parse()
        .map_err(|e: cladnet_proto::tls::PinError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_secs("90s"), Ok(90));
        assert_eq!(duration_secs("30m"), Ok(1_800));
        assert_eq!(duration_secs("1h"), Ok(3_600));
        assert_eq!(duration_secs("7d"), Ok(604_800));
        assert_eq!(duration_secs("2w"), Ok(1_209_600));
        assert_eq!(duration_secs("1h30m"), Ok(5_400));
        assert_eq!(duration_secs(" 1d12h "), Ok(129_600));
    }

    #[test]
    fn bad_durations() {
        for bad in ["", "90", "h", "1x", "1.5h", "-1h", "0s", "0h0m", "1h 30m"] {
            assert!(duration_secs(bad).is_err(), "{bad:?} accepted");
        }
        assert!(duration_secs("99999999999999999999w").is_err());
        assert!(duration_secs("90").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn cidrs() {
        assert_eq!(ipv4_cidr("192.168.1.10/24").unwrap(), "192.168.1.10/24");
        assert!(ipv4_cidr("192.168.1.0").is_err());
        assert!(ipv4_cidr("fd00::/8").is_err());
        assert!(ipv4_cidr("10.0.0.0/33").is_err());
        assert_eq!(address_space("auto").unwrap(), "auto");
        assert_eq!(address_space("AUTO").unwrap(), "auto");
        assert_eq!(address_space("10.77.0.0/24").unwrap(), "10.77.0.0/24");
        assert!(address_space("automatic").is_err());
    }

    #[test]
    fn network_ids() {
        assert!(network_id("net-1").is_ok());
        assert!(network_id(&"a".repeat(63)).is_ok());
        assert!(network_id(&"a".repeat(64)).is_err());
        assert!(network_id("").is_err());
        assert!(network_id("Net").is_err());
        assert!(network_id("a_b").is_err());
    }

    #[test]
    fn external_peer_values() {
        assert_eq!(peer_name("laptop-1").unwrap(), "laptop-1");
        for bad in ["", "-a", "a-", "Laptop", "a.b", &"x".repeat(64)] {
            assert!(peer_name(bad).is_err(), "{bad:?}");
        }
        let key = "q3Vh0e9y1xVvM8nH0y8o5b0P1o3F5w9J2zWmC2Kp3Ek=";
        assert_eq!(public_key(key).unwrap(), key);
        assert!(public_key("AAAA").unwrap_err().contains("3 bytes"));
        assert!(public_key("!!").unwrap_err().contains("not base64"));
        assert_eq!(
            endpoint("198.51.100.20:51820").unwrap(),
            "198.51.100.20:51820"
        );
        for bad in ["198.51.100.20", "host:51820", "[fd00::1]:51820"] {
            assert!(endpoint(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ipv4("10.77.0.50").unwrap(), "10.77.0.50");
        assert!(ipv4("10.77.0.50/32").is_err());
    }

    #[test]
    fn controller_urls() {
        assert_eq!(
            controller_url("http://127.0.0.1:8053/").unwrap(),
            "http://127.0.0.1:8053"
        );
        assert!(controller_url("https://ctl.example:443").is_ok());
        assert!(controller_url("127.0.0.1:8053").is_err());
        assert!(controller_url("ftp://x").is_err());
        assert!(controller_url("http://").is_err());
    }
}
