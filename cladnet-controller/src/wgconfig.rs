//! wg-quick configuration text for an external WireGuard peer: its overlay address and one
//! `[Peer]` per CLADNet agent it can reach. Pure; the service picks the agents.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use cladnet_core::policy::PERSISTENT_KEEPALIVE;
use ipnet::Ipv4Net;

/// What goes into the `[Interface]` comment line in place of the private key.
pub const PRIVATE_KEY_HINT: &str =
    "# PrivateKey = <the private key of this client; it never leaves the client>";

/// One agent, rendered as a `[Peer]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPeer {
    /// Host id, shown in a comment.
    pub host_id: String,
    /// WireGuard public key, base64.
    pub public_key: String,
    /// Public underlay endpoint (the agent's tunnel UDP port).
    pub endpoint: SocketAddrV4,
    /// Overlay address; the section routes this address to the agent.
    pub overlay_ip: Ipv4Addr,
    /// The agent's approved prefixes (pod networks, subnets behind it), routed to it too.
    pub routes: Vec<Ipv4Net>,
}

/// The configuration of one external peer.
#[derive(Clone, Debug)]
pub struct ExternalPeerConfig {
    /// Network id, shown in the header comment.
    pub network: String,
    /// The external peer's host id, shown in the header comment.
    pub host_id: String,
    /// The external peer's overlay address with the network's prefix length.
    pub address: Ipv4Net,
    /// The agents to list, in any order.
    pub agents: Vec<AgentPeer>,
}

impl ExternalPeerConfig {
    /// The wg-quick INI text. Agents are listed by overlay address, so the text depends only on
    /// the set of agents (a client can diff two versions).
    pub fn render(&self) -> String {
        let mut agents: Vec<&AgentPeer> = self.agents.iter().collect();
        agents.sort_by_key(|a| a.overlay_ip);
        let mut out = format!(
            "# CLADNet network {}, external peer {}\n[Interface]\n{PRIVATE_KEY_HINT}\nAddress = {}\n",
            self.network, self.host_id, self.address
        );
        for a in agents {
            let mut allowed = format!("{}/32", a.overlay_ip);
            for r in &a.routes {
                let _ = write!(allowed, ", {r}");
            }
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "\n# {}\n[Peer]\nPublicKey = {}\nEndpoint = {}\nAllowedIPs = {allowed}\nPersistentKeepalive = {}\n",
                a.host_id,
                a.public_key,
                a.endpoint,
                PERSISTENT_KEEPALIVE.as_secs()
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, ip: &str, endpoint: &str) -> AgentPeer {
        AgentPeer {
            host_id: id.into(),
            public_key: format!("{id}-key="),
            endpoint: endpoint.parse().unwrap(),
            overlay_ip: ip.parse().unwrap(),
            routes: vec![],
        }
    }

    #[test]
    fn renders_interface_and_agents_by_overlay_address() {
        let config = ExternalPeerConfig {
            network: "prod".into(),
            host_id: "ext-laptop".into(),
            address: "10.77.0.9/24".parse().unwrap(),
            agents: vec![
                agent("vm-b", "10.77.0.10", "198.51.100.7:8055"),
                agent("vm-a", "10.77.0.2", "203.0.113.5:8055"),
            ],
        };
        assert_eq!(
            config.render(),
            "\
# CLADNet network prod, external peer ext-laptop
[Interface]
# PrivateKey = <the private key of this client; it never leaves the client>
Address = 10.77.0.9/24

# vm-a
[Peer]
PublicKey = vm-a-key=
Endpoint = 203.0.113.5:8055
AllowedIPs = 10.77.0.2/32
PersistentKeepalive = 25

# vm-b
[Peer]
PublicKey = vm-b-key=
Endpoint = 198.51.100.7:8055
AllowedIPs = 10.77.0.10/32
PersistentKeepalive = 25
"
        );
    }

    #[test]
    fn approved_prefixes_join_the_agents_allowed_ips() {
        let mut a = agent("node-a", "10.77.0.2", "203.0.113.5:8055");
        a.routes = vec![
            "10.244.1.0/24".parse().unwrap(),
            "192.168.50.0/24".parse().unwrap(),
        ];
        let config = ExternalPeerConfig {
            network: "k8s".into(),
            host_id: "ext-laptop".into(),
            address: "10.77.0.9/24".parse().unwrap(),
            agents: vec![a],
        };
        let text = config.render();
        assert!(
            text.contains("\nAllowedIPs = 10.77.0.2/32, 10.244.1.0/24, 192.168.50.0/24\n"),
            "{text}"
        );
    }

    #[test]
    fn order_of_the_input_does_not_matter() {
        let a = agent("a", "10.0.0.3", "192.0.2.1:8055");
        let b = agent("b", "10.0.0.2", "192.0.2.2:8055");
        let config = |agents| ExternalPeerConfig {
            network: "n".into(),
            host_id: "ext-x".into(),
            address: "10.0.0.4/24".parse().unwrap(),
            agents,
        };
        assert_eq!(
            config(vec![a.clone(), b.clone()]).render(),
            config(vec![b, a]).render()
        );
    }

    #[test]
    fn no_agents_is_just_the_interface() {
        let config = ExternalPeerConfig {
            network: "n".into(),
            host_id: "ext-x".into(),
            address: "10.0.0.4/24".parse().unwrap(),
            agents: vec![],
        };
        let text = config.render();
        assert!(text.ends_with("Address = 10.0.0.4/24\n"), "{text}");
        assert!(!text.contains("[Peer]"));
    }
}
