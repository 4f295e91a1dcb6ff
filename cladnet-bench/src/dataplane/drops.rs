//! Where the 64-byte flood's lost datagrams were dropped: at the sender's device (host A's
//! route to B: a tunnel's TUN or WireGuard device, whose queue overflows while the tunnel
//! reads slower than iperf3 sends), at the tunnel's own sockets on host B (a tunnel that
//! cannot keep up with what arrives), or at the receiving iperf3's socket (the application
//! on B, starved of CPU). Read from the kernel's counters before and after the test: the
//! device's `tx dropped` (`ip -s -j link`), B's `Udp: RcvbufErrors` (`/proc/net/snmp`, all of
//! B's sockets) and the drop counter of every socket on B that is not iperf3's (`ss -uam`).

use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::testbed::Testbed;

/// Datagrams dropped during one test, by where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LossSites {
    /// The device host A routes B through (`tx dropped`).
    pub sender_device: u64,
    /// The tunnel's sockets on host B (every UDP socket there but iperf3's).
    pub tunnel_sockets: u64,
    /// The receiving iperf3's socket (B's receive-buffer errors less the tunnel's).
    pub receiver_app: u64,
}

/// The counters [`LossSites`] is the difference of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DropCounters {
    device: u64,
    rcvbuf_errors: u64,
    tunnel_sockets: u64,
}

impl DropCounters {
    /// Reads them on `tb` for traffic from A to `dst`.
    pub(crate) fn read(tb: &Testbed, dst: Ipv4Addr) -> anyhow::Result<Self> {
        let route = tb.a.run(&["ip", "-j", "route", "get", &dst.to_string()])?;
        let dev = route_device(&route).with_context(|| format!("ip route get {dst}: {route}"))?;
        let link = tb.a.run(&["ip", "-s", "-j", "link", "show", "dev", &dev])?;
        let snmp = tb.b.run(&["cat", "/proc/net/snmp"])?;
        let sockets = tb.b.run(&["ss", "-H", "-uanmp"])?;
        Ok(Self {
            device: tx_dropped(&link).with_context(|| format!("ip -s link {dev}: {link}"))?,
            rcvbuf_errors: rcvbuf_errors(&snmp).context("Udp RcvbufErrors in /proc/net/snmp")?,
            tunnel_sockets: socket_drops_except(&sockets, "iperf3")?,
        })
    }

    /// What was dropped where between `self` and `after`.
    pub(crate) fn until(self, after: Self) -> LossSites {
        let tunnel_sockets = after.tunnel_sockets.saturating_sub(self.tunnel_sockets);
        LossSites {
            sender_device: after.device.saturating_sub(self.device),
            tunnel_sockets,
            receiver_app: after
                .rcvbuf_errors
                .saturating_sub(self.rcvbuf_errors)
                .saturating_sub(tunnel_sockets),
        }
    }
}

/// The `dev` of `ip -j route get`'s answer.
fn route_device(json: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    v[0]["dev"]
        .as_str()
        .map(str::to_owned)
        .context("no dev in the route")
}

/// `stats64.tx.dropped` of `ip -s -j link show`'s answer.
fn tx_dropped(json: &str) -> anyhow::Result<u64> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    v[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .context("no stats64.tx.dropped")
}

/// `RcvbufErrors` of the `Udp:` lines (a header line, then the values) of `/proc/net/snmp`.
fn rcvbuf_errors(snmp: &str) -> anyhow::Result<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines");
    };
    let at = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .context("no RcvbufErrors column")?;
    let value = values
        .split_whitespace()
        .nth(at)
        .context("short Udp line")?;
    value
        .parse()
        .with_context(|| format!("RcvbufErrors {value:?}"))
}

/// The sum of the drop counters (`d` in `skmem:(...)`) of `ss -H -uanmp`'s sockets whose
/// owner is not `except` (a socket's `skmem` is on the line after it).
fn socket_drops_except(ss: &str, except: &str) -> anyhow::Result<u64> {
    let owner = format!("((\"{except}\",");
    let mut total = 0u64;
    let mut skip = false;
    for line in ss.lines() {
        if !line.starts_with(char::is_whitespace) {
            skip = line.contains(&owner);
        }
        let Some(mem) = line.split("skmem:(").nth(1) else {
            continue;
        };
        if skip {
            continue;
        }
        // `ss` pads its columns: the counters end at the first `)`.
        let d = mem
            .split(')')
            .next()
            .unwrap_or_default()
            .split(',')
            .find_map(|f| f.strip_prefix('d'))
            .with_context(|| format!("no drop counter in {line:?}"))?;
        total += d
            .parse::<u64>()
            .with_context(|| format!("drop counter {d:?}"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_names_its_device() {
        let json = r#"[{"dst":"10.201.0.2","dev":"cladnet0","prefsrc":"10.201.0.1","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(route_device(json).unwrap(), "cladnet0");
        assert!(route_device("[]").is_err());
    }

    #[test]
    fn tx_dropped_is_read_from_stats64() {
        let json = r#"[{"ifname":"cladnet0","stats64":{"rx":{"dropped":5},"tx":{"packets":9,"dropped":170575}}}]"#;
        assert_eq!(tx_dropped(json).unwrap(), 170_575);
        assert!(tx_dropped(r#"[{"ifname":"x"}]"#).is_err());
    }

    #[test]
    fn rcvbuf_errors_are_found_by_column_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
            Udp: 448566 0 217496 12 217495 0\n\
            UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
            UdpLite: 0 0 0 0 0 0\n";
        assert_eq!(rcvbuf_errors(snmp).unwrap(), 217_495);
        assert!(rcvbuf_errors("Ip: Forwarding\nIp: 1\n").is_err());
    }

    #[test]
    fn socket_drops_skip_the_named_owner() {
        let ss = "UNCONN 0 0 0.0.0.0:51820 0.0.0.0:* users:((\"cladnet-agent\",pid=1,fd=9))\n\
            \t skmem:(r0,rb14680064,t0,tb14680064,f0,w0,o0,bl0,d757)\n\
            UNCONN 0 0 0.0.0.0:51820 0.0.0.0:* users:((\"cladnet-agent\",pid=1,fd=10))\n\
            \t skmem:(r0,rb14680064,t0,tb14680064,f0,w0,o0,bl0,d3)\n\
            UNCONN 0 0 10.201.0.2:5201 0.0.0.0:* users:((\"iperf3\",pid=2,fd=5))\n\
            \t skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d99240)\n\
            UNCONN 0 0 0.0.0.0:4789 0.0.0.0:*\n\
            \t skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d1)    \n";
        assert_eq!(socket_drops_except(ss, "iperf3").unwrap(), 761);
        assert_eq!(socket_drops_except(ss, "cladnet-agent").unwrap(), 99_241);
        assert!(socket_drops_except("X y\n\t skmem:(r0,rb1)\n", "iperf3").is_err());
    }

    #[test]
    fn the_receiver_app_gets_what_the_tunnel_sockets_did_not_drop() {
        let before = DropCounters {
            device: 10,
            rcvbuf_errors: 100,
            tunnel_sockets: 40,
        };
        let after = DropCounters {
            device: 60,
            rcvbuf_errors: 400,
            tunnel_sockets: 90,
        };
        assert_eq!(
            before.until(after),
            LossSites {
                sender_device: 50,
                tunnel_sockets: 50,
                receiver_app: 250,
            }
        );
    }
}
