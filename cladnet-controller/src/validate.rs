//! Request validation. Every check names the field by its API (JSON) name.

use std::net::{Ipv4Addr, SocketAddrV4};

use base64::Engine as _;
use ipnet::Ipv4Net;

use crate::{
    error::{ControllerError, Result},
    ipam::MAX_POOL_PREFIX_LEN,
    recommend::PRIVATE_RANGES,
};

/// A network id: 1..=63 of `[a-z0-9-]`, starting and ending with a letter or digit.
pub fn network_id(field: &str, s: &str) -> Result<()> {
    label(field, s)
}

/// An external peer's name, with the rules of a network id (it becomes host id `ext-<name>`).
pub fn peer_name(field: &str, s: &str) -> Result<()> {
    label(field, s)
}

/// 1..=63 of `[a-z0-9-]`, starting and ending with a letter or digit (a DNS label).
fn label(field: &str, s: &str) -> Result<()> {
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if s.is_empty() || s.len() > 63 {
        return Err(ControllerError::invalid(
            field,
            "must be 1 to 63 characters",
        ));
    }
    if !s.bytes().all(ok_char) || s.starts_with('-') || s.ends_with('-') {
        return Err(ControllerError::invalid(
            field,
            format!("{s:?}: use lowercase letters, digits and '-', not at either end"),
        ));
    }
    Ok(())
}

/// A host (node) id: 1..=128 of `[A-Za-z0-9._-]`.
pub fn host_id(field: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ControllerError::invalid(
            field,
            format!("{s:?}: use 1 to 128 of A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// Free text of at most `max` bytes without control characters.
pub fn text(field: &str, s: &str, max: usize) -> Result<()> {
    if s.len() > max {
        return Err(ControllerError::invalid(
            field,
            format!("longer than {max} bytes"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ControllerError::invalid(
            field,
            "contains control characters",
        ));
    }
    Ok(())
}

/// An overlay CIDR: valid, no host bits, inside 10/8, 172.16/12 or 192.168/16, /8 to /29.
pub fn overlay_cidr(field: &str, s: &str) -> Result<Ipv4Net> {
    let net: Ipv4Net = s.parse().map_err(|_| {
        ControllerError::invalid(
            field,
            format!("{s:?} is not an IPv4 CIDR like 10.77.0.0/24"),
        )
    })?;
    if net.trunc() != net {
        return Err(ControllerError::invalid(
            field,
            format!("{s} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    if !PRIVATE_RANGES.iter().any(|r| r.contains(&net)) {
        return Err(ControllerError::invalid(
            field,
            format!(
                "{net} is not inside a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"
            ),
        ));
    }
    if net.prefix_len() > MAX_POOL_PREFIX_LEN {
        return Err(ControllerError::invalid(
            field,
            format!("{net} is too small: use /{MAX_POOL_PREFIX_LEN} or larger"),
        ));
    }
    Ok(net)
}

/// A host CIDR as reported or given to the recommender (host bits allowed).
pub fn host_cidr(field: &str, s: &str) -> Result<Ipv4Net> {
    s.parse().map_err(|_| {
        ControllerError::invalid(
            field,
            format!("{s:?} is not an IPv4 CIDR like 192.168.1.10/24"),
        )
    })
}

/// A base64 X25519 public key (32 bytes).
pub fn public_key(field: &str, s: &str) -> Result<()> {
    match base64::engine::general_purpose::STANDARD.decode(s) {
        Ok(k) if k.len() == 32 => Ok(()),
        Ok(k) => Err(ControllerError::invalid(
            field,
            format!("decodes to {} bytes, not 32", k.len()),
        )),
        Err(e) => Err(ControllerError::invalid(field, format!("not base64: {e}"))),
    }
}

/// An optional `ip:port` endpoint: empty means none.
pub fn endpoint(field: &str, s: &str) -> Result<Option<SocketAddrV4>> {
    if s.is_empty() {
        return Ok(None);
    }
    let e: SocketAddrV4 = s
        .parse()
        .map_err(|_| ControllerError::invalid(field, format!("{s:?} is not an IPv4 ip:port")))?;
    if e.port() == 0 || e.ip().is_unspecified() || e.ip().is_broadcast() || e.ip().is_multicast() {
        return Err(ControllerError::invalid(
            field,
            format!("{e} is not a usable unicast endpoint"),
        ));
    }
    Ok(Some(e))
}

/// An optional IPv4 address: empty means none.
pub fn optional_ipv4(field: &str, s: &str) -> Result<Option<Ipv4Addr>> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| ControllerError::invalid(field, format!("{s:?} is not an IPv4 address")))
}

/// A field that must not be empty.
pub fn required<'a>(field: &str, s: &'a str) -> Result<&'a str> {
    if s.is_empty() {
        Err(ControllerError::invalid(field, "is required"))
    } else {
        Ok(s)
    }
}

/// A parsed policy enum, defaulting when empty.
pub fn policy_enum<T: std::str::FromStr<Err = cladnet_core::policy::PolicyParseError> + Default>(
    field: &str,
    s: &str,
) -> Result<T> {
    if s.is_empty() {
        return Ok(T::default());
    }
    s.parse()
        .map_err(|e: cladnet_core::policy::PolicyParseError| {
            ControllerError::invalid(
                field,
                format!("{:?} is not one of {}", e.value, e.allowed.trim_end()),
            )
        })
}

/// Site labels: each at most 128 bytes of text, named `{prefix}.providerName` etc.
pub fn site(prefix: &str, site: &crate::model::SiteRecord) -> Result<()> {
    for (field, value) in [
        ("providerName", &site.provider),
        ("regionId", &site.region),
        ("availabilityZoneId", &site.zone),
        ("virtualNetworkId", &site.vpc),
        ("subnetId", &site.subnet),
    ] {
        text(&format!("{prefix}.{field}"), value, 128)?;
    }
    Ok(())
}

/// Remote command names.
pub const COMMANDS: [&str; 4] = ["up", "down", "enable-encryption", "disable-encryption"];

/// A remote command name (cb-network's upper-case names are accepted too).
pub fn command_type(field: &str, s: &str) -> Result<String> {
    let normalized = s.to_ascii_lowercase().replace('_', "-");
    if COMMANDS.contains(&normalized.as_str()) {
        Ok(normalized)
    } else {
        Err(ControllerError::invalid(
            field,
            format!("{s:?} is not one of {}", COMMANDS.join(" ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ControllerError) -> String {
        match e {
            ControllerError::InvalidArgument { field, .. } => field,
            other => panic!("not InvalidArgument: {other}"),
        }
    }

    #[test]
    fn network_ids() {
        network_id("cladnetId", "aws-gcp-1").unwrap();
        for bad in ["", "-a", "a-", "A", "a_b", &"x".repeat(64)] {
            assert_eq!(
                field_of(network_id("cladnetId", bad).unwrap_err()),
                "cladnetId",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn peer_names_and_addresses() {
        peer_name("name", "laptop-1").unwrap();
        for bad in ["", "-a", "Laptop", "a.b", &"x".repeat(64)] {
            assert_eq!(
                field_of(peer_name("name", bad).unwrap_err()),
                "name",
                "{bad:?}"
            );
        }
        assert_eq!(optional_ipv4("ip", "").unwrap(), None);
        assert_eq!(
            optional_ipv4("ip", "10.0.0.9").unwrap(),
            Some(Ipv4Addr::new(10, 0, 0, 9))
        );
        for bad in ["10.0.0", "10.0.0.9/32", "fd00::1"] {
            assert_eq!(
                field_of(optional_ipv4("ip", bad).unwrap_err()),
                "ip",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn overlay_cidrs() {
        assert_eq!(
            overlay_cidr("f", "10.77.0.0/24").unwrap().to_string(),
            "10.77.0.0/24"
        );
        let msg = overlay_cidr("ipv4AddressSpace", "10.77.0.1/24")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("did you mean 10.77.0.0/24"), "{msg}");
        assert!(
            overlay_cidr("f", "8.8.8.0/24")
                .unwrap_err()
                .to_string()
                .contains("private")
        );
        assert!(overlay_cidr("f", "10.0.0.0/30").is_err());
        assert!(overlay_cidr("f", "10.0.0.0/33").is_err());
        assert!(overlay_cidr("f", "nonsense").is_err());
    }

    #[test]
    fn keys_endpoints_commands() {
        public_key("publicKey", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        assert!(
            public_key("publicKey", "AAAA")
                .unwrap_err()
                .to_string()
                .contains("3 bytes")
        );
        assert!(public_key("publicKey", "!!").is_err());
        assert_eq!(endpoint("e", "").unwrap(), None);
        assert!(endpoint("e", "1.2.3.4:0").is_err());
        assert!(endpoint("e", "0.0.0.0:80").is_err());
        assert_eq!(endpoint("e", "1.2.3.4:8055").unwrap().unwrap().port(), 8055);
        assert_eq!(
            command_type("c", "ENABLE_ENCRYPTION").unwrap(),
            "enable-encryption"
        );
        assert!(command_type("c", "reboot").is_err());
        assert!(host_id("hostId", "node-1.a_b").is_ok());
        assert!(host_id("hostId", "a/b").is_err());
        assert!(text("name", "a\nb", 10).is_err());
    }
}
