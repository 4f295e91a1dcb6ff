//! The measurements, each from host A to host B's overlay address: ping RTT, single-stream TCP
//! throughput with the machine's CPU use over it, and the small-packet (64-byte UDP) rate.

use std::{net::Ipv4Addr, path::Path, thread, time::Duration};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::{
    drops::{DropCounters, LossSites},
    testbed::Testbed,
};
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

/// Busy, softirq and total CPU time of the whole machine (the `cpu` line of `/proc/stat`), in
/// ticks, and the number of CPUs (the `cpuN` lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    busy: u64,
    softirq: u64,
    total: u64,
    cpus: u64,
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
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        Some(Self {
            busy,
            softirq,
            total: busy + idle + iowait,
            cpus: u64::try_from(cpus).unwrap_or(1).max(1),
        })
    }

    /// `ticks` of CPU time between `self` and `later` as a share of one core, percent (100 =
    /// one core busy the whole time): the ticks one core had in that span are the total of all
    /// CPUs over their number, so no clock-tick rate is assumed.
    fn one_core_percent(self, later: Self, ticks: u64) -> f64 {
        let per_core = later.total.saturating_sub(self.total) as f64 / self.cpus as f64;
        if per_core <= 0.0 {
            return 0.0;
        }
        ticks as f64 * 100.0 / per_core
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

/// TCP from A to B (one stream or several in parallel).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tcp {
    /// Throughput the receiver saw (all streams), Gbit/s.
    pub gbps: f64,
    /// TCP retransmissions at the sender.
    pub retransmits: u64,
    /// Busy CPU of the whole machine during the test, percent of all cores.
    pub cpu_percent: f64,
    /// CPU time of the tunnel's processes (both agents or both WireGuard daemons, every
    /// thread, user + system) during the test, percent of one core; 0 for raw and VXLAN.
    pub tunnel_process_cpu_percent: f64,
    /// Softirq time of the whole machine during the test, percent of one core: where the
    /// kernel does its share of any tunnel (VXLAN, veth, the TCP receive path, the UDP
    /// sockets); not the tunnel's alone, but the machine's other load does little network.
    pub softirq_cpu_percent: f64,
}

/// The processes that carry a tunnel, whose CPU time a TCP test counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Carriers<'a>(pub(crate) &'a [u32]);

impl Carriers<'_> {
    /// User + system ticks of every process (all their threads: `/proc/PID/stat` fields 14
    /// and 15); a process that is gone counts 0, so the test still reports.
    fn ticks(self) -> u64 {
        self.0
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter_map(|stat| process_ticks(&stat))
            .sum()
    }
}

/// `utime + stime` of a `/proc/PID/stat` line (the fields after the parenthesised name, which
/// may itself hold spaces and parentheses).
fn process_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `iperf3 -c dst -t secs -P streams -J` from A against a one-shot server on B, with the
/// machine's busy CPU from `/proc/stat` and the `carriers`' CPU time over the client's run.
pub(crate) fn tcp(
    tb: &Testbed,
    dst: Ipv4Addr,
    secs: u32,
    streams: u32,
    carriers: Carriers<'_>,
    dir: &Path,
) -> anyhow::Result<Tcp> {
    let streams = streams.to_string();
    let (json, cpu) = iperf(tb, dst, secs, &["-P", &streams], carriers, dir)?;
    let sent = &json["end"]["sum_sent"];
    let received = &json["end"]["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's JSON")?;
    Ok(Tcp {
        gbps: bps / 1e9,
        retransmits: sent["retransmits"].as_u64().unwrap_or(0),
        cpu_percent: cpu.machine_percent,
        tunnel_process_cpu_percent: cpu.process_percent,
        softirq_cpu_percent: cpu.softirq_percent,
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
    /// Where they were dropped, when the kernel's counters could be read.
    pub drops: Option<LossSites>,
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
    let udp = ["-u", "-l", SMALL_PACKET, "-b", "0"];
    let counters = || {
        DropCounters::read(tb, dst)
            .inspect_err(|e| eprintln!("  could not read the drop counters: {e:#}"))
            .ok()
    };
    let before = counters();
    let (json, _) = iperf(tb, dst, secs, &udp, Carriers(&[]), dir)?;
    let after = counters();
    Ok(SmallPackets {
        drops: before.zip(after).map(|(b, a)| b.until(a)),
        ..parse_udp(&json)?
    })
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
        drops: None,
    })
}

/// CPU use over one iperf3 run.
#[derive(Debug, Clone, Copy)]
struct IperfCpu {
    /// The whole machine, percent of all cores.
    machine_percent: f64,
    /// The carriers, percent of one core.
    process_percent: f64,
    /// The machine's softirq, percent of one core.
    softirq_percent: f64,
}

/// Runs one iperf3 test from A to a one-shot server on B: the client's JSON and the CPU use
/// over the client's run.
fn iperf(
    tb: &Testbed,
    dst: Ipv4Addr,
    secs: u32,
    extra: &[&str],
    carriers: Carriers<'_>,
    dir: &Path,
) -> anyhow::Result<(serde_json::Value, IperfCpu)> {
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
    let (before, ticks_before) = (CpuTimes::now()?, carriers.ticks());
    let result =
        tb.a.run_for(&argv, Duration::from_secs(u64::from(secs) + 30));
    let (after, ticks_after) = (CpuTimes::now()?, carriers.ticks());
    let cpu = IperfCpu {
        machine_percent: before.busy_percent_until(after),
        process_percent: before.one_core_percent(after, ticks_after.saturating_sub(ticks_before)),
        softirq_percent: before
            .one_core_percent(after, after.softirq.saturating_sub(before.softirq)),
    };
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
    use super::{CpuTimes, parse_ping, parse_udp, process_ticks};

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
    fn one_core_share_and_process_ticks() {
        let stat = |idle: u64, softirq: u64| {
            format!("cpu  100 0 0 {idle} 0 0 {softirq} 0 0 0\ncpu0 1\ncpu1 1\nintr 5\n")
        };
        let a = CpuTimes::parse(&stat(100, 0)).unwrap();
        // 2 CPUs, 200 ticks in all: 100 per core; 50 softirq ticks = half a core.
        let b = CpuTimes::parse(&stat(250, 50)).unwrap();
        assert_eq!(a.cpus, 2);
        assert!((a.one_core_percent(b, b.softirq - a.softirq) - 50.0).abs() < 1e-9);
        assert!((a.one_core_percent(b, 150) - 150.0).abs() < 1e-9);
        let line = "4242 (cladnet (a) x) S 1 2 3 4 5 6 7 8 9 10 700 42 0 0 20 0 9";
        assert_eq!(process_ticks(line), Some(742));
        assert_eq!(process_ticks("4242 (x) S 1"), None);
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
