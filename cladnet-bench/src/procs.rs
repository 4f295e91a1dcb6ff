//! Child processes of a benchmark — the controller and etcd — behind guards that kill them
//! when dropped (also when a run fails half way), plus readings of `/proc/<pid>`.
//!
//! Children write stdout and stderr to a log file in the run's temporary directory; when a child
//! dies or never becomes ready, the error carries the end of its log.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cladnet_proto::v1::{HealthRequest, network_service_client::NetworkServiceClient};
use serde::Serialize;
use tonic::transport::Endpoint;

use crate::error::{BenchError, Result};

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat` (`USER_HZ`, 100 on every
/// Linux architecture this project targets).
const USER_HZ: u64 = 100;

/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Memory and CPU use of a process, from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcStats {
    /// Peak resident set size (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Current resident set size (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// User plus system CPU time of all threads, milliseconds.
    pub cpu_ms: u64,
}

impl ProcStats {
    /// Reads the stats of process `pid` (`"self"` for this process).
    pub fn read(pid: &str) -> std::io::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Ok(Self {
            peak_rss_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
            rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
            cpu_ms: stat_cpu_ticks(&stat).unwrap_or(0) * 1000 / USER_HZ,
        })
    }
}

/// The value in KiB of a `Name:   1234 kB` line of `/proc/<pid>/status`.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `utime + stime` (fields 14 and 15) of `/proc/<pid>/stat`, in clock ticks. The command
/// name (field 2) may contain spaces, so fields are counted after its closing parenthesis.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A free TCP port on 127.0.0.1 (bound, then released: another process could take it in
/// between, which is unlikely on a benchmark machine).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| BenchError::io("finding a free loopback port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| BenchError::io("finding a free loopback port", e))?
        .port();
    Ok(port)
}

/// A running child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ChildGuard {
    /// Starts `cmd` with stdout and stderr appended to `log`, stdin closed.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = File::create(&log)
            .map_err(|e| BenchError::io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| BenchError::io(format!("opening {}", log.display()), e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {name} ({:?})", cmd.get_program()), e))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        let exited = match self.child.as_mut().map(Child::try_wait) {
            None => Some("was stopped".to_owned()),
            Some(Ok(None)) => None,
            Some(Ok(Some(status))) => Some(format!("exited ({status})")),
            Some(Err(e)) => Some(format!("cannot be waited for: {e}")),
        };
        match exited {
            Some(reason) => Err(self.failure(reason)),
            None => Ok(()),
        }
    }

    /// Memory and CPU use of the process now.
    pub fn stats(&self) -> Result<ProcStats> {
        ProcStats::read(&self.pid().to_string())
            .map_err(|e| BenchError::io(format!("reading /proc of {}", self.name), e))
    }

    /// An error about this child, with the end of its log.
    pub fn failure(&self, reason: impl Into<String>) -> BenchError {
        BenchError::Child {
            name: self.name.clone(),
            reason: reason.into(),
            log: self.log.display().to_string(),
            tail: log_tail(&self.log, 20),
        }
    }

    /// Kills the process and waits for it. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file (empty if it cannot be read).
fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_err()
    {
        return String::new();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A single-member etcd on free loopback ports with its data in a directory of the run.
#[derive(Debug)]
pub struct Etcd {
    guard: ChildGuard,
    client_port: u16,
}

impl Etcd {
    /// Starts `bin` with its data under `dir` (which must exist) and waits until its
    /// `/health` endpoint reports healthy.
    pub async fn start(bin: &Path, dir: &Path, timeout: Duration) -> Result<Self> {
        let mut members = Self::start_cluster(bin, dir, 1, timeout).await?;
        Ok(members.remove(0))
    }

    /// Starts a cluster of `members` members (data, logs `etcd-<name>.log` under `dir`) and
    /// waits until every member reports healthy. One member is named `bench`, as before.
    pub async fn start_cluster(
        bin: &Path,
        dir: &Path,
        members: usize,
        timeout: Duration,
    ) -> Result<Vec<Self>> {
        let mut ports: Vec<u16> = Vec::with_capacity(2 * members);
        while ports.len() < 2 * members {
            let p = free_port()?;
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let name = |m: usize| {
            if members == 1 {
                "bench".to_owned()
            } else {
                format!("m{m}")
            }
        };
        let cluster: Vec<String> = (0..members)
            .map(|m| format!("{}=http://127.0.0.1:{}", name(m), ports[2 * m + 1]))
            .collect();
        let mut started = Vec::with_capacity(members);
        for m in 0..members {
            let (log, data) = if members == 1 {
                ("etcd.log".to_owned(), "etcd-data".to_owned())
            } else {
                (
                    format!("etcd-{}.log", name(m)),
                    format!("etcd-data-{}", name(m)),
                )
            };
            let guard = Self::spawn_member(
                bin,
                &name(m),
                &dir.join(data),
                dir.join(log),
                (ports[2 * m], ports[2 * m + 1]),
                &cluster.join(","),
            )?;
            started.push(Self {
                guard,
                client_port: ports[2 * m],
            });
        }
        let deadline = Instant::now() + timeout;
        for member in &mut started {
            loop {
                member.guard.ensure_running()?;
                let port = member.client_port;
                let healthy = tokio::task::spawn_blocking(move || etcd_healthy(port))
                    .await
                    .unwrap_or(false);
                if healthy {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(member
                        .guard
                        .failure(format!("not healthy after {timeout:?}")));
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        }
        Ok(started)
    }

    /// Spawns one member serving clients on `ports.0` and peers on `ports.1`.
    fn spawn_member(
        bin: &Path,
        name: &str,
        data: &Path,
        log: PathBuf,
        ports: (u16, u16),
        initial_cluster: &str,
    ) -> Result<ChildGuard> {
        let client = format!("http://127.0.0.1:{}", ports.0);
        let peer = format!("http://127.0.0.1:{}", ports.1);
        let mut cmd = Command::new(bin);
        cmd.arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(data)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            // Per-method handling-time histograms (`grpc_server_handling_seconds`).
            .arg("--metrics")
            .arg("extensive");
        ChildGuard::spawn("etcd", cmd, log)
    }

    /// The client endpoint `127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The controller's `--store` argument for this etcd.
    pub fn store_url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// The process guard.
    pub fn guard(&self) -> &ChildGuard {
        &self.guard
    }

    /// Reads etcd's metrics now.
    pub async fn counters(&self) -> Result<EtcdCounters> {
        let port = self.client_port;
        let metrics = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
            .await
            .ok()
            .flatten()
            .ok_or_else(|| self.guard.failure("GET /metrics failed"))?;
        Ok(EtcdCounters::parse(&metrics))
    }

    /// Kills etcd now.
    pub fn stop(&mut self) {
        self.guard.stop();
    }
}

/// Whether etcd's `GET /health` on `port` answers `"health":"true"`.
fn etcd_healthy(port: u16) -> bool {
    http_get(port, "/health").is_some_and(|body| body.contains("\"health\":\"true\""))
}

/// The body of a plain HTTP/1.0 `GET path` on loopback `port`; `None` on any failure or a
/// status other than 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    status.contains(" 200 ").then(|| body.to_owned())
}

/// Counters of etcd's Prometheus metrics that say what the controller asked of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EtcdCounters {
    /// Events etcd sent to watchers (`etcd_debugging_mvcc_events_total`).
    pub watch_events_sent: f64,
    /// Open watch streams (`etcd_debugging_mvcc_watch_stream_total`).
    pub watch_streams: f64,
    /// Range calls served (`grpc_server_handled_total{grpc_method="Range"}`).
    pub range_calls: f64,
    /// Txn calls served (`grpc_server_handled_total{grpc_method="Txn"}`).
    pub txn_calls: f64,
    /// Bytes sent to gRPC clients (`etcd_network_client_grpc_sent_bytes_total`), MiB.
    pub client_sent_mib: f64,
    /// Mean time etcd took to handle a Range call (from `grpc_server_handling_seconds`, which
    /// `--metrics extensive` turns on), milliseconds.
    pub range_mean_ms: f64,
    /// Mean time etcd took to handle a Txn call, milliseconds.
    pub txn_mean_ms: f64,
    /// WAL fsyncs (`etcd_disk_wal_fsync_duration_seconds_count`).
    pub wal_fsyncs: f64,
    /// Mean WAL fsync duration, milliseconds.
    pub wal_fsync_mean_ms: f64,
}

impl EtcdCounters {
    /// Extracts the counters from Prometheus text (series summed over their labels unless a
    /// label is asked for).
    pub fn parse(metrics: &str) -> Self {
        let sum = |name: &str, label: Option<&str>| -> f64 {
            metrics
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    let (metric, labels) = match series.split_once('{') {
                        Some((m, rest)) => (m, rest),
                        None => (series, ""),
                    };
                    (metric == name && label.is_none_or(|want| labels.contains(want)))
                        .then(|| value.parse::<f64>().ok())?
                })
                .sum()
        };
        let mean_ms = |total: f64, count: f64| {
            if count > 0.0 {
                total / count * 1e3
            } else {
                0.0
            }
        };
        let handling = |method: &str| {
            let label = format!("grpc_method=\"{method}\"");
            mean_ms(
                sum("grpc_server_handling_seconds_sum", Some(&label)),
                sum("grpc_server_handling_seconds_count", Some(&label)),
            )
        };
        let fsyncs = sum("etcd_disk_wal_fsync_duration_seconds_count", None);
        let fsync_secs = sum("etcd_disk_wal_fsync_duration_seconds_sum", None);
        Self {
            watch_events_sent: sum("etcd_debugging_mvcc_events_total", None),
            watch_streams: sum("etcd_debugging_mvcc_watch_stream_total", None),
            range_calls: sum("grpc_server_handled_total", Some("grpc_method=\"Range\"")),
            txn_calls: sum("grpc_server_handled_total", Some("grpc_method=\"Txn\"")),
            client_sent_mib: sum("etcd_network_client_grpc_sent_bytes_total", None)
                / (1024.0 * 1024.0),
            range_mean_ms: handling("Range"),
            txn_mean_ms: handling("Txn"),
            wal_fsyncs: fsyncs,
            wal_fsync_mean_ms: mean_ms(fsync_secs, fsyncs),
        }
    }
}

/// A `cladnet-controller` process serving on a free loopback port.
#[derive(Debug)]
pub struct ControllerProc {
    guard: ChildGuard,
    addr: SocketAddr,
}

impl ControllerProc {
    /// Starts `bin` on `--store store_url` with `admin_token` (in `CLADNET_ADMIN_TOKEN`),
    /// logging to `dir/controller.log` at `info`, and waits until its Health call reports a
    /// healthy store.
    pub async fn start(
        bin: &Path,
        store_url: &str,
        admin_token: &str,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        Self::start_named(bin, store_url, admin_token, dir, "controller", timeout).await
    }

    /// [`ControllerProc::start`] logging to `dir/<name>.log`, for several controllers in one
    /// directory.
    pub async fn start_named(
        bin: &Path,
        store_url: &str,
        admin_token: &str,
        dir: &Path,
        name: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--store")
            .arg(store_url)
            // Not read while CLADNET_ADMIN_TOKEN is set; keeps the default path untouched.
            .arg("--admin-token-file")
            .arg(dir.join("admin.token"))
            // Several controllers share the loopback interface here.
            .args(["--metrics-listen", "off"])
            .env("CLADNET_ADMIN_TOKEN", admin_token)
            .env("RUST_LOG", "info");
        for var in [
            "CLADNET_LISTEN",
            "CLADNET_STORE",
            "CLADNET_TLS_CERT",
            "CLADNET_TLS_KEY",
        ] {
            cmd.env_remove(var);
        }
        let mut guard =
            ChildGuard::spawn("cladnet-controller", cmd, dir.join(format!("{name}.log")))?;
        let deadline = Instant::now() + timeout;
        let url = format!("http://{addr}");
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| BenchError::Connect {
                addr: url.clone(),
                source: e,
            })?
            .connect_timeout(Duration::from_secs(1));
        loop {
            guard.ensure_running()?;
            let last = match endpoint.connect().await {
                Ok(channel) => {
                    match NetworkServiceClient::new(channel)
                        .health(HealthRequest {})
                        .await
                    {
                        Ok(h) if h.get_ref().status == "healthy" => {
                            return Ok(Self { guard, addr });
                        }
                        Ok(h) => format!("health: {:?}", h.into_inner()),
                        Err(status) => format!("health call: {status}"),
                    }
                }
                Err(e) => format!("connecting: {e}"),
            };
            if Instant::now() > deadline {
                return Err(guard.failure(format!("not ready after {timeout:?} ({last})")));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Where it serves gRPC.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process guard.
    pub fn guard(&mut self) -> &mut ChildGuard {
        &mut self.guard
    }

    /// Kills the controller now.
    pub fn stop(&mut self) {
        self.guard.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::{EtcdCounters, ProcStats, stat_cpu_ticks, status_kib};

    #[test]
    fn parses_etcd_metrics() {
        let text = "# HELP x\n\
            etcd_debugging_mvcc_events_total 4000\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 10\n\
            grpc_server_handled_total{grpc_code=\"NotFound\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 5\n\
            etcd_network_client_grpc_sent_bytes_total 2.097152e+06\n\
            etcd_disk_wal_fsync_duration_seconds_sum 0.5\n\
            etcd_disk_wal_fsync_duration_seconds_count 100\n\
            grpc_server_handling_seconds_sum{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 0.02\n\
            grpc_server_handling_seconds_count{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 10\n";
        let c = EtcdCounters::parse(text);
        assert_eq!(c.watch_events_sent, 4000.0);
        assert_eq!(c.range_calls, 12.0);
        assert_eq!(c.txn_calls, 5.0);
        assert_eq!(c.client_sent_mib, 2.0);
        assert_eq!(c.wal_fsyncs, 100.0);
        assert!((c.wal_fsync_mean_ms - 5.0).abs() < 1e-9);
        assert!((c.range_mean_ms - 2.0).abs() < 1e-9);
        assert_eq!(c.txn_mean_ms, 0.0);
    }

    #[test]
    fn parses_status_lines() {
        let status = "Name:\tcladnet-controller\nVmPeak:\t  200000 kB\nVmHWM:\t   81234 kB\nVmRSS:\t   80000 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(81234));
        assert_eq!(status_kib(status, "VmRSS:"), Some(80000));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn parses_stat_cpu_with_spaces_in_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        let stat = "42 (tokio runtime) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(stat_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn reads_own_stats() {
        let s = ProcStats::read("self").unwrap();
        assert!(s.peak_rss_kib >= s.rss_kib);
        assert!(s.rss_kib > 0);
    }
}
