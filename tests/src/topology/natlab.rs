//! Probing the NAT types of a [`Topology`] with real datagrams (natlab's mapping tests), and
//! the firewall of a blocked-UDP cloud.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    process::Stdio,
};

use ipnet::Ipv4Net;

use super::{Nat, Topology};
use crate::netns::{Netns, Process};

impl Topology {
    /// Changes the NAT of `cloud`'s gateway to `nat`, as when a VM behind a cloud NAT gateway
    /// gets an elastic IP (to [`Nat::OneToOne`]) or loses it. Every translation the old NAT
    /// made by masquerading ends at once (the gateway's address is re-added); hosts' public
    /// addresses follow the new NAT. Not for clouds changed by [`Topology::readdress_gateway`]
    /// or [`Topology::move_public_ip`]. Returns the cloud's hosts' new public addresses.
    pub fn set_nat(&mut self, cloud: &str, nat: Nat) -> Result<Vec<Ipv4Addr>, String> {
        let index = self
            .gateways
            .iter()
            .position(|(c, _)| c == cloud)
            .ok_or_else(|| format!("no cloud {cloud:?}"))?;
        let transit =
            |host: u8| Ipv4Addr::new(198, 18, u8::try_from(index + 1).expect("≤ 250"), host);
        let hosts: Vec<usize> = (0..self.hosts.len())
            .filter(|i| self.hosts[*i].cloud == cloud)
            .collect();
        let first = hosts
            .first()
            .map(|i| &self.hosts[*i])
            .ok_or("a cloud without hosts")?;
        let cidr = Ipv4Net::new(first.private_ip, first.prefix_len)
            .map_err(|e| e.to_string())?
            .trunc();
        let public: Vec<Ipv4Addr> = (0..hosts.len())
            .map(|k| match nat {
                Nat::OneToOne => transit(10 + u8::try_from(k).expect("≤ 240 hosts")),
                _ => transit(2),
            })
            .collect();
        let one_to_one: Vec<(Ipv4Addr, Ipv4Addr)> = match nat {
            Nat::OneToOne => hosts
                .iter()
                .zip(&public)
                .map(|(i, p)| (*p, self.hosts[*i].private_ip))
                .collect(),
            _ => vec![],
        };
        let mut rules = String::from(
            "table ip nat {}\ndelete table ip nat\ntable ip block_udp {}\ndelete table ip block_udp\n",
        );
        rules += &nat_rules(cidr, nat, &one_to_one);
        if nat == Nat::UdpBlocked {
            rules += &block_udp_rules(&self.udp_allowed);
        }
        let gw = &self.gateways[index].1;
        gw.load_nft(&rules)?;
        // Removing the address that masquerading used ends its translations (the kernel drops
        // those connection-tracking entries), as a replaced NAT would.
        gw.exec(["ip", "addr", "flush", "dev", "wan"])?;
        gw.exec([
            "ip",
            "addr",
            "add",
            &format!("{}/24", transit(2)),
            "dev",
            "wan",
        ])?;
        for (p, _) in &one_to_one {
            gw.exec(["ip", "addr", "add", &format!("{p}/32"), "dev", "wan"])?;
        }
        gw.exec([
            "ip",
            "route",
            "replace",
            "default",
            "via",
            &transit(1).to_string(),
        ])?;
        for (i, p) in hosts.iter().zip(&public) {
            self.hosts[*i].public_ip = *p;
        }
        Ok(public)
    }

    /// The internet router's address on each cloud's transit subnet (`198.18.<i>.1`), in
    /// declaration order: destinations a mapping probe can tell apart by address.
    pub fn router_ips(&self) -> Vec<Ipv4Addr> {
        (1..=self.gateways.len())
            .map(|i| Ipv4Addr::new(198, 18, u8::try_from(i).expect("at most 250 clouds"), 1))
            .collect()
    }

    /// Sends one UDP datagram from port `local_port` of `from` to each of `dests` (one socket
    /// for all of them, as an agent's tunnel socket) and returns, per destination, the source
    /// address it arrived from as `observer` (the namespace holding the destination addresses)
    /// saw it, or `None` if it did not arrive within half a second of the sender finishing:
    /// the NAT mapping per destination, measured.
    pub fn udp_mappings(
        &self,
        from: &Netns,
        local_port: u16,
        observer: &Netns,
        dests: &[SocketAddrV4],
    ) -> Result<Vec<Option<SocketAddrV4>>, String> {
        let script = crate::test_script("udp_mapping.py");
        let mut ports: Vec<String> = dests.iter().map(|d| d.port().to_string()).collect();
        ports.sort();
        ports.dedup();
        let mut cmd = observer.command("python3");
        cmd.arg(&script)
            .args(["observe", "30", &dests.len().to_string()])
            .args(&ports)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut obs = Process::spawn(&mut cmd)?;
        let mut out = BufReader::new(obs.0.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        out.read_line(&mut line)
            .map_err(|e| format!("mapping observer: {e}"))?;
        if line.trim() != "ready" {
            return Err(format!("mapping observer did not start: {line:?}"));
        }
        let sent = self.udp_send(from, local_port, dests);
        // Tell the observer the sender is done (whatever happened), so it stops waiting.
        observer.exec([
            "python3",
            script.to_str().ok_or("script path is not UTF-8")?,
            "done",
            &ports[0],
        ])?;
        sent?;
        let mut seen = std::collections::HashMap::new();
        for line in out.lines() {
            let line = line.map_err(|e| format!("mapping observer: {e}"))?;
            if let Some((dst, src)) = line.split_once(' ') {
                let parse = |a: &str| a.parse::<SocketAddrV4>().map_err(|e| format!("{a:?}: {e}"));
                seen.insert(parse(dst)?, parse(src)?);
            }
        }
        Ok(dests.iter().map(|d| seen.get(d).copied()).collect())
    }

    /// Sends one UDP datagram from port `local_port` of `from` to each of `dests`.
    pub fn udp_send(
        &self,
        from: &Netns,
        local_port: u16,
        dests: &[SocketAddrV4],
    ) -> Result<(), String> {
        let script = crate::test_script("udp_mapping.py");
        let mut argv = vec![
            "python3".to_owned(),
            script.to_string_lossy().into_owned(),
            "send".to_owned(),
            local_port.to_string(),
        ];
        argv.extend(dests.iter().map(ToString::to_string));
        from.exec(argv).map(drop)
    }
}

/// The firewall of a [`Nat::UdpBlocked`] gateway: UDP is forwarded only to and from `allowed`.
pub(super) fn block_udp_rules(allowed: &[Ipv4Addr]) -> String {
    let (out, inbound) = if allowed.is_empty() {
        (String::new(), String::new())
    } else {
        let set = allowed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        (
            format!(" ip daddr != {{ {set} }}"),
            format!(" ip saddr != {{ {set} }}"),
        )
    };
    format!(
        "table ip block_udp {{\n chain udp_out {{ type filter hook forward priority filter;\n  \
         iifname \"br0\" meta l4proto udp{out} drop\n  \
         iifname \"wan\" meta l4proto udp{inbound} drop\n }}\n}}\n"
    )
}

/// The `nat` table of a cloud's gateway: 1:1 translations for `one_to_one` (public, private)
/// pairs, or masquerading of `cidr` the way `nat` does it.
pub(super) fn nat_rules(cidr: Ipv4Net, nat: Nat, one_to_one: &[(Ipv4Addr, Ipv4Addr)]) -> String {
    let mut pre = String::new();
    let mut post = String::new();
    for (public, private) in one_to_one {
        pre += &format!("  iifname \"wan\" ip daddr {public} dnat to {private}\n");
        post += &format!("  oifname \"wan\" ip saddr {private} snat to {public}\n");
    }
    if nat.shares_gateway_address() {
        let flags = if nat == Nat::Hard {
            " fully-random"
        } else {
            ""
        };
        post += &format!("  oifname \"wan\" ip saddr {cidr} masquerade{flags}\n");
    }
    let mut rules = format!(
        "table ip nat {{\n chain pre {{ type nat hook prerouting priority dstnat;\n{pre} }}\n \
         chain post {{ type nat hook postrouting priority srcnat;\n{post} }}\n"
    );
    if matches!(nat, Nat::Easy | Nat::Hard | Nat::UdpBlocked) {
        // Dropped after connection tracking saw it but before its entry is confirmed, an
        // unsolicited datagram leaves nothing behind that could take a port (what separates
        // these NATs from plain `Nat::Masquerade`).
        rules += " chain unsolicited { type filter hook prerouting priority filter;\n  \
                  iifname \"wan\" ct state new drop\n }\n";
    }
    rules + "}\n"
}
