//! The prefixes this agent advertises (routed through this host: a Kubernetes node's podCIDR,
//! a subnet behind it), from three sources: the configuration (`advertise_routes`, the
//! `--advertise-routes` flag), a file followed while the agent runs (`--advertise-routes-file`,
//! e.g. the podCIDR a script reads from the Kubernetes API), and the `advertise-routes` remote
//! command, whose list stands in for the configured one until the agent restarts.
//!
//! The daemon reports the set to the controller through its session, in a Report of its own
//! (`advertisedRoutes`), after every join and whenever it changes; the controller validates
//! it, applies the network's approval policy and distributes the approved prefixes in the
//! Watch stream. The Node turns every peer's approved prefixes into commands;
//! [`kernel_routes`] is their kernel routing part.

use std::{path::PathBuf, time::Duration};

use cladnet_core::node::Command;
use cladnet_proto::v1 as pb;
use ipnet::Ipv4Net;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::{
    daemon::config::{AgentConfig, ConfigError},
    netconf,
};

/// How often the routes file is checked for changes.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// Parses configured prefixes (`field` names the setting in errors): IPv4, no host bits.
pub fn parse_list(field: &'static str, items: &[String]) -> Result<Vec<Ipv4Net>, ConfigError> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            parse_one(s).map_err(|reason| ConfigError {
                field,
                reason: format!("entry {}: {reason}", i + 1),
            })
        })
        .collect()
}

/// The prefixes of a routes file: separated by whitespace or commas, `#` starts a comment.
/// Errors name the line.
pub fn parse_file(text: &str) -> Result<Vec<Ipv4Net>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        for item in line.split([',', ' ', '\t']).filter(|s| !s.is_empty()) {
            out.push(parse_one(item).map_err(|e| format!("line {}: {e}", n + 1))?);
        }
    }
    Ok(out)
}

fn parse_one(s: &str) -> Result<Ipv4Net, String> {
    let p: Ipv4Net = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 prefix like 10.244.3.0/24"))?;
    if p.trunc() != p {
        return Err(format!(
            "{p} has host bits set; did you mean {}?",
            p.trunc()
        ));
    }
    Ok(p)
}

/// Where the advertised set comes from.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct Sources {
    /// The configuration's list.
    pub configured: Vec<Ipv4Net>,
    /// The routes file's list (empty while the file is missing).
    pub file: Vec<Ipv4Net>,
    /// An `advertise-routes` command's list, in place of `configured`.
    pub commanded: Option<Vec<Ipv4Net>>,
}

impl Sources {
    /// The advertised set: the configured (or commanded) list and the file's, sorted, without
    /// repeats.
    pub fn effective(&self) -> Vec<Ipv4Net> {
        let mut all: Vec<Ipv4Net> = self
            .commanded
            .as_ref()
            .unwrap_or(&self.configured)
            .iter()
            .chain(&self.file)
            .copied()
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// The advertised set, shared by its sources and the daemon, which reports it.
#[derive(Clone, Debug)]
pub struct Advertiser {
    sources: watch::Sender<Sources>,
}

impl Advertiser {
    /// An advertiser starting with the configured prefixes.
    pub fn new(configured: Vec<Ipv4Net>) -> Self {
        Self {
            sources: watch::channel(Sources {
                configured,
                ..Sources::default()
            })
            .0,
        }
    }

    /// What is advertised now.
    pub fn current(&self) -> Vec<Ipv4Net> {
        self.sources.borrow().effective()
    }

    /// Replaces the file's list.
    pub fn set_file(&self, file: Vec<Ipv4Net>) {
        self.sources.send_if_modified(|s| {
            let changed = s.file != file;
            s.file = file;
            changed
        });
    }

    /// Applies a remote command if it is `advertise-routes`: its list replaces the configured
    /// one (until the agent restarts). Returns whether the command was one; a prefix that is
    /// not one is an error (the controller checked the list, so this means a bug or an older
    /// controller) and changes nothing.
    pub fn apply_command(&self, c: &pb::Command) -> Result<bool, String> {
        if c.command_type != "advertise-routes" {
            return Ok(false);
        }
        let list = c
            .routes
            .iter()
            .map(|r| parse_one(r))
            .collect::<Result<Vec<_>, _>>()?;
        info!(routes = ?list, "advertise-routes command: replacing the configured prefixes");
        self.sources.send_if_modified(|s| {
            let changed = s.commanded.as_ref() != Some(&list);
            s.commanded = Some(list);
            changed
        });
        Ok(true)
    }

    /// Changes of the set (and of its sources).
    pub fn subscribe(&self) -> watch::Receiver<Sources> {
        self.sources.subscribe()
    }
}

/// The kernel routes a Node command asks for: a peer's approved prefixes go to the overlay
/// device (the engines then find the peer by longest prefix), withdrawn ones are deleted.
/// Installed after the engines have the peer, deleted after they dropped it. This node's own
/// prefixes get none (they are behind the host: a bridge, a VPC subnet). `route_mtu` is the
/// peer's route MTU from path MTU discovery, if its search has reported one: the prefixes
/// carry it like the peer's own /32, so pod traffic fits the path too. A failure is logged:
/// the peer's other routes and the engines are unaffected, and the next upsert retries.
pub async fn kernel_routes(iface: &str, cmd: &Command, route_mtu: Option<u32>) {
    match cmd {
        Command::UpsertPeer(p) => prefix_routes(iface, &p.node_id, &p.prefixes, route_mtu).await,
        Command::RemovePrefixes {
            local: false,
            prefixes,
            node_index,
        } => {
            for n in prefixes.iter().filter(|n| n.prefix_len() > 0) {
                match netconf::delete_route(*n, iface).await {
                    Ok(()) => debug!(node_index, prefix = %n, "prefix withdrawn"),
                    Err(error) => {
                        warn!(node_index, prefix = %n, %error, "cannot delete the prefix route")
                    }
                }
            }
        }
        _ => {}
    }
}

/// Routes peer `node_id`'s `prefixes` to the overlay device with `mtu` (none: the device's).
/// Called on every upsert of the peer and when its route MTU changes.
pub async fn prefix_routes(iface: &str, node_id: &str, prefixes: &[Ipv4Net], mtu: Option<u32>) {
    for n in prefixes {
        if n.prefix_len() == 0 {
            // An exit node: the default route would swallow the underlay too.
            warn!(node_id, prefix = %n, "a default route through a peer needs policy routing; not installed");
            continue;
        }
        match netconf::replace_route(*n, iface, mtu).await {
            Ok(()) => debug!(node_id, prefix = %n, ?mtu, "prefix routed"),
            Err(error) => warn!(node_id, prefix = %n, %error, "cannot route the prefix"),
        }
    }
}

/// The advertiser of the configured prefixes, following the routes file (if any) on the
/// current Tokio runtime.
pub fn start(cfg: &AgentConfig) -> Advertiser {
    let advertiser = Advertiser::new(cfg.advertise_routes.clone());
    if let Some(path) = &cfg.advertise_routes_file {
        tokio::spawn(follow_file(path.clone(), advertiser.clone()));
    }
    advertiser
}

/// Re-reads `path` every [`FILE_POLL`] and updates the file's list when its content changed.
/// A missing file advertises nothing from it (the podCIDR may not be known yet); a file that
/// does not parse keeps the last good list, with an error in the log.
async fn follow_file(path: PathBuf, advertiser: Advertiser) {
    let mut last: Option<Option<String>> = None;
    let mut tick = tokio::time::interval(FILE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A few bytes from a local file: reading it inline costs less than a thread hop.
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot read the routes file");
                continue;
            }
        };
        if last.as_ref() == Some(&text) {
            continue;
        }
        match text.as_deref().map(parse_file).unwrap_or(Ok(Vec::new())) {
            Ok(list) => {
                info!(path = %path.display(), routes = ?list, "routes file read");
                advertiser.set_file(list);
            }
            Err(reason) => {
                error!(path = %path.display(), %reason, "routes file unusable; keeping the last good list");
            }
        }
        last = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn files_and_lists_parse_with_errors_naming_the_place() {
        let text =
            "# podCIDR of node-1\n10.244.3.0/24\n192.168.50.0/24, 192.168.51.0/24 # subnets\n\n";
        assert_eq!(
            parse_file(text).unwrap(),
            vec![
                p("10.244.3.0/24"),
                p("192.168.50.0/24"),
                p("192.168.51.0/24")
            ]
        );
        // `kubectl get node -o jsonpath='{.spec.podCIDR}'` writes no newline.
        assert_eq!(
            parse_file("10.244.3.0/24").unwrap(),
            vec![p("10.244.3.0/24")]
        );
        assert!(parse_file("").unwrap().is_empty());
        let e = parse_file("10.244.3.0/24\n10.244.4.1/24\n").unwrap_err();
        assert!(
            e.starts_with("line 2: ") && e.contains("did you mean 10.244.4.0/24"),
            "{e}"
        );
        assert!(
            parse_file("fd00::/64")
                .unwrap_err()
                .contains("not an IPv4 prefix")
        );
        let e = parse_list("advertise_routes", &["10.1.0.0/16".into(), "x".into()]).unwrap_err();
        assert_eq!(e.field, "advertise_routes");
        assert!(e.reason.starts_with("entry 2: "), "{}", e.reason);
    }

    #[test]
    fn the_set_is_config_or_command_plus_file() {
        let a = Advertiser::new(vec![p("192.168.50.0/24")]);
        a.set_file(vec![p("10.244.3.0/24"), p("192.168.50.0/24")]);
        assert_eq!(
            a.current(),
            vec![p("10.244.3.0/24"), p("192.168.50.0/24")],
            "no repeats"
        );
        a.set_file(vec![p("10.244.3.0/24")]);
        let cmd = |routes: &[&str]| pb::Command {
            command_type: "advertise-routes".into(),
            command_id: "c1".into(),
            routes: routes.iter().map(|r| (*r).to_owned()).collect(),
        };
        assert_eq!(a.apply_command(&cmd(&["172.20.0.0/16"])), Ok(true));
        assert_eq!(a.current(), vec![p("10.244.3.0/24"), p("172.20.0.0/16")]);
        assert_eq!(a.apply_command(&cmd(&[])), Ok(true));
        assert_eq!(
            a.current(),
            vec![p("10.244.3.0/24")],
            "the command withdrew the configured prefix"
        );
        assert!(a.apply_command(&cmd(&["10.9.9.9/8"])).is_err());
        assert_eq!(
            a.current(),
            vec![p("10.244.3.0/24")],
            "a bad command changes nothing"
        );
        let up = pb::Command {
            command_type: "up".into(),
            ..cmd(&[])
        };
        assert_eq!(a.apply_command(&up), Ok(false));
        a.set_file(Vec::new());
        assert!(a.current().is_empty());
    }

    #[tokio::test]
    async fn the_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podcidr");
        let a = Advertiser::new(Vec::new());
        let mut changes = a.subscribe();
        tokio::spawn(follow_file(path.clone(), a.clone()));
        std::fs::write(&path, "10.244.3.0/24").unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.current(), vec![p("10.244.3.0/24")]);
        // A broken rewrite keeps the last good list; the next good one replaces it.
        std::fs::write(&path, "10.244.3.0/33").unwrap();
        tokio::time::sleep(FILE_POLL * 2).await;
        assert_eq!(a.current(), vec![p("10.244.3.0/24")]);
        std::fs::write(&path, "10.244.7.0/24\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.current(), vec![p("10.244.7.0/24")]);
        std::fs::remove_file(&path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(a.current().is_empty(), "a removed file advertises nothing");
    }
}
