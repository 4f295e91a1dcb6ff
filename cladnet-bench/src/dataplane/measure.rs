//! The measurements, each from host A to host B's overlay address: ping RTT, single-stream TCP
//! throughput with the machine's CPU use over it, and the small-packet (64-byte UDP) rate.

use std::{net::Ipv4Addr, path::Path, thread, time::Duration};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::testbed::Testbed;
use crate::{procs::ChildGuard, stats::median};

/// The iperf3 server's port.
const IPERF_PORT: u16 = 5201;
/// Payload of the small-packet test, bytes.
const SMALL_PACKET: &str = "64";
/// How long one sample of the machine's background load lasts.
const LOAD_SAMPLE: Duration = Duration::from_secs(1);

/// Ping round-trip times.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rtt {
    /// Median of the replies, milliseconds.
    pub median_ms: f64,
    /// Mean of the replies, milliseconds.
    pub avg_ms: f64,
    /// Replies received.
    pub replies: u32,
    /// Echo requests sent.
    pub sent: u32,
}

/// Pings `dst` from host A: `count` echo requests `interval` apart.
pub(crate) fn ping(
    tb: &Testbed,
    dst: Ipv4Addr,
    count: u32,
    interval: Duration,
) -> anyhow::Result<Rtt> {
    let out = tb.a.run_for(
        &[
            "ping",
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            &format!("{:.3}", interval.as_secs_f64()),
            "-W",
            "1",
            &dst.to_string(),
        ],
        interval * count + Duration::from_secs(10),
    )?;
    parse_ping(&out, count).with_context(|| format!("ping {dst}: {out}"))
}

/// The RTTs of `ping`'s reply lines (`... time=0.123 ms`).
fn parse_ping(out: &str, sent: u32) -> anyhow::Result<Rtt> {
    let times: Vec<f64> = out
        .lines()
        .filter_map(|l| {
            l.split_once("time=")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let Some(median_ms) = median(&times) else {
        bail!("no replies");
    };
    Ok(Rtt {
        median_ms,
        avg_ms: times.iter().sum::<f64>() / times.len() as f64,
        replies: u32::try_from(times.len()).unwrap_or(u32::MAX),
        sent,
    })
}

/// Busy and total CPU time of the whole machine (the `cpu` line of `/proc/stat`), in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    /// Reads `/proc/stat` now.
    pub(crate) fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Self::parse(&stat).context("no `cpu` line in /proc/stat")
    }

    /// `user nice system idle iowait irq softirq steal` of the `cpu` line (guest time is
    /// already part of user time): busy is everything but idle and iowait.
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
            return None;
        };
        let busy = user + nice + system + irq + softirq + steal;
        Some(Self {
            busy,
            total: busy + idle + iowait,
        })
    }

    /// Busy share of all CPUs between `self` and `later`, percent (100 = every core busy).
    pub(crate) fn busy_percent_until(self, later: Self) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        later.busy.saturating_sub(self.busy) as f64 * 100.0 / total as f64
    }
}

/// Single-stream TCP from A to B.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tcp {
    /// Throughput the receiver saw, Gbit/s.
    pub gbps: f64,
    /// TCP retransmissions at the sender.
    pub retransmits: u64,
    /// Busy CPU of the whole machine during the test, percent of all cores.
    pub cpu_percent: f64,
}

/// `iperf3 -c dst -t secs -J` from A against a one-shot server on B, with the machine's busy
/// CPU from `/proc/stat` over the client's run.
pub(crate) fn tcp(tb: &Testbed, dst: Ipv4Addr, secs: u32, dir: &Path) -> anyhow::Result<Tcp> {
    let (json, cpu_percent) = iperf(tb, dst, secs, &[], dir)?;
    let sent = &json["end"]["sum_sent"];
    let received = &json["end"]["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's JSON")?;
    Ok(Tcp {
        gbps: bps / 1e9,
        retransmits: sent["retransmits"].as_u64().unwrap_or(0),
        cpu_percent,
    })
}

/// The machine's load before a measurement (nothing of the benchmark runs then).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Background {
    /// Busy CPU of the whole machine over the last one-second sample, percent of all cores.
    pub cpu_percent: f64,
    /// Seconds spent waiting for it to drop to the limit.
    pub waited_secs: f64,
}

/// Samples the machine's busy CPU one second at a time until it is at most `max_percent`
/// (other builds and tests share the machine), for at most `patience`; then returns the last
/// sample either way.
pub(crate) fn wait_for_quiet(max_percent: f64, patience: Duration) -> anyhow::Result<Background> {
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        // Time spent before this sample: zero when the first one is quiet enough.
        let waited = start.elapsed();
        let before = CpuTimes::now()?;
        thread::sleep(LOAD_SAMPLE);
        let cpu_percent = before.busy_percent_until(CpuTimes::now()?);
        if cpu_percent <= max_percent || start.elapsed() >= patience {
            if cpu_percent > max_percent {
                eprintln!("  still {cpu_percent:.0} % busy after {waited:.0?}; measuring anyway");
            }
            return Ok(Background {
                cpu_percent,
                waited_secs: waited.as_secs_f64(),
            });
        }
        if !said {
            eprintln!(
                "  waiting for the machine to quiet down ({cpu_percent:.0} % busy, limit \
                 {max_percent:.0} %, at most {patience:?})"
            );
            said = true;
        }
    }
}

/// 64-byte UDP datagrams from A to B as fast as the client can send them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SmallPackets {
    /// Datagrams the server received per second.
    pub received_pps: f64,
    /// Datagrams the client sent per second.
    pub sent_pps: f64,
    /// Share of the sent datagrams that never arrived, percent.
    pub loss_percent: f64,
}

/// `iperf3 -u -l 64 -b 0 -t secs -J` from A against a one-shot server on B; the rate is
/// what the server received (its report, carried in the client's JSON as
/// `end.sum_received`).
pub(crate) fn small_packets(
    tb: &Testbed,
    dst: Ipv4Addr,
    secs: u32,
    dir: &Path,
) -> anyhow::Result<SmallPackets> {
    let (json, _) = iperf(tb, dst, secs, &["-u", "-l", SMALL_PACKET, "-b", "0"], dir)?;
    parse_udp(&json)
}

fn parse_udp(json: &serde_json::Value) -> anyhow::Result<SmallPackets> {
    let field = |sum: &str, name: &str| {
        json["end"][sum][name]
            .as_f64()
            .with_context(|| format!("no end.{sum}.{name} in iperf3's JSON"))
    };
    let sent = field("sum_sent", "packets")?;
    let expected = field("sum_received", "packets")?;
    let lost = field("sum_received", "lost_packets")?;
    let secs = field("sum_received", "seconds")?;
    if secs <= 0.0 {
        bail!("iperf3 reported a test of {secs} s");
    }
    Ok(SmallPackets {
        received_pps: (expected - lost).max(0.0) / secs,
        sent_pps: sent / field("sum_sent", "seconds")?.max(f64::MIN_POSITIVE),
        loss_percent: field("sum_received", "lost_percent")?,
    })
}

/// Runs one iperf3 test from A to a one-shot server on B: the client's JSON and the machine's
/// busy CPU (percent of all cores) over the client's run.
fn iperf(
    tb: &Testbed,
    dst: Ipv4Addr,
    secs: u32,
    extra: &[&str],
    dir: &Path,
) -> anyhow::Result<(serde_json::Value, f64)> {
    let port = IPERF_PORT.to_string();
    let mut server_cmd = tb.b.command("iperf3");
    server_cmd.args(["-s", "-1", "-p", &port]);
    let mut server = ChildGuard::spawn("iperf3 server", server_cmd, dir.join("iperf3-server.log"))?;
    tb.wait_for(
        "the iperf3 server to listen",
        Duration::from_secs(10),
        || tb.b.listens(IPERF_PORT),
    )
    .map_err(|e| server.failure(e.to_string()))?;
    let secs_arg = secs.to_string();
    let dst_arg = dst.to_string();
    let mut argv = vec!["iperf3", "-c", &dst_arg, "-p", &port, "-t", &secs_arg, "-J"];
    argv.extend_from_slice(extra);
    let before = CpuTimes::now()?;
    let result =
        tb.a.run_for(&argv, Duration::from_secs(u64::from(secs) + 30));
    let cpu = before.busy_percent_until(CpuTimes::now()?);
    server.stop();
    // iperf3 -J reports its errors inside the JSON (on stdout), which `run` includes.
    let out = result?;
    let json: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("parsing the JSON of `{}`: {out}", argv.join(" ")))?;
    if let Some(e) = json["error"].as_str() {
        bail!("`{}`: {e}", argv.join(" "));
    }
    Ok((json, cpu))
}

#[cfg(test)]
mod tests {
    use super::{CpuTimes, parse_ping, parse_udp};

    #[test]
    fn ping_lines() {
        let out = "PING 10.201.0.2 (10.201.0.2) 56(84) bytes of data.\n\
            64 bytes from 10.201.0.2: icmp_seq=1 ttl=64 time=0.412 ms\n\
            64 bytes from 10.201.0.2: icmp_seq=2 ttl=64 time=0.100 ms\n\
            64 bytes from 10.201.0.2: icmp_seq=3 ttl=64 time=0.200 ms\n\
            \n--- 10.201.0.2 ping statistics ---\n\
            3 packets transmitted, 3 received, 0% packet loss, time 40ms\n\
            rtt min/avg/max/mdev = 0.100/0.237/0.412/0.130 ms\n";
        let r = parse_ping(out, 3).unwrap();
        assert_eq!(r.median_ms, 0.2);
        assert!((r.avg_ms - 0.237_333).abs() < 1e-5);
        assert_eq!((r.replies, r.sent), (3, 3));
        assert!(parse_ping("3 packets transmitted, 0 received", 3).is_err());
    }

    #[test]
    fn cpu_share_from_proc_stat() {
        let a = CpuTimes::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        let b = CpuTimes::parse("cpu  200 0 100 850 50 0 50 0 0 0\n").unwrap();
        // busy +200 (user 100, system 50, softirq 50), idle +50: 200 / 250.
        assert!((a.busy_percent_until(b) - 80.0).abs() < 1e-9);
        assert_eq!(a.busy_percent_until(a), 0.0);
        assert!(CpuTimes::parse("intr 1 2 3").is_none());
    }

    #[test]
    fn udp_rate_is_what_the_server_received() {
        let json = serde_json::json!({"end": {
            "sum_sent": {"seconds": 2.0, "packets": 300000, "lost_packets": 0, "lost_percent": 0.0},
            "sum_received": {"seconds": 2.0, "packets": 300000, "lost_packets": 100000,
                             "lost_percent": 33.3}
        }});
        let u = parse_udp(&json).unwrap();
        assert_eq!(u.received_pps, 100_000.0);
        assert_eq!(u.sent_pps, 150_000.0);
        assert_eq!(u.loss_percent, 33.3);
        assert!(parse_udp(&serde_json::json!({"end": {}})).is_err());
    }
}
