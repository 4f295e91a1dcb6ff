//! Link policy: how one peer reaches another.
//!
//! Both ends of a pair compute the link from the network's policy and the two peers' site
//! labels, so they always agree on the mode (PLAIN or SEALED) without talking to each other.

use std::{net::SocketAddrV4, time::Duration};

use serde::{Deserialize, Serialize};

/// Keepalive interval of a SEALED (WireGuard) link, between agents and asked of external
/// WireGuard clients alike: keeps NAT mappings open in both directions, so either end can
/// send to a peer it could not reach before the peer sent first.
pub const PERSISTENT_KEEPALIVE: Duration = Duration::from_secs(25);

/// Which underlay endpoint of a peer to use (cb-network's rule types).
#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleType {
    /// Always the peer's public endpoint.
    #[default]
    Basic,
    /// The peer's private endpoint when both sit in the same site, else the public one.
    CostPrioritized,
}

/// When links are encrypted.
#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// Every link is SEALED (WireGuard).
    #[default]
    Always,
    /// Links between sites are SEALED; links inside one site are PLAIN.
    InterSite,
    /// Every link is PLAIN (trusted underlays only).
    Never,
}

/// A value of a policy field that is not one of the allowed names.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("{field}: {value:?} is not one of {allowed}")]
pub struct PolicyParseError {
    /// The field name.
    pub field: &'static str,
    /// The rejected value.
    pub value: String,
    /// The allowed values.
    pub allowed: &'static str,
}

/// Implements `as_str`, `Display` and `FromStr` (with [`PolicyParseError`]) for an enum of API
/// names: `named_enum!(Type, "fieldName", Type::A => "a", Type::B => "b")`. Exported for the
/// controller's settings of the same kind.
#[macro_export]
macro_rules! named_enum {
    ($ty:ty, $field:literal, $($variant:path => $name:literal),+) => {
        impl $ty {
            /// The API name of this value.
            pub const fn as_str(self) -> &'static str {
                match self { $($variant => $name),+ }
            }
        }

        impl ::core::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::core::str::FromStr for $ty {
            type Err = $crate::policy::PolicyParseError;

            fn from_str(s: &str) -> ::core::result::Result<Self, Self::Err> {
                match s {
                    $($name => Ok($variant),)+
                    _ => Err($crate::policy::PolicyParseError {
                        field: $field,
                        value: s.to_owned(),
                        allowed: concat!($($name, " "),+),
                    }),
                }
            }
        }
    };
}

named_enum!(RuleType, "ruleType", RuleType::Basic => "basic", RuleType::CostPrioritized => "cost-prioritized");
named_enum!(Encryption, "encryption", Encryption::Always => "always", Encryption::InterSite => "inter-site", Encryption::Never => "never");

/// Where a peer runs. Empty strings mean "unknown".
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Site {
    /// Cloud provider, e.g. `aws`.
    pub provider: String,
    /// Region, e.g. `ap-northeast-2`.
    pub region: String,
    /// Availability zone.
    pub zone: String,
    /// Virtual network (VPC/VNet) id.
    pub vpc: String,
    /// Subnet id.
    pub subnet: String,
}

impl Site {
    /// Whether two peers share a private underlay: same provider and VPC, and — when both
    /// name one — the same subnet. Unknown provider or VPC never counts as the same site.
    pub fn same_as(&self, other: &Self) -> bool {
        let known = |a: &str, b: &str| !a.is_empty() && a.eq_ignore_ascii_case(b);
        let compatible =
            |a: &str, b: &str| a.is_empty() || b.is_empty() || a.eq_ignore_ascii_case(b);
        known(&self.provider, &other.provider)
            && known(&self.vpc, &other.vpc)
            && compatible(&self.subnet, &other.subnet)
    }
}

/// A network's link policy.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Policy {
    /// Endpoint rule.
    pub rule: RuleType,
    /// Encryption rule.
    pub encryption: Encryption,
}

/// What the policy needs to know about a peer.
#[derive(Clone, Debug, Default)]
pub struct PeerView {
    /// Site labels.
    pub site: Site,
    /// Public endpoint as the reflector saw it.
    pub public: Option<SocketAddrV4>,
    /// Private underlay endpoint.
    pub private: Option<SocketAddrV4>,
    /// A standard WireGuard client registered through the API rather than a CLADNet agent:
    /// it speaks only WireGuard, so links to it are always SEALED, on its public endpoint.
    pub external: bool,
}

/// PLAIN or SEALED.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum LinkMode {
    /// CLAD header + inner packet, no encryption.
    Plain,
    /// Standard WireGuard.
    Sealed,
}

impl LinkMode {
    /// The API name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Sealed => "sealed",
        }
    }
}

/// Same site or not (cb-network's peer scope).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Scope {
    /// Same site.
    Intra,
    /// Different sites.
    Inter,
}

impl Scope {
    /// The API name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Intra => "intra",
            Self::Inter => "inter",
        }
    }
}

/// The link from a local peer to a remote one.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Link {
    /// Where to send: `None` while the remote has reported no usable endpoint.
    pub endpoint: Option<SocketAddrV4>,
    /// Encryption mode; symmetric for a pair.
    pub mode: LinkMode,
    /// Scope; symmetric for a pair.
    pub scope: Scope,
}

impl Policy {
    /// The link from `local` to `remote`. `mode` and `scope` are the same whichever end
    /// computes them; `endpoint` is the remote's.
    pub fn link(&self, local: &PeerView, remote: &PeerView) -> Link {
        let scope = if local.site.same_as(&remote.site) {
            Scope::Intra
        } else {
            Scope::Inter
        };
        let mode = match (self.encryption, scope) {
            _ if local.external || remote.external => LinkMode::Sealed,
            (Encryption::Always, _) | (Encryption::InterSite, Scope::Inter) => LinkMode::Sealed,
            (Encryption::Never, _) | (Encryption::InterSite, Scope::Intra) => LinkMode::Plain,
        };
        let endpoint = match (self.rule, scope) {
            _ if remote.external => remote.public,
            (RuleType::CostPrioritized, Scope::Intra) => remote.private.or(remote.public),
            _ => remote.public,
        };
        Link {
            endpoint,
            mode,
            scope,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn site(provider: &str, vpc: &str, subnet: &str) -> Site {
        Site {
            provider: provider.into(),
            vpc: vpc.into(),
            subnet: subnet.into(),
            ..Site::default()
        }
    }

    fn peer(s: Site, public: &str, private: &str) -> PeerView {
        PeerView {
            site: s,
            public: public.parse().ok(),
            private: private.parse().ok(),
            external: false,
        }
    }

    #[test]
    fn names_round_trip_and_bad_names_are_explained() {
        for r in [RuleType::Basic, RuleType::CostPrioritized] {
            assert_eq!(r.as_str().parse::<RuleType>(), Ok(r));
        }
        for e in [Encryption::Always, Encryption::InterSite, Encryption::Never] {
            assert_eq!(e.to_string().parse::<Encryption>(), Ok(e));
        }
        let err = "sometimes".parse::<Encryption>().unwrap_err().to_string();
        assert!(
            err.contains("encryption") && err.contains("inter-site"),
            "{err}"
        );
    }

    #[test]
    fn cost_prioritized_uses_private_endpoints_inside_a_site() {
        let a = peer(
            site("aws", "vpc-1", "sub-1"),
            "203.0.113.1:8055",
            "10.0.0.1:8055",
        );
        let b = peer(
            site("aws", "vpc-1", "sub-1"),
            "203.0.113.2:8055",
            "10.0.0.2:8055",
        );
        let c = peer(
            site("gcp", "vpc-1", ""),
            "198.51.100.3:8055",
            "10.0.0.3:8055",
        );
        let p = Policy {
            rule: RuleType::CostPrioritized,
            encryption: Encryption::InterSite,
        };
        let ab = p.link(&a, &b);
        assert_eq!(
            (ab.endpoint, ab.mode, ab.scope),
            (b.private, LinkMode::Plain, Scope::Intra)
        );
        let ac = p.link(&a, &c);
        assert_eq!(
            (ac.endpoint, ac.mode, ac.scope),
            (c.public, LinkMode::Sealed, Scope::Inter)
        );
        let basic = Policy {
            rule: RuleType::Basic,
            ..p
        };
        assert_eq!(basic.link(&a, &b).endpoint, b.public);
    }

    #[test]
    fn external_wireguard_peers_are_always_sealed_on_their_public_endpoint() {
        let a = peer(site("aws", "v", ""), "203.0.113.1:8055", "10.0.0.1:8055");
        let mut ext = peer(site("aws", "v", ""), "198.51.100.9:51820", "10.0.0.9:51820");
        ext.external = true;
        let p = Policy {
            rule: RuleType::CostPrioritized,
            encryption: Encryption::Never,
        };
        let l = p.link(&a, &ext);
        assert_eq!((l.mode, l.endpoint), (LinkMode::Sealed, ext.public));
        assert_eq!(p.link(&ext, &a).mode, LinkMode::Sealed);
    }

    #[test]
    fn unknown_sites_are_never_the_same() {
        assert!(!Site::default().same_as(&Site::default()));
        assert!(!site("aws", "", "").same_as(&site("aws", "", "")));
        assert!(site("aws", "v", "").same_as(&site("AWS", "v", "s")));
        assert!(!site("aws", "v", "s1").same_as(&site("aws", "v", "s2")));
    }

    fn any_site() -> impl Strategy<Value = Site> {
        let label = prop::sample::select(vec!["", "a", "b"]);
        (label.clone(), label.clone(), label)
            .prop_map(|(provider, vpc, subnet)| site(provider, vpc, subnet))
    }

    proptest! {
        #[test]
        fn both_ends_agree_on_mode_and_scope(a in any_site(), b in any_site(), rule in 0..2u8, enc in 0..3u8, ext in any::<bool>()) {
            let policy = Policy {
                rule: [RuleType::Basic, RuleType::CostPrioritized][rule as usize],
                encryption: [Encryption::Always, Encryption::InterSite, Encryption::Never][enc as usize],
            };
            let (mut pa, pb) = (peer(a, "192.0.2.1:1", "10.0.0.1:1"), peer(b, "192.0.2.2:1", "10.0.0.2:1"));
            pa.external = ext;
            let (ab, ba) = (policy.link(&pa, &pb), policy.link(&pb, &pa));
            prop_assert_eq!(ab.mode, ba.mode);
            prop_assert_eq!(ab.scope, ba.scope);
            if policy.encryption == Encryption::Always || ext {
                prop_assert_eq!(ab.mode, LinkMode::Sealed);
            }
        }
    }
}
