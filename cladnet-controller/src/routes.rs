//! Advertised prefixes ("routes"): a peer carries traffic for the IPv4 prefixes it advertises,
//! as a WireGuard peer does for its AllowedIPs. Pure logic: the network settings that govern
//! them, their records, the validation of an advertised set against the network and the other
//! peers, and how a new set merges with the recorded one. The service (`service/routes.rs`)
//! reads and writes the store around it.

use cladnet_proto::v1 as pb;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{ControllerError, Result};

/// Prefixes one peer may advertise: a Kubernetes node has one podCIDR, a subnet router a few
/// subnets. Bounds the peer record and the PEERS trie entries each peer costs every agent.
pub const MAX_ROUTES_PER_PEER: usize = 16;

/// Shortest prefix a peer may advertise, except `0.0.0.0/0` for an exit node: larger ones
/// (`10.0.0.0/7`) take over address space no single host serves.
pub const MIN_ROUTE_PREFIX_LEN: u8 = 8;

/// Address blocks a route must not overlap: "this network", loopback, link-local, and
/// multicast with the reserved and broadcast space above it. No host forwards for them.
const NOT_ROUTABLE: [(Ipv4Net, &str); 4] = [
    (net([0, 0, 0, 0], 8), "\"this network\" (0.0.0.0/8)"),
    (net([127, 0, 0, 0], 8), "loopback (127.0.0.0/8)"),
    (net([169, 254, 0, 0], 16), "link-local (169.254.0.0/16)"),
    (
        net([224, 0, 0, 0], 3),
        "multicast and reserved (224.0.0.0/3)",
    ),
];

const fn net(o: [u8; 4], len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(std::net::Ipv4Addr::new(o[0], o[1], o[2], o[3]), len)
}

/// The default route, advertised by an exit node.
pub const DEFAULT_ROUTE: Ipv4Net = net([0, 0, 0, 0], 0);

/// How a network admits the prefixes its peers advertise.
#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteApproval {
    /// Every valid prefix is approved when advertised.
    #[default]
    Auto,
    /// A prefix waits as pending until an admin approves it.
    Manual,
}
cladnet_core::named_enum!(RouteApproval, "routeApproval", RouteApproval::Auto => "auto", RouteApproval::Manual => "manual");

/// Whether a network admits exit nodes (peers advertising `0.0.0.0/0`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Eq, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitNodes {
    /// `0.0.0.0/0` is refused.
    #[default]
    Deny,
    /// One peer at a time may advertise `0.0.0.0/0`.
    Allow,
}
cladnet_core::named_enum!(ExitNodes, "exitNodes", ExitNodes::Deny => "deny", ExitNodes::Allow => "allow");

/// Where an advertised prefix stands.
#[derive(Clone, Copy, Debug, Deserialize, Eq, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteState {
    /// Waiting for an admin (route approval `manual`); reserved, not routed.
    Pending,
    /// Routed: in every agent's tables.
    Approved,
    /// Kept out by an admin; neither routed nor reserved.
    Rejected,
}
cladnet_core::named_enum!(RouteState, "state", RouteState::Pending => "pending", RouteState::Approved => "approved", RouteState::Rejected => "rejected");

impl RouteState {
    /// Whether the prefix is held for its peer: another peer may not advertise an overlapping
    /// one.
    pub fn reserves(self) -> bool {
        self != Self::Rejected
    }
}

/// One advertised prefix as stored in its peer's record.
#[derive(Clone, Debug, Deserialize, Eq, PartialEq, Serialize)]
pub struct RouteRecord {
    /// The prefix (no host bits).
    pub prefix: Ipv4Net,
    /// Approval state.
    pub state: RouteState,
    /// Unix seconds when the peer started advertising it.
    pub advertised_at: i64,
    /// Unix seconds of the last decision (approval, automatic or not, or rejection); 0 = none.
    pub decided_at: i64,
}

impl RouteRecord {
    /// The API view, for peer `host_id`.
    pub fn to_proto(&self, host_id: &str) -> pb::Route {
        pb::Route {
            host_id: host_id.to_owned(),
            prefix: self.prefix.to_string(),
            state: self.state.as_str().to_owned(),
            advertised_at: self.advertised_at,
            decided_at: self.decided_at,
        }
    }
}

/// The network settings a route is checked against.
#[derive(Clone, Copy, Debug)]
pub struct RouteRules {
    /// The network's address space (overlay addresses).
    pub cidr: Ipv4Net,
    /// Whether `0.0.0.0/0` may be advertised.
    pub exit_nodes: ExitNodes,
}

/// A prefix another peer holds (pending or approved).
#[derive(Clone, Copy, Debug)]
pub struct HeldPrefix<'a> {
    /// The peer.
    pub node: &'a str,
    /// The prefix.
    pub prefix: Ipv4Net,
}

/// Whether `a` and `b` share an address. The default route is the fallback of a longest
/// prefix match, so it only clashes with another default route.
fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    if a == DEFAULT_ROUTE || b == DEFAULT_ROUTE {
        return a == b;
    }
    a.contains(&b) || b.contains(&a)
}

/// Parses and checks one prefix (`field` names it) on its own: syntax, host bits, size, and
/// the network's address space and exit node setting.
pub fn prefix(field: &str, s: &str, rules: RouteRules) -> Result<Ipv4Net> {
    let p: Ipv4Net = s.trim().parse().map_err(|_| {
        ControllerError::invalid(
            field,
            format!("{s:?} is not an IPv4 prefix like 10.244.3.0/24"),
        )
    })?;
    if p.trunc() != p {
        return Err(ControllerError::invalid(
            field,
            format!("{p} has host bits set; did you mean {}?", p.trunc()),
        ));
    }
    if p == DEFAULT_ROUTE {
        if rules.exit_nodes != ExitNodes::Allow {
            return Err(ControllerError::invalid(
                field,
                "0.0.0.0/0 makes this peer an exit node, which the network does not allow \
                 (its exitNodes setting is deny; `cladnet network update NETWORK --exit-nodes allow`)",
            ));
        }
        return Ok(p);
    }
    if p.prefix_len() < MIN_ROUTE_PREFIX_LEN {
        return Err(ControllerError::invalid(
            field,
            format!(
                "{p} is too large: /{MIN_ROUTE_PREFIX_LEN} at most (only 0.0.0.0/0, for an exit node, is larger)"
            ),
        ));
    }
    if let Some((_, what)) = NOT_ROUTABLE.iter().find(|(n, _)| overlaps(*n, p)) {
        return Err(ControllerError::invalid(
            field,
            format!("{p} overlaps {what}, which is not routed"),
        ));
    }
    if overlaps(p, rules.cidr) {
        return Err(ControllerError::invalid(
            field,
            format!(
                "{p} overlaps the network's address space {}: overlay addresses are routed already",
                rules.cidr
            ),
        ));
    }
    Ok(p)
}

/// Checks a whole advertised set (`field` names the list, entries are `field[i]`): at most
/// [`MAX_ROUTES_PER_PEER`], each valid ([`prefix`]), no two overlapping, none overlapping a
/// prefix `others` hold. Returns the prefixes sorted.
pub fn advertised(
    field: &str,
    prefixes: &[String],
    rules: RouteRules,
    others: &[HeldPrefix<'_>],
) -> Result<Vec<Ipv4Net>> {
    if prefixes.len() > MAX_ROUTES_PER_PEER {
        return Err(ControllerError::invalid(
            field,
            format!(
                "{} prefixes; a peer may advertise at most {MAX_ROUTES_PER_PEER}",
                prefixes.len()
            ),
        ));
    }
    let mut out: Vec<Ipv4Net> = Vec::with_capacity(prefixes.len());
    for (i, s) in prefixes.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let p = prefix(&f, s, rules)?;
        if let Some(j) = out.iter().position(|q| overlaps(*q, p)) {
            return Err(ControllerError::invalid(
                f,
                format!("{p} overlaps {field}[{j}] ({})", out[j]),
            ));
        }
        not_held(&f, p, others)?;
        out.push(p);
    }
    out.sort();
    Ok(out)
}

/// Refuses `p` if it overlaps a prefix another peer holds.
pub fn not_held(field: &str, p: Ipv4Net, others: &[HeldPrefix<'_>]) -> Result<()> {
    match others.iter().find(|o| overlaps(o.prefix, p)) {
        Some(o) => Err(ControllerError::invalid(
            field,
            format!("{p} overlaps {} advertised by peer {:?}", o.prefix, o.node),
        )),
        None => Ok(()),
    }
}

/// The peer's routes after it advertised `prefixes` (validated): prefixes it kept keep their
/// record (an approval or rejection stands), new ones start approved under `auto` and pending
/// under `manual`, and withdrawn ones are gone.
pub fn merge(
    current: &[RouteRecord],
    prefixes: &[Ipv4Net],
    approval: RouteApproval,
    now: i64,
) -> Vec<RouteRecord> {
    prefixes
        .iter()
        .map(|p| match current.iter().find(|r| r.prefix == *p) {
            Some(kept) => kept.clone(),
            None => RouteRecord {
                prefix: *p,
                state: match approval {
                    RouteApproval::Auto => RouteState::Approved,
                    RouteApproval::Manual => RouteState::Pending,
                },
                advertised_at: now,
                decided_at: if approval == RouteApproval::Auto {
                    now
                } else {
                    0
                },
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: RouteRules = RouteRules {
        cidr: net([10, 77, 0, 0], 16),
        exit_nodes: ExitNodes::Deny,
    };

    fn p(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn field_and_reason(e: ControllerError) -> (String, String) {
        match e {
            ControllerError::InvalidArgument { field, reason } => (field, reason),
            other => panic!("not InvalidArgument: {other}"),
        }
    }

    fn refused(
        prefixes: &[&str],
        rules: RouteRules,
        others: &[HeldPrefix<'_>],
    ) -> (String, String) {
        let v: Vec<String> = prefixes.iter().map(|s| (*s).to_owned()).collect();
        field_and_reason(advertised("advertisedRoutes.prefixes", &v, rules, others).unwrap_err())
    }

    #[test]
    fn accepts_pod_cidrs_and_subnets_sorted() {
        let v = vec![
            "10.244.3.0/24".to_owned(),
            "192.168.10.0/24".to_owned(),
            "10.244.2.7/32".to_owned(),
        ];
        let got = advertised("f", &v, RULES, &[]).unwrap();
        assert_eq!(
            got,
            vec![p("10.244.2.7/32"), p("10.244.3.0/24"), p("192.168.10.0/24")]
        );
        assert!(advertised("f", &[], RULES, &[]).unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_entry() {
        let (f, r) = refused(&["10.244.3.0/24", "nonsense"], RULES, &[]);
        assert_eq!(f, "advertisedRoutes.prefixes[1]");
        assert!(r.contains("not an IPv4 prefix"), "{r}");
        let (f, r) = refused(&["10.244.3.1/24"], RULES, &[]);
        assert_eq!(f, "advertisedRoutes.prefixes[0]");
        assert!(r.contains("did you mean 10.244.3.0/24"), "{r}");
        assert!(
            refused(&["fd00::/64"], RULES, &[])
                .1
                .contains("not an IPv4 prefix")
        );
    }

    #[test]
    fn the_network_address_space_is_refused() {
        for s in ["10.77.3.0/24", "10.0.0.0/8", "10.77.0.0/16", "10.77.0.5/32"] {
            let (_, r) = refused(&[s], RULES, &[]);
            assert!(
                r.contains("network's address space 10.77.0.0/16"),
                "{s}: {r}"
            );
        }
        advertised("f", &["10.78.0.0/16".to_owned()], RULES, &[]).unwrap();
    }

    #[test]
    fn the_default_route_needs_the_exit_node_setting() {
        let (f, r) = refused(&["0.0.0.0/0"], RULES, &[]);
        assert_eq!(f, "advertisedRoutes.prefixes[0]");
        assert!(
            r.contains("exit node") && r.contains("--exit-nodes allow"),
            "{r}"
        );
        let allow = RouteRules {
            exit_nodes: ExitNodes::Allow,
            ..RULES
        };
        // An exit node may also advertise subnets: the default route overlaps nothing but
        // another default route (longest prefix match picks the subnets first).
        let got = advertised(
            "f",
            &["0.0.0.0/0".to_owned(), "192.168.10.0/24".to_owned()],
            allow,
            &[HeldPrefix {
                node: "b",
                prefix: p("172.16.0.0/12"),
            }],
        )
        .unwrap();
        assert_eq!(got, vec![DEFAULT_ROUTE, p("192.168.10.0/24")]);
        let (_, r) = refused(
            &["0.0.0.0/0"],
            allow,
            &[HeldPrefix {
                node: "exit-1",
                prefix: DEFAULT_ROUTE,
            }],
        );
        assert!(r.contains("peer \"exit-1\""), "{r}");
    }

    #[test]
    fn sizes_and_special_blocks_are_bounded() {
        let (_, r) = refused(&["10.0.0.0/7"], RULES, &[]);
        assert!(r.contains("too large"), "{r}");
        let (_, r) = refused(&["0.0.0.0/1"], RULES, &[]);
        assert!(r.contains("too large"), "{r}");
        for (s, what) in [
            ("127.0.0.0/8", "loopback"),
            ("169.254.1.0/24", "link-local"),
            ("224.0.0.0/8", "multicast"),
            ("255.255.255.255/32", "multicast and reserved"),
            ("0.0.0.0/8", "this network"),
        ] {
            let (_, r) = refused(&[s], RULES, &[]);
            assert!(r.contains(what), "{s}: {r}");
        }
        let many: Vec<String> = (0..=MAX_ROUTES_PER_PEER)
            .map(|i| format!("10.{}.0.0/16", 100 + i))
            .collect();
        let (f, r) = field_and_reason(
            advertised("advertisedRoutes.prefixes", &many, RULES, &[]).unwrap_err(),
        );
        assert_eq!(f, "advertisedRoutes.prefixes");
        assert!(r.contains(&format!("at most {MAX_ROUTES_PER_PEER}")), "{r}");
    }

    #[test]
    fn overlaps_within_the_set_and_with_other_peers_are_refused() {
        let (f, r) = refused(&["10.244.0.0/16", "10.244.3.0/24"], RULES, &[]);
        assert_eq!(f, "advertisedRoutes.prefixes[1]");
        assert!(
            r.contains("overlaps advertisedRoutes.prefixes[0] (10.244.0.0/16)"),
            "{r}"
        );
        let (_, r) = refused(&["10.244.3.0/24", "10.244.3.0/24"], RULES, &[]);
        assert!(r.contains("overlaps"), "{r}");
        let held = [HeldPrefix {
            node: "node-b",
            prefix: p("10.244.0.0/16"),
        }];
        let (f, r) = refused(&["192.168.0.0/24", "10.244.3.0/24"], RULES, &held);
        assert_eq!(f, "advertisedRoutes.prefixes[1]");
        assert!(
            r.contains("10.244.3.0/24 overlaps 10.244.0.0/16 advertised by peer \"node-b\""),
            "{r}"
        );
        // A larger prefix covering another peer's is refused too.
        let held = [HeldPrefix {
            node: "node-b",
            prefix: p("10.244.3.0/24"),
        }];
        assert!(
            refused(&["10.244.0.0/16"], RULES, &held)
                .1
                .contains("node-b")
        );
        advertised("f", &["10.244.4.0/24".to_owned()], RULES, &held).unwrap();
    }

    #[test]
    fn merge_keeps_decisions_adds_by_policy_and_drops_withdrawn() {
        let old = vec![
            RouteRecord {
                prefix: p("10.1.0.0/24"),
                state: RouteState::Rejected,
                advertised_at: 5,
                decided_at: 6,
            },
            RouteRecord {
                prefix: p("10.2.0.0/24"),
                state: RouteState::Approved,
                advertised_at: 5,
                decided_at: 5,
            },
        ];
        let new = merge(
            &old,
            &[p("10.1.0.0/24"), p("10.3.0.0/24")],
            RouteApproval::Manual,
            9,
        );
        assert_eq!(new.len(), 2);
        assert_eq!(
            new[0], old[0],
            "a rejection stands while the prefix is advertised"
        );
        assert_eq!(
            new[1],
            RouteRecord {
                prefix: p("10.3.0.0/24"),
                state: RouteState::Pending,
                advertised_at: 9,
                decided_at: 0
            }
        );
        let auto = merge(&[], &[p("10.3.0.0/24")], RouteApproval::Auto, 9);
        assert_eq!(auto[0].state, RouteState::Approved);
        assert_eq!(auto[0].decided_at, 9);
        assert!(
            merge(&old, &[], RouteApproval::Auto, 9).is_empty(),
            "withdrawal"
        );
    }

    #[test]
    fn enums_parse_their_api_names() {
        assert_eq!(
            "manual".parse::<RouteApproval>().unwrap(),
            RouteApproval::Manual
        );
        assert_eq!("allow".parse::<ExitNodes>().unwrap(), ExitNodes::Allow);
        let e = "sometimes".parse::<RouteApproval>().unwrap_err();
        assert_eq!(e.allowed.trim_end(), "auto manual");
        assert!(!RouteState::Rejected.reserves());
        assert!(RouteState::Pending.reserves() && RouteState::Approved.reserves());
    }
}
