//! `cladnet-bench failover`: the failover storm. Three controllers on a three-member etcd,
//! agent `i` on controller `i % 3`; once every agent holds the full table, controller 0 is
//! killed (SIGKILL) and K changes are made at once through the two others. Every agent of the
//! killed controller re-opens its Watch on the next controller with `fromRevision` = the last
//! revision it applied. Measured and checked:
//!
//! * **failover time**: from the kill until the last of its agents has its Watch open again;
//! * **missed events**: every (watcher, change) pair must arrive, and after the run every
//!   agent's table must equal the store's peers ([`crate::check`]);
//! * **out of order**: an event whose revision is below one the agent already applied.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cladnet_proto::v1::{
    ReportRequest, WatchEvent, WatchRequest, agent_service_client::AgentServiceClient,
    watch_event::Event,
};
use serde::Serialize;
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tonic::transport::Channel;

use crate::{
    check::{self, TableCheck, Tables},
    control::{
        ControlOptions, Fanout, MAX_MESSAGE, NETWORK_ID, Observation, Scenario, Shared, apply,
        apply_raw, authed, change_endpoint, changer, connect, host_id, join, random_token,
        watch_raw,
    },
    error::{BenchError, Result},
    lightwatch::Item,
    procs::{ControllerProc, Etcd},
    stats::Summary,
};

/// Controllers (and etcd members).
pub const CONTROLLERS: usize = 3;
/// Time given to the child processes to become ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before retrying a Watch on the next controller.
const RETRY: Duration = Duration::from_millis(50);

/// The result of one storm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailoverReport {
    /// Agents (N).
    pub agents: usize,
    /// Agents of the killed controller.
    pub affected: usize,
    /// Of those, Watches re-opened on another controller.
    pub resumed: usize,
    /// From the kill until the last affected agent's Watch was open again, milliseconds.
    pub failover_ms: f64,
    /// Convergence before the kill, milliseconds.
    pub convergence_ms: f64,
    /// Changes made right after the kill (K).
    pub changes: usize,
    /// Fan-out events expected (N × K) and received.
    pub fanout_expected: usize,
    /// Fan-out events received.
    pub fanout_received: usize,
    /// From just before each Report to each watcher decoding it.
    pub fanout: Option<Summary>,
    /// Events whose revision was below one the agent had applied.
    pub out_of_order: u64,
    /// Every agent's table against the store after the storm.
    pub table_check: TableCheck,
}

/// Runs the storm once with `opts` (agents, changes, binaries, limits; the store is ignored).
pub async fn run_failover_bench(opts: &ControlOptions) -> Result<FailoverReport> {
    let dir = tempfile::Builder::new()
        .prefix("cladnet-failover-")
        .tempdir()
        .map_err(|e| BenchError::io("creating a temporary directory", e))?;
    let result = run_in(opts, dir.path()).await;
    if opts.keep_temp {
        eprintln!("kept {}", dir.keep().display());
    }
    result
}

async fn run_in(opts: &ControlOptions, dir: &std::path::Path) -> Result<FailoverReport> {
    let n = opts.agents;
    let etcd = Etcd::start_cluster(&opts.etcd_bin, dir, CONTROLLERS, STARTUP_TIMEOUT).await?;
    let store_url = format!(
        "etcd://{}",
        etcd.iter()
            .map(Etcd::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    );
    let admin_token = random_token()?;
    let mut controllers = Vec::with_capacity(CONTROLLERS);
    for k in 0..CONTROLLERS {
        let name = format!("controller-{k}");
        controllers.push(
            ControllerProc::start_named(
                &opts.controller_bin,
                &store_url,
                &admin_token,
                dir,
                &name,
                STARTUP_TIMEOUT,
            )
            .await?,
        );
    }
    let scenario = Scenario::new(opts, &admin_token)?;
    // channels[k][c]: connection c to controller k.
    let per_controller = n
        .div_ceil(CONTROLLERS)
        .div_ceil(opts.agents_per_channel)
        .max(1);
    let mut channels = Vec::with_capacity(CONTROLLERS);
    for c in &controllers {
        channels.push(connect(c, per_controller).await?);
    }
    let join_token = scenario.create_network(channels[0][0].clone()).await?;
    let tables = Arc::new(Tables::new(n, opts.compact_tables));
    let shared = Arc::new(Shared {
        agents: n,
        join_only: false,
        join_credential: Some(crate::control::bearer(&join_token)?),
        join_gate: Semaphore::new(opts.join_concurrency),
        tables: Arc::clone(&tables),
        changes: (0..opts.changes).map(|k| (change_endpoint(k), k)).collect(),
        snapshots: AtomicU64::new(0),
        snapshot_peers: AtomicU64::new(0),
        peer_upserted: AtomicU64::new(0),
        other: AtomicU64::new(0),
        batches: true,
        light_decode: opts.light_decode,
        messages: AtomicU64::new(0),
    });
    let out_of_order = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut agents = JoinSet::new();
    let t0 = Instant::now();
    for i in 0..n {
        let own = i % CONTROLLERS;
        let conn = (i / CONTROLLERS) % per_controller;
        // Its own controller first, then the others in order.
        let order: Vec<Channel> = (0..CONTROLLERS)
            .map(|d| channels[(own + d) % CONTROLLERS][conn].clone())
            .collect();
        agents.spawn(agent(
            Arc::clone(&shared),
            i,
            order,
            tx.clone(),
            Arc::clone(&out_of_order),
        ));
    }
    drop(tx);
    let result = storm(opts, &scenario, &mut controllers, &channels, &mut rx, t0).await;
    agents.abort_all();
    drop(agents);
    for c in &mut controllers {
        c.stop();
    }
    let check = check::read_store(&store_url, NETWORK_ID)
        .await
        .map(|store| {
            let names: Vec<String> = (0..n).map(host_id).collect();
            check::compare(&names, &tables.take(), &store)
        });
    drop(etcd);
    let mut report = match (result, check) {
        (Ok(r), Ok(c)) if c.passed() => FailoverReport {
            table_check: c,
            ..r
        },
        (Ok(_), Ok(c)) => return Err(BenchError::TablesDiffer(c.describe())),
        (Ok(_), Err(e)) => return Err(e),
        (Err(e), c) => {
            return Err(BenchError::WithTables {
                source: Box::new(e),
                tables: c.map_or_else(|e| e.to_string(), |c| c.describe()),
            });
        }
    };
    report.out_of_order = out_of_order.load(Ordering::Relaxed);
    Ok(report)
}

/// Converges, kills controller 0, makes the changes through the others and waits for the
/// resumes and the fan-out.
async fn storm(
    opts: &ControlOptions,
    scenario: &Scenario<'_>,
    controllers: &mut [ControllerProc],
    channels: &[Vec<Channel>],
    rx: &mut mpsc::UnboundedReceiver<Observation>,
    t0: Instant,
) -> Result<FailoverReport> {
    let n = opts.agents;
    let mut conv = scenario.converge(None, rx, t0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let affected = (0..n).filter(|i| i % CONTROLLERS == 0).count();
    let killed = Instant::now();
    controllers[0].stop();
    let mut fanout = Fanout {
        changes: opts.changes,
        sent_at: Vec::with_capacity(opts.changes),
        report_latency: Vec::with_capacity(opts.changes),
        received_at: vec![None; n * opts.changes],
        received: 0,
    };
    for k in 0..opts.changes {
        let who = changer(k, n, opts.changes);
        // Through the agent's own controller, or the next one for the killed one's agents.
        let via = match who % CONTROLLERS {
            0 => 1,
            c => c,
        };
        let session = conv.sessions[who].as_ref().ok_or(BenchError::AgentsGone)?;
        let req = ReportRequest {
            cladnet_id: NETWORK_ID.into(),
            host_id: host_id(who),
            public_endpoint: change_endpoint(k),
            ..Default::default()
        };
        let start = Instant::now();
        fanout.sent_at.push(start);
        AgentServiceClient::new(channels[via][0].clone())
            .report(authed(req, session))
            .await
            .map_err(|s| BenchError::rpc(format!("Report of change {k} by agent {who}"), s))?;
        fanout.report_latency.push(start.elapsed());
    }
    for obs in std::mem::take(&mut conv.early) {
        fanout.record(obs)?;
    }
    let (mut resumed, mut last_resume) = (0usize, killed);
    let deadline = tokio::time::Instant::now() + opts.timeout;
    while fanout.received < fanout.received_at.len() || resumed < affected {
        let obs = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(obs)) => obs,
            Ok(None) => return Err(BenchError::AgentsGone),
            Err(_) => {
                return Err(BenchError::Timeout {
                    phase: "failover",
                    timeout: opts.timeout,
                    progress: format!(
                        "{resumed}/{affected} agents resumed, {}/{} fan-out events",
                        fanout.received,
                        fanout.received_at.len()
                    ),
                });
            }
        };
        match obs {
            Observation::Resumed { at } => {
                resumed += 1;
                last_resume = last_resume.max(at);
            }
            other => fanout.record(other)?,
        }
    }
    let mut latencies = fanout.latencies();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(FailoverReport {
        agents: n,
        affected,
        resumed,
        failover_ms: ms(last_resume - killed),
        convergence_ms: ms(conv.last_converged - t0),
        changes: opts.changes,
        fanout_expected: fanout.received_at.len(),
        fanout_received: latencies.len(),
        fanout: Summary::of(&mut latencies),
        out_of_order: 0,
        table_check: TableCheck::default(),
    })
}

/// One agent that fails over: joins through its own controller, then watches the first of
/// `order` that answers, resuming from the last revision it applied.
async fn agent(
    shared: Arc<Shared>,
    i: usize,
    order: Vec<Channel>,
    tx: mpsc::UnboundedSender<Observation>,
    out_of_order: Arc<AtomicU64>,
) {
    if let Err(message) = agent_run(&shared, i, &order, &tx, &out_of_order).await {
        let _ = tx.send(Observation::Failed { agent: i, message });
    }
}

async fn agent_run(
    shared: &Shared,
    i: usize,
    order: &[Channel],
    tx: &mpsc::UnboundedSender<Observation>,
    out_of_order: &AtomicU64,
) -> std::result::Result<(), String> {
    let client = |k: usize| {
        AgentServiceClient::new(order[k % order.len()].clone())
            .max_decoding_message_size(MAX_MESSAGE)
    };
    let session = join(shared, i, &mut client(0), tx).await?;
    let (mut attempt, mut last_rev, mut converged) = (0usize, 0i64, false);
    loop {
        let watch = WatchRequest {
            cladnet_id: NETWORK_ID.into(),
            host_id: host_id(i),
            from_revision: last_rev,
            batches: shared.batches,
        };
        if shared.light_decode {
            let channel = order[attempt % order.len()].clone();
            let mut stream = match watch_raw(channel, authed(watch, &session)).await {
                Ok(s) => s,
                Err(s) if attempt == 0 => return Err(format!("Watch: {s}")),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            let _ = tx.send(opened(attempt));
            while let Ok(Some(message)) = stream.message().await {
                shared.messages.fetch_add(1, Ordering::Relaxed);
                apply_raw(
                    shared,
                    i,
                    &message,
                    tx,
                    &mut converged,
                    &mut |revision, item| {
                        let snapshot = matches!(item, Item::Snapshot | Item::SnapshotPeer { .. });
                        if !snapshot && revision < last_rev {
                            out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        last_rev = last_rev.max(revision);
                    },
                )?;
            }
            // The stream broke: this controller went away. Resume on the next one.
            attempt += 1;
            continue;
        }
        let mut stream = match client(attempt).watch(authed(watch, &session)).await {
            Ok(s) => s.into_inner(),
            Err(s) if attempt == 0 => return Err(format!("Watch: {s}")),
            Err(_) => {
                // That controller is down too: the next one.
                attempt += 1;
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let _ = tx.send(opened(attempt));
        loop {
            let Ok(Some(message)) = stream.message().await else {
                break;
            };
            shared.messages.fetch_add(1, Ordering::Relaxed);
            // A batch is its changes, each at its own revision.
            let events = match message.event {
                Some(Event::Batch(batch)) => batch.events,
                event => vec![WatchEvent { event, ..message }],
            };
            for event in events {
                let snapshot = matches!(event.event, Some(Event::Snapshot(_)));
                if !snapshot && event.revision < last_rev {
                    out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                last_rev = last_rev.max(event.revision);
                apply(shared, i, event.event, tx, &mut converged)?;
            }
        }
        // The stream broke: this controller went away. Resume on the next one.
        attempt += 1;
    }
}

/// What opening a Watch stream is: the first one, or a resumption after `attempt` failures.
fn opened(attempt: usize) -> Observation {
    let at = Instant::now();
    if attempt == 0 {
        Observation::Watching { at }
    } else {
        Observation::Resumed { at }
    }
}
