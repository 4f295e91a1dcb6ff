//! The control-plane scenario: N simulated agents join one network through a real
//! `cladnet-controller` process and each keeps a Watch open.
//!
//! 1. **Setup** (not measured): a temporary directory, etcd if asked for, the controller on a
//!    free loopback port with a random admin token, one HTTP/2 channel per
//!    [`ControlOptions::agents_per_channel`] agents, a network and a join token.
//! 2. **Convergence**: every agent Joins (at most [`ControlOptions::join_concurrency`] Join
//!    calls in flight, as a fleet booting at once), then opens its Watch and keeps a peer table
//!    from the snapshot and the deltas. Measured from just before the first Join until the last
//!    agent holds all N peers.
//! 3. **Fan-out**: K changes, [`ControlOptions::change_interval`] apart, each a Report of a new
//!    `publicEndpoint` by one agent. For every (watcher, change) pair: the time from just
//!    before the Report call to the watcher decoding the `peerUpserted` event.
//! 4. The controller's peak RSS (`VmHWM`) and the CPU time of the controller, etcd and this
//!    process in each phase; then everything is stopped and removed.
//! 5. The table check ([`crate::check`]): with the controller stopped, every agent's final
//!    table is compared with the peers in the store; a difference fails the run and names the
//!    agents and peers (also when the run failed otherwise, e.g. never converged).
//!
//! The agents run in this process on the same machine as the controller (and etcd): their
//! decoding competes for the same cores, so the CPU times are reported next to the latencies.

use std::{
    collections::HashMap,
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use cladnet_proto::v1::{
    CloudInformation, CreateJoinTokenRequest, HostFacts, JoinRequest, Network, NetworkInterface,
    ReportRequest, WatchRequest, agent_service_client::AgentServiceClient,
    network_service_client::NetworkServiceClient, watch_event::Event,
};
use serde::Serialize;
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tonic::{
    Request,
    codegen::Bytes,
    metadata::AsciiMetadataValue,
    transport::{Channel, Endpoint},
};

use crate::{
    check::{self, TableCheck, Tables},
    direct,
    error::{BenchError, Result},
    lightwatch::{self, Item},
    procs::{ControllerProc, Etcd, EtcdCounters, ProcStats},
    stats::Summary,
};

/// The network the agents join.
pub(crate) const NETWORK_ID: &str = "bench";
/// The agents' tunnel port.
const LISTEN_PORT: u32 = 8055;
/// Largest gRPC message an agent accepts (a snapshot of many peers is large).
pub(crate) const MAX_MESSAGE: usize = 256 << 20;
/// Most agents this scenario accepts (their endpoints come from 198.18.0.0/15).
pub const MAX_AGENTS: usize = 100_000;
/// Most concurrent streams per HTTP/2 connection the controller's server allows by default
/// (hyper: 200); each agent holds one Watch and at times one more call.
const MAX_AGENTS_PER_CHANNEL: usize = 90;
/// Time given to the child processes to become ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between convergence and the first change, so that the two phases do not overlap.
const SETTLE: Duration = Duration::from_millis(500);

/// Which store the controller runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// `embedded:<tempdir>/store.redb`.
    Embedded,
    /// A single-member etcd started for the run.
    Etcd,
    /// No controller: the bench writes the joins to etcd itself and every agent keeps its own
    /// etcd watch on the network's peers (the seed's design, the side-by-side anchor).
    EtcdDirect,
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Embedded => "embedded",
            Self::Etcd => "etcd",
            Self::EtcdDirect => "etcd-direct",
        })
    }
}

impl FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "embedded" => Ok(Self::Embedded),
            "etcd" => Ok(Self::Etcd),
            "etcd-direct" => Ok(Self::EtcdDirect),
            other => Err(format!(
                "unknown store {other:?}: use embedded, etcd or etcd-direct"
            )),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Simulated agents (N). Default 1000.
    pub agents: usize,
    /// Changes after convergence (K). Default 50.
    pub changes: usize,
    /// Pause between two changes. Default 100 ms.
    pub change_interval: Duration,
    /// The controller's store.
    pub store: StoreKind,
    /// Agents sharing one HTTP/2 connection. Default 50.
    pub agents_per_channel: usize,
    /// Join calls in flight at once. Default 64.
    pub join_concurrency: usize,
    /// The `cladnet-controller` binary (a release build for meaningful numbers).
    pub controller_bin: PathBuf,
    /// The `etcd` binary (etcd 3.4 or newer).
    pub etcd_bin: PathBuf,
    /// Limit of the convergence phase, and of waiting for the fan-out after the last change.
    pub timeout: Duration,
    /// Keep the temporary directory (store, logs) instead of removing it.
    pub keep_temp: bool,
    /// Diagnostic: agents only Join (no Watch, no changes), to measure the join pipeline
    /// alone. "Converged" then means "every Join returned".
    pub join_only: bool,
    /// Agents keep endpoint hashes, not strings ([`crate::simtable`]): 4 bytes per peer
    /// entry instead of ~100, for fleets whose N² table would not fit in memory.
    pub compact_tables: bool,
    /// Agents do not ask for batched Watch messages (as agents before batching): one change
    /// per message, to measure what batching saves in the same binary.
    pub unbatched: bool,
    /// Agents read each Watch message's bytes in place ([`crate::lightwatch`]: node id,
    /// endpoint and revision; everything else skipped) instead of decoding it with prost into
    /// full messages. The tables and the end-of-run check are the same.
    pub light_decode: bool,
}

impl Default for ControlOptions {
    fn default() -> Self {
        Self {
            agents: 1000,
            changes: 50,
            change_interval: Duration::from_millis(100),
            store: StoreKind::Embedded,
            agents_per_channel: 50,
            join_concurrency: 64,
            controller_bin: PathBuf::from("cladnet-controller"),
            etcd_bin: PathBuf::from("etcd"),
            timeout: Duration::from_secs(300),
            keep_temp: false,
            join_only: false,
            compact_tables: false,
            unbatched: false,
            light_decode: false,
        }
    }
}

impl ControlOptions {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(BenchError::Options(m));
        if self.agents == 0 || self.agents > MAX_AGENTS {
            return bad(format!("agents must be 1..={MAX_AGENTS}"));
        }
        if self.changes > MAX_AGENTS {
            return bad(format!("changes must be at most {MAX_AGENTS}"));
        }
        if self.agents_per_channel == 0 || self.agents_per_channel > MAX_AGENTS_PER_CHANNEL {
            return bad(format!(
                "agents per channel must be 1..={MAX_AGENTS_PER_CHANNEL} (HTTP/2 stream limit)"
            ));
        }
        if self.join_concurrency == 0 {
            return bad("join concurrency must be at least 1".into());
        }
        Ok(())
    }
}

/// CPU and memory of one process over the two measured phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcessUse {
    /// Peak resident set size (`VmHWM`) at the end, MiB.
    pub peak_rss_mib: f64,
    /// Resident set size at the end (after the fan-out), MiB.
    pub end_rss_mib: f64,
    /// CPU time (user + system) during the convergence phase, seconds.
    pub cpu_convergence_s: f64,
    /// CPU time during the fan-out phase, seconds.
    pub cpu_fanout_s: f64,
}

impl ProcessUse {
    fn from_readings(start: ProcStats, converged: ProcStats, end: ProcStats) -> Self {
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e3;
        Self {
            peak_rss_mib: end.peak_rss_kib as f64 / 1024.0,
            end_rss_mib: end.rss_kib as f64 / 1024.0,
            cpu_convergence_s: secs(start.cpu_ms, converged.cpu_ms),
            cpu_fanout_s: secs(converged.cpu_ms, end.cpu_ms),
        }
    }
}

/// What the agents received, summed over all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Snapshots (one per Watch).
    pub snapshots: u64,
    /// Peers in all snapshots.
    pub snapshot_peers: u64,
    /// `peerUpserted` events.
    pub peer_upserted: u64,
    /// Every other event.
    pub other: u64,
    /// Watch messages (a batch of changes is one).
    pub messages: u64,
}

/// The result of one run. Times in milliseconds unless named otherwise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlReport {
    /// The store.
    pub store: StoreKind,
    /// Agents (N).
    pub agents: usize,
    /// Changes made (K).
    pub changes: usize,
    /// From the first Join until every Join returned.
    pub all_joined_ms: f64,
    /// From the first Join until every Watch was open (response headers received).
    pub all_watching_ms: f64,
    /// From the first Join until every agent held all N peers.
    pub convergence_ms: f64,
    /// Latency of the Join calls (including the wait for the controller's allocation lock).
    pub join_latency: Option<Summary>,
    /// Latency of the Report calls that made the changes.
    pub report_latency: Option<Summary>,
    /// Per (watcher, change): from just before the Report to the watcher decoding the event.
    pub fanout: Option<Summary>,
    /// Fan-out events expected (N × K).
    pub fanout_expected: usize,
    /// Fan-out events received before the time limit.
    pub fanout_received: usize,
    /// The controller process.
    pub controller: ProcessUse,
    /// The etcd process, when the store is etcd.
    pub etcd: Option<ProcessUse>,
    /// What etcd served over the whole run, when the store is etcd.
    pub etcd_counters: Option<EtcdCounters>,
    /// This process (the simulated agents).
    pub bench: ProcessUse,
    /// Events the agents received.
    pub events: EventCounts,
    /// Peer messages (snapshot peers and `peerUpserted`) delivered until convergence.
    pub delivered_convergence: u64,
    /// Every agent's final table against the store (passed, or the run would have failed).
    pub table_check: TableCheck,
}

impl ControlReport {
    /// Controller CPU per peer message delivered in the convergence phase, microseconds.
    pub fn controller_us_per_peer(&self) -> f64 {
        per_peer_us(
            self.controller.cpu_convergence_s,
            self.delivered_convergence,
        )
    }

    /// etcd CPU per peer message delivered in the convergence phase, microseconds.
    pub fn etcd_us_per_peer(&self) -> Option<f64> {
        let e = self.etcd.as_ref()?;
        Some(per_peer_us(e.cpu_convergence_s, self.delivered_convergence))
    }
}

/// `cpu_s` seconds spread over `messages`, in microseconds each (0 without messages).
fn per_peer_us(cpu_s: f64, messages: u64) -> f64 {
    if messages == 0 {
        0.0
    } else {
        cpu_s * 1e6 / messages as f64
    }
}

/// Raises this process's soft limit of open files to its hard limit (children inherit it).
/// Returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Open files a run of `agents` agents, `per_channel` to a connection, needs in this process
/// (and in the controller, which inherits the limit): a socket per connection, the etcd
/// clients' as many again (etcd-direct), and a margin for the runtime, logs and the store.
pub fn fds_needed(agents: usize, per_channel: usize) -> u64 {
    let connections = agents.div_ceil(per_channel.max(1)) as u64;
    2 * connections + 256
}

/// Raises the soft limit of open files ([`raise_fd_limit`]) and fails with a clear message if
/// it stays below `needed`.
pub fn ensure_fd_limit(needed: u64) -> Result<u64> {
    let limit = raise_fd_limit().map_err(|e| BenchError::io("raising RLIMIT_NOFILE", e))?;
    if limit < needed {
        return Err(BenchError::Options(format!(
            "this run needs about {needed} open files but only {limit} are allowed (hard limit): \
             raise it with `ulimit -Hn {needed}` as root, or use fewer agents or more agents per channel"
        )));
    }
    Ok(limit)
}

/// Runs the scenario once: starts the processes, measures, stops everything (also on error).
pub async fn run_control_bench(opts: &ControlOptions) -> Result<ControlReport> {
    opts.validate()?;
    let dir = tempfile::Builder::new()
        .prefix("cladnet-bench-")
        .tempdir()
        .map_err(|e| BenchError::io("creating a temporary directory", e))?;
    let result = run_in(opts, dir.path()).await;
    if opts.keep_temp {
        let kept = dir.keep();
        eprintln!("kept {}", kept.display());
    }
    result
}

/// Everything that needs the directory; the process guards drop (kill) before it is removed.
async fn run_in(opts: &ControlOptions, dir: &std::path::Path) -> Result<ControlReport> {
    let mut etcd = match opts.store {
        StoreKind::Etcd | StoreKind::EtcdDirect => {
            Some(Etcd::start(&opts.etcd_bin, dir, STARTUP_TIMEOUT).await?)
        }
        StoreKind::Embedded => None,
    };
    let store_url = match &etcd {
        Some(e) => e.store_url(),
        None => format!("embedded:{}", dir.join("store.redb").display()),
    };
    let admin_token = random_token()?;
    let mut controller = match opts.store {
        StoreKind::EtcdDirect => None,
        StoreKind::Embedded | StoreKind::Etcd => Some(
            ControllerProc::start(
                &opts.controller_bin,
                &store_url,
                &admin_token,
                dir,
                STARTUP_TIMEOUT,
            )
            .await?,
        ),
    };
    let tables = Arc::new(Tables::new(opts.agents, opts.compact_tables));
    let result = Scenario::new(opts, &admin_token)?
        .run(controller.as_mut(), etcd.as_ref(), Arc::clone(&tables))
        .await;
    // Stopped first: the store is then quiescent, and an embedded file free to open.
    if let Some(c) = controller.as_mut() {
        c.stop();
    }
    let result = if opts.join_only {
        result
    } else {
        check_tables(result, &store_url, &tables).await
    };
    if let Some(e) = etcd.as_mut() {
        e.stop();
    }
    result
}

/// Checks every agent's table against the store and folds the outcome into `result`: a
/// difference fails a run that succeeded, and is added to the error of one that failed.
async fn check_tables(
    result: Result<ControlReport>,
    store_url: &str,
    tables: &Tables,
) -> Result<ControlReport> {
    let names: Vec<String> = (0..tables.len()).map(host_id).collect();
    let check = check::read_store(store_url, NETWORK_ID)
        .await
        .map(|store| check::compare(&names, &tables.take(), &store));
    match (result, check) {
        (Ok(mut report), Ok(check)) if check.passed() => {
            report.table_check = check;
            Ok(report)
        }
        (Ok(_), Ok(check)) => Err(BenchError::TablesDiffer(check.describe())),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), check) => Err(BenchError::WithTables {
            source: Box::new(e),
            tables: match check {
                Ok(c) => c.describe(),
                Err(c) => c.to_string(),
            },
        }),
    }
}

/// 32 random alphanumeric characters (hex of 16 random bytes).
pub(crate) fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        BenchError::io(
            "reading the OS random source",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The overlay CIDR for `n` agents: a /20 (4093 addresses) or larger, in 10.64.0.0/10.
fn overlay_cidr(n: usize) -> String {
    // A pool of prefix p has 2^(32-p) - 3 assignable addresses.
    let mut prefix = 20u32;
    while prefix > 10 && (1usize << (32 - prefix)) - 3 < n {
        prefix -= 1;
    }
    format!("10.64.0.0/{prefix}")
}

/// Agent `i`'s node id.
pub(crate) fn host_id(i: usize) -> String {
    format!("bench-{i:05}")
}

/// The agent that makes change `k` of `changes` among `n`: spread over the fleet (and the
/// connections).
pub(crate) fn changer(k: usize, n: usize, changes: usize) -> usize {
    k * n / changes % n
}

/// `base + offset` as an address (offsets stay inside the ranges used).
pub(crate) fn offset(base: Ipv4Addr, offset: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(offset as u32))
}

/// Agent `i`'s public endpoint at join: `198.18.x.y:8055` (benchmarking range).
pub(crate) fn join_endpoint(i: usize) -> String {
    SocketAddrV4::new(offset(Ipv4Addr::new(198, 18, 0, 1), i), 8055).to_string()
}

/// The endpoint change `k` reports: unique per change, never a join endpoint.
pub(crate) fn change_endpoint(k: usize) -> String {
    SocketAddrV4::new(offset(Ipv4Addr::new(100, 64, 0, 1), k), 8056).to_string()
}

/// A `Bearer` credential as gRPC metadata.
pub(crate) fn bearer(token: &str) -> Result<AsciiMetadataValue> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| BenchError::Options("a token is not valid ASCII metadata".into()))
}

/// `msg` with an `authorization` header.
pub(crate) fn authed<T>(msg: T, credential: &AsciiMetadataValue) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", credential.clone());
    req
}

/// What an agent tells the coordinator, time-stamped where it happened.
pub(crate) enum Observation {
    Joined {
        agent: usize,
        at: Instant,
        latency: Duration,
        session: AsciiMetadataValue,
    },
    Watching {
        at: Instant,
    },
    Converged {
        at: Instant,
    },
    Received {
        agent: usize,
        change: usize,
        at: Instant,
    },
    Failed {
        agent: usize,
        message: String,
    },
    /// A Watch re-opened on another controller after its own went away (failover).
    Resumed {
        at: Instant,
    },
}

/// What the convergence phase saw.
pub(crate) struct Convergence {
    /// Each agent's session credential.
    pub(crate) sessions: Vec<Option<AsciiMetadataValue>>,
    join_latency: Vec<Duration>,
    last_join: Instant,
    last_watch: Instant,
    pub(crate) last_converged: Instant,
    /// Fan-out observations that arrived during convergence (none expected).
    pub(crate) early: Vec<Observation>,
}

/// The changes made and when each watcher received each of them.
pub(crate) struct Fanout {
    /// Number of changes (K).
    pub(crate) changes: usize,
    /// Just before the Report of change k.
    pub(crate) sent_at: Vec<Instant>,
    pub(crate) report_latency: Vec<Duration>,
    /// Index `agent * changes + change`.
    pub(crate) received_at: Vec<Option<Instant>>,
    pub(crate) received: usize,
}

impl Fanout {
    /// Takes in an observation of the fan-out phase.
    pub(crate) fn record(&mut self, obs: Observation) -> Result<()> {
        match obs {
            Observation::Received { agent, change, at } => {
                let slot = &mut self.received_at[agent * self.changes + change];
                if slot.is_none() {
                    *slot = Some(at);
                    self.received += 1;
                }
                Ok(())
            }
            Observation::Failed { agent, message } => Err(BenchError::Agent { agent, message }),
            _ => Ok(()),
        }
    }

    /// The latency of every (watcher, change) pair received.
    pub(crate) fn latencies(&self) -> Vec<Duration> {
        self.received_at
            .iter()
            .enumerate()
            .filter_map(|(i, at)| {
                let sent = self.sent_at.get(i % self.changes)?;
                Some(at.as_ref()?.saturating_duration_since(*sent))
            })
            .collect()
    }
}

/// What every agent shares.
pub(crate) struct Shared {
    pub(crate) agents: usize,
    pub(crate) join_only: bool,
    /// The join token (`None` when the agents watch etcd directly).
    pub(crate) join_credential: Option<AsciiMetadataValue>,
    pub(crate) join_gate: Semaphore,
    /// Every agent's peer table, for the check at the end.
    pub(crate) tables: Arc<Tables>,
    /// Endpoint of change k → k.
    pub(crate) changes: HashMap<String, usize>,
    pub(crate) snapshots: AtomicU64,
    pub(crate) snapshot_peers: AtomicU64,
    pub(crate) peer_upserted: AtomicU64,
    pub(crate) other: AtomicU64,
    /// The agents ask for batched Watch messages.
    pub(crate) batches: bool,
    /// The agents read Watch messages in place ([`crate::lightwatch`]).
    pub(crate) light_decode: bool,
    pub(crate) messages: AtomicU64,
}

/// Where the agents learn their peers.
enum Source {
    /// A controller: one HTTP/2 connection per `agents_per_channel` agents.
    Controller(Vec<Channel>),
    /// etcd itself: one client per `agents_per_channel` agents.
    Direct(Vec<Arc<dyn cladnet_store::Store>>),
}

/// One run's state on the coordinator's side.
pub(crate) struct Scenario<'a> {
    opts: &'a ControlOptions,
    admin: AsciiMetadataValue,
}

impl<'a> Scenario<'a> {
    pub(crate) fn new(opts: &'a ControlOptions, admin_token: &str) -> Result<Self> {
        Ok(Self {
            opts,
            admin: bearer(admin_token)?,
        })
    }

    async fn run(
        &self,
        mut controller: Option<&mut ControllerProc>,
        etcd: Option<&Etcd>,
        tables: Arc<Tables>,
    ) -> Result<ControlReport> {
        let opts = self.opts;
        let n = opts.agents;
        let connections = n.div_ceil(opts.agents_per_channel);
        let (source, join_credential) = match (controller.as_deref(), etcd) {
            (Some(c), _) => {
                let channels = connect(c, connections).await?;
                let join_token = self.create_network(channels[0].clone()).await?;
                (Source::Controller(channels), Some(bearer(&join_token)?))
            }
            (None, Some(e)) => (
                Source::Direct(direct::connect(&e.store_url(), connections).await?),
                None,
            ),
            (None, None) => return Err(BenchError::Options("no controller and no etcd".into())),
        };
        let shared = Arc::new(Shared {
            agents: n,
            join_only: opts.join_only,
            join_credential,
            join_gate: Semaphore::new(opts.join_concurrency),
            tables,
            changes: (0..opts.changes).map(|k| (change_endpoint(k), k)).collect(),
            snapshots: AtomicU64::new(0),
            snapshot_peers: AtomicU64::new(0),
            peer_upserted: AtomicU64::new(0),
            other: AtomicU64::new(0),
            batches: !opts.unbatched,
            light_decode: opts.light_decode,
            messages: AtomicU64::new(0),
        });
        // Controller, etcd, this process.
        let read = |c: &mut Option<&mut ControllerProc>| -> Result<[Option<ProcStats>; 3]> {
            let this =
                ProcStats::read("self").map_err(|e| BenchError::io("reading /proc/self", e))?;
            Ok([
                c.as_deref_mut().map(|c| c.guard().stats()).transpose()?,
                etcd.map(|e| e.guard().stats()).transpose()?,
                Some(this),
            ])
        };
        let before = read(&mut controller)?;

        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut agents = JoinSet::new();
        let t0 = Instant::now();
        for i in 0..n {
            let shared = Arc::clone(&shared);
            let conn = i / opts.agents_per_channel;
            match &source {
                Source::Controller(channels) => {
                    agents.spawn(agent(shared, i, channels[conn].clone(), tx.clone()))
                }
                Source::Direct(clients) => agents.spawn(direct::agent(
                    shared,
                    i,
                    Arc::clone(&clients[conn]),
                    tx.clone(),
                )),
            };
        }
        drop(tx);
        let mut conv = self
            .converge(controller.as_deref_mut(), &mut rx, t0)
            .await?;
        let after_convergence = read(&mut controller)?;
        let delivered_convergence = shared.snapshot_peers.load(Ordering::Relaxed)
            + shared.peer_upserted.load(Ordering::Relaxed);

        tokio::time::sleep(SETTLE).await;
        let changes = if opts.join_only { 0 } else { opts.changes };
        let mut fanout = Fanout {
            changes,
            sent_at: Vec::with_capacity(changes),
            report_latency: Vec::with_capacity(changes),
            received_at: vec![None; n * changes],
            received: 0,
        };
        match &source {
            Source::Controller(channels) => {
                self.make_changes(channels, &conv.sessions, &mut fanout)
                    .await?;
            }
            Source::Direct(clients) => {
                direct::make_changes(opts, &clients[0], &mut fanout).await?;
            }
        }
        for obs in std::mem::take(&mut conv.early) {
            fanout.record(obs)?;
        }
        let deadline = tokio::time::Instant::now() + opts.timeout;
        while fanout.received < fanout.received_at.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(obs)) => fanout.record(obs)?,
                Ok(None) | Err(_) => break,
            }
        }
        let end = read(&mut controller)?;
        let etcd_counters = match etcd {
            Some(e) => Some(e.counters().await?),
            None => None,
        };
        agents.abort_all();
        drop(agents);
        drop(source);

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let usage = |i: usize| -> Option<ProcessUse> {
            Some(ProcessUse::from_readings(
                before[i]?,
                after_convergence[i]?,
                end[i]?,
            ))
        };
        let mut latencies = fanout.latencies();
        Ok(ControlReport {
            store: opts.store,
            agents: n,
            changes,
            all_joined_ms: ms(conv.last_join - t0),
            all_watching_ms: ms(conv.last_watch - t0),
            convergence_ms: ms(conv.last_converged - t0),
            join_latency: Summary::of(&mut conv.join_latency),
            report_latency: Summary::of(&mut fanout.report_latency),
            fanout: Summary::of(&mut latencies),
            fanout_expected: fanout.received_at.len(),
            fanout_received: latencies.len(),
            controller: usage(0).unwrap_or_default(),
            etcd: usage(1),
            etcd_counters,
            bench: usage(2).unwrap_or_default(),
            events: EventCounts {
                snapshots: shared.snapshots.load(Ordering::Relaxed),
                snapshot_peers: shared.snapshot_peers.load(Ordering::Relaxed),
                peer_upserted: shared.peer_upserted.load(Ordering::Relaxed),
                other: shared.other.load(Ordering::Relaxed),
                messages: shared.messages.load(Ordering::Relaxed),
            },
            delivered_convergence,
            table_check: TableCheck::default(),
        })
    }

    /// Follows the agents until every one of them holds the full peer table (or, with
    /// `join_only`, has joined).
    pub(crate) async fn converge(
        &self,
        mut controller: Option<&mut ControllerProc>,
        rx: &mut mpsc::UnboundedReceiver<Observation>,
        t0: Instant,
    ) -> Result<Convergence> {
        let n = self.opts.agents;
        let mut c = Convergence {
            sessions: vec![None; n],
            join_latency: Vec::with_capacity(n),
            last_join: t0,
            last_watch: t0,
            last_converged: t0,
            early: Vec::new(),
        };
        let (mut joined, mut watching, mut converged) = (0usize, 0usize, 0usize);
        let deadline = t0 + self.opts.timeout;
        while converged < n {
            let obs = match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(Some(obs)) => obs,
                Ok(None) => return Err(BenchError::AgentsGone),
                Err(_) => {
                    if let Some(c) = controller.as_deref_mut() {
                        c.guard().ensure_running()?;
                    }
                    return Err(BenchError::Timeout {
                        phase: "convergence",
                        timeout: self.opts.timeout,
                        progress: format!(
                            "{joined}/{n} joined, {watching}/{n} watching, {converged}/{n} converged"
                        ),
                    });
                }
            };
            match obs {
                Observation::Joined {
                    agent,
                    at,
                    latency,
                    session,
                } => {
                    joined += 1;
                    c.last_join = c.last_join.max(at);
                    c.join_latency.push(latency);
                    c.sessions[agent] = Some(session);
                }
                Observation::Watching { at } => {
                    watching += 1;
                    c.last_watch = c.last_watch.max(at);
                }
                Observation::Converged { at } => {
                    converged += 1;
                    c.last_converged = c.last_converged.max(at);
                }
                Observation::Failed { agent, message } => {
                    if let Some(c) = controller.as_deref_mut() {
                        c.guard().ensure_running()?;
                    }
                    return Err(BenchError::Agent { agent, message });
                }
                // Cannot happen before a change is made; kept for the fan-out phase anyway.
                received @ Observation::Received { .. } => c.early.push(received),
                Observation::Resumed { .. } => {}
            }
        }
        Ok(c)
    }

    /// Makes `fanout.changes` changes, `change_interval` apart: each a Report of a new public
    /// endpoint by one agent, spread over the fleet (and the connections).
    async fn make_changes(
        &self,
        channels: &[Channel],
        sessions: &[Option<AsciiMetadataValue>],
        fanout: &mut Fanout,
    ) -> Result<()> {
        let n = self.opts.agents;
        let mut ticker = tokio::time::interval(self.opts.change_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for k in 0..fanout.changes {
            ticker.tick().await;
            let who = changer(k, n, fanout.changes);
            let session = sessions[who].as_ref().ok_or(BenchError::AgentsGone)?;
            let mut client =
                AgentServiceClient::new(channels[who / self.opts.agents_per_channel].clone());
            let req = ReportRequest {
                cladnet_id: NETWORK_ID.into(),
                host_id: host_id(who),
                public_endpoint: change_endpoint(k),
                ..Default::default()
            };
            let start = Instant::now();
            fanout.sent_at.push(start);
            client
                .report(authed(req, session))
                .await
                .map_err(|s| BenchError::rpc(format!("Report of change {k} by agent {who}"), s))?;
            fanout.report_latency.push(start.elapsed());
        }
        Ok(())
    }

    /// Creates the network and a join token; returns the token.
    pub(crate) async fn create_network(&self, channel: Channel) -> Result<String> {
        let mut admin = NetworkServiceClient::new(channel);
        let network = Network {
            cladnet_id: NETWORK_ID.into(),
            name: "control-plane benchmark".into(),
            ipv4_address_space: overlay_cidr(self.opts.agents),
            ..Default::default()
        };
        admin
            .create_network(authed(network, &self.admin))
            .await
            .map_err(|s| BenchError::rpc("CreateNetwork", s))?;
        let token = admin
            .create_join_token(authed(
                CreateJoinTokenRequest {
                    cladnet_id: NETWORK_ID.into(),
                    description: "cladnet-bench".into(),
                    ttl_seconds: 0,
                    max_uses: 0,
                },
                &self.admin,
            ))
            .await
            .map_err(|s| BenchError::rpc("CreateJoinToken", s))?
            .into_inner()
            .token;
        Ok(token)
    }
}

/// `count` HTTP/2 connections to the controller.
///
/// Flow-control windows are raised so that agents sharing a connection are not throttled
/// below what one connection each would give them.
pub(crate) async fn connect(controller: &ControllerProc, count: usize) -> Result<Vec<Channel>> {
    let url = format!("http://{}", controller.addr());
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| BenchError::Connect {
            addr: url.clone(),
            source: e,
        })?
        .tcp_nodelay(true)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(32 << 20)
        .connect_timeout(Duration::from_secs(5));
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(endpoint.connect().await.map_err(|e| BenchError::Connect {
            addr: url.clone(),
            source: e,
        })?);
    }
    Ok(channels)
}

/// Agent `i`'s X25519 private key (distinct per agent; a benchmark needs no secrecy).
pub(crate) fn private_key(i: usize) -> [u8; 32] {
    // Bytes 8..16 carry the index: X25519 clamping clears bits of bytes 0 and 31 only.
    let mut key = [0x5a_u8; 32];
    key[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    key
}

/// Agent `i`'s Join request: realistic facts, a fresh key, a unique endpoint. The nonce and
/// proof are filled in from a JoinChallenge by [`prove`].
fn join_request(i: usize) -> JoinRequest {
    let key = cladnet_proto::join::public_key(&private_key(i));
    let private = offset(Ipv4Addr::new(172, 16, 0, 10), i);
    JoinRequest {
        cladnet_id: NETWORK_ID.into(),
        host_id: host_id(i),
        public_key: base64::engine::general_purpose::STANDARD.encode(key),
        facts: Some(HostFacts {
            host_name: host_id(i),
            interfaces: vec![NetworkInterface {
                name: "eth0".into(),
                ipv4_cidrs: vec![format!("{private}/12")],
                mtu: 1500,
            }],
            capabilities: vec!["userspace".into()],
        }),
        details: Some(CloudInformation {
            provider_name: "bench".into(),
            region_id: format!("region-{}", i % 4),
            ..Default::default()
        }),
        public_endpoint: join_endpoint(i),
        listen_port: LISTEN_PORT,
        host_private_ipv4_cidr: format!("{private}/12"),
        nonce: String::new(),
        proof: String::new(),
    }
}

/// Proves agent `i`'s key for `req` against a fresh JoinChallenge, as the agent does.
async fn prove(
    client: &mut AgentServiceClient<Channel>,
    i: usize,
    mut req: JoinRequest,
) -> std::result::Result<JoinRequest, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let challenge = client
        .join_challenge(cladnet_proto::v1::JoinChallengeRequest {})
        .await
        .map_err(|s| format!("JoinChallenge: {s}"))?
        .into_inner();
    let controller: [u8; 32] = b64
        .decode(&challenge.controller_public_key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or("JoinChallenge: controller key is not 32 bytes")?;
    let nonce = b64
        .decode(&challenge.nonce)
        .map_err(|e| format!("JoinChallenge: nonce: {e}"))?;
    let proof = cladnet_proto::join::proof(
        &private_key(i),
        &controller,
        &nonce,
        &req.cladnet_id,
        &req.host_id,
        &req.public_key,
    )
    .ok_or("JoinChallenge: low-order controller key")?;
    req.nonce = challenge.nonce;
    req.proof = b64.encode(proof);
    Ok(req)
}

/// One simulated agent; reports a failure to the coordinator and ends.
async fn agent(
    shared: Arc<Shared>,
    i: usize,
    channel: Channel,
    tx: mpsc::UnboundedSender<Observation>,
) {
    if let Err(message) = agent_run(&shared, i, channel, &tx).await {
        let _ = tx.send(Observation::Failed { agent: i, message });
    }
}

/// Agent `i` joins through `client` (at most `join_concurrency` at once) and tells the
/// coordinator; returns its session credential.
pub(crate) async fn join(
    shared: &Shared,
    i: usize,
    client: &mut AgentServiceClient<Channel>,
    tx: &mpsc::UnboundedSender<Observation>,
) -> std::result::Result<AsciiMetadataValue, String> {
    let credential = shared
        .join_credential
        .as_ref()
        .ok_or("no join token (agents watching etcd directly do not join a controller)")?;
    let permit = shared
        .join_gate
        .acquire()
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let req = prove(client, i, join_request(i)).await?;
    let joined = client
        .join(authed(req, credential))
        .await
        .map_err(|s| format!("Join: {s}"))?
        .into_inner();
    let at = Instant::now();
    drop(permit);
    let session = bearer(&joined.session_token).map_err(|e| e.to_string())?;
    let _ = tx.send(Observation::Joined {
        agent: i,
        at,
        latency: at - started,
        session: session.clone(),
    });
    Ok(session)
}

async fn agent_run(
    shared: &Shared,
    i: usize,
    channel: Channel,
    tx: &mpsc::UnboundedSender<Observation>,
) -> std::result::Result<(), String> {
    let mut client =
        AgentServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE);
    let session = join(shared, i, &mut client, tx).await?;
    if shared.join_only {
        let at = Instant::now();
        let _ = tx.send(Observation::Converged { at });
        std::future::pending::<()>().await;
    }
    let watch = WatchRequest {
        cladnet_id: NETWORK_ID.into(),
        host_id: host_id(i),
        from_revision: 0,
        batches: shared.batches,
    };
    let mut converged = false;
    if shared.light_decode {
        let mut stream = watch_raw(channel, authed(watch, &session))
            .await
            .map_err(|s| format!("Watch: {s}"))?;
        let _ = tx.send(Observation::Watching { at: Instant::now() });
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => return Err("the Watch stream ended".into()),
                Err(s) => return Err(format!("Watch: {s}")),
            };
            shared.messages.fetch_add(1, Ordering::Relaxed);
            apply_raw(shared, i, &message, tx, &mut converged, &mut |_, _| {})?;
        }
    }
    let mut stream = client
        .watch(authed(watch, &session))
        .await
        .map_err(|s| format!("Watch: {s}"))?
        .into_inner();
    let _ = tx.send(Observation::Watching { at: Instant::now() });
    // The peer table (node id → public endpoint) lives in `shared.tables`, read at the end.
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return Err("the Watch stream ended".into()),
            Err(s) => return Err(format!("Watch: {s}")),
        };
        shared.messages.fetch_add(1, Ordering::Relaxed);
        apply(shared, i, event.event, tx, &mut converged)?;
    }
}

/// Applies one Watch event to agent `i`'s table, counting it, reporting a change it carries
/// and the moment the table is complete (once, through `converged`).
pub(crate) fn apply(
    shared: &Shared,
    i: usize,
    event: Option<Event>,
    tx: &mpsc::UnboundedSender<Observation>,
    converged: &mut bool,
) -> std::result::Result<(), String> {
    let at = Instant::now();
    match event {
        Some(Event::Batch(batch)) => {
            for event in batch.events {
                apply(shared, i, event.event, tx, converged)?;
            }
            return Ok(());
        }
        Some(Event::Snapshot(snapshot)) => {
            shared.snapshots.fetch_add(1, Ordering::Relaxed);
            shared
                .snapshot_peers
                .fetch_add(snapshot.peers.len() as u64, Ordering::Relaxed);
            shared.tables.with(i, |table| {
                table.clear();
                for p in snapshot.peers {
                    table.insert(p.host_id, p.public_endpoint);
                }
            });
        }
        Some(Event::PeerUpserted(peer)) => {
            shared.peer_upserted.fetch_add(1, Ordering::Relaxed);
            if let Some(&change) = shared.changes.get(&peer.public_endpoint) {
                let _ = tx.send(Observation::Received {
                    agent: i,
                    change,
                    at,
                });
            }
            shared
                .tables
                .with(i, |t| t.insert(peer.host_id, peer.public_endpoint));
        }
        Some(Event::PeerRemoved(node)) => {
            shared.other.fetch_add(1, Ordering::Relaxed);
            shared.tables.with(i, |t| t.remove(&node));
        }
        Some(Event::NetworkDeleted(_)) => return Err("the network was deleted".into()),
        _ => {
            shared.other.fetch_add(1, Ordering::Relaxed);
        }
    }
    if !*converged && shared.tables.with(i, |t| t.len()) == shared.agents {
        *converged = true;
        let _ = tx.send(Observation::Converged { at });
    }
    Ok(())
}

/// Opens a Watch whose messages arrive as their bytes, for [`apply_raw`].
pub(crate) async fn watch_raw(
    channel: Channel,
    req: Request<WatchRequest>,
) -> std::result::Result<tonic::Streaming<Bytes>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(lightwatch::WATCH_PATH);
    Ok(grpc
        .server_streaming(req, path, lightwatch::RawWatchCodec)
        .await?
        .into_inner())
}

/// [`apply`] for a Watch message read in place ([`lightwatch::walk`]): applies every item to
/// agent `i`'s table (one lock per message), counts them as [`apply`] does, reports the
/// changes it carries and the moment the table is complete. `order` sees every item's
/// revision first (the failover storm checks their order).
pub(crate) fn apply_raw(
    shared: &Shared,
    i: usize,
    message: &[u8],
    tx: &mpsc::UnboundedSender<Observation>,
    converged: &mut bool,
    order: &mut dyn FnMut(i64, &Item<'_>),
) -> std::result::Result<(), String> {
    let at = Instant::now();
    let (mut snapshots, mut snapshot_peers, mut upserted, mut other) = (0u64, 0u64, 0u64, 0u64);
    let held = shared.tables.with(i, |table| {
        lightwatch::walk(message, &mut |revision, item| {
            order(revision, &item);
            match item {
                Item::Snapshot => {
                    snapshots += 1;
                    table.clear();
                }
                Item::SnapshotPeer { node, endpoint } => {
                    snapshot_peers += 1;
                    table.insert_str(node, endpoint);
                }
                Item::Upserted { node, endpoint } => {
                    upserted += 1;
                    if let Some(&change) = shared.changes.get(endpoint) {
                        let _ = tx.send(Observation::Received {
                            agent: i,
                            change,
                            at,
                        });
                    }
                    table.insert_str(node, endpoint);
                }
                Item::Removed(node) => {
                    other += 1;
                    table.remove(node);
                }
                Item::NetworkDeleted => return Err("the network was deleted".into()),
                Item::Other => other += 1,
            }
            Ok(())
        })?;
        Ok::<_, String>(table.len())
    })?;
    for (counter, n) in [
        (&shared.snapshots, snapshots),
        (&shared.snapshot_peers, snapshot_peers),
        (&shared.peer_upserted, upserted),
        (&shared.other, other),
    ] {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
    if !*converged && held == shared.agents {
        *converged = true;
        let _ = tx.send(Observation::Converged { at });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{ControlOptions, change_endpoint, join_endpoint, join_request, overlay_cidr};

    #[test]
    fn overlay_cidr_fits_the_fleet() {
        assert_eq!(overlay_cidr(10), "10.64.0.0/20");
        assert_eq!(overlay_cidr(1000), "10.64.0.0/20");
        assert_eq!(overlay_cidr(4093), "10.64.0.0/20");
        assert_eq!(overlay_cidr(4094), "10.64.0.0/19");
        assert_eq!(overlay_cidr(100_000), "10.64.0.0/15");
    }

    #[test]
    fn endpoints_are_unique_and_distinct() {
        assert_eq!(join_endpoint(0), "198.18.0.1:8055");
        assert_eq!(join_endpoint(256), "198.18.1.1:8055");
        assert_eq!(change_endpoint(0), "100.64.0.1:8056");
        assert_ne!(join_endpoint(5), change_endpoint(5));
    }

    #[test]
    fn join_request_key_is_32_bytes() {
        use base64::Engine as _;
        let req = join_request(7);
        let key = base64::engine::general_purpose::STANDARD
            .decode(&req.public_key)
            .unwrap();
        assert_eq!(key.len(), 32);
        assert_ne!(join_request(8).public_key, req.public_key);
    }

    #[test]
    fn fds_needed_grows_with_the_connections() {
        assert_eq!(super::fds_needed(1000, 50), 2 * 20 + 256);
        assert_eq!(super::fds_needed(10_000, 50), 2 * 200 + 256);
        assert_eq!(super::fds_needed(1, 0), 2 + 256);
        assert!(super::ensure_fd_limit(u64::MAX).is_err());
        assert!(super::ensure_fd_limit(16).is_ok());
    }

    #[test]
    fn options_are_validated() {
        assert!(ControlOptions::default().validate().is_ok());
        let zero = ControlOptions {
            agents: 0,
            ..ControlOptions::default()
        };
        assert!(zero.validate().is_err());
        let wide = ControlOptions {
            agents_per_channel: 500,
            ..ControlOptions::default()
        };
        assert!(wide.validate().is_err());
    }
}
