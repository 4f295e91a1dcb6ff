//! Runs real etcd processes for tests: one member or a cluster on 127.0.0.1 with free client
//! and peer ports, a temp data dir and unique names, killed and removed on drop (also when the
//! test panics).
//!
//! If no etcd binary is found (`$ETCD_BIN`, else `etcd` on `$PATH`), tests skip with a message,
//! except under `CI=true`, where they fail.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cladnet_store::etcd::{EtcdOptions, EtcdStore};
use cladnet_store::{EtcdEndpoint, Store, StoreUrl};
use tempfile::TempDir;

/// How long a cluster may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with fresh ports if a member fails to start (e.g. a port was taken meanwhile).
const START_ATTEMPTS: usize = 3;

/// Ports handed out by this process, never reused, so that parallel tests do not collide.
static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
/// Makes cluster names and tokens unique within this process.
static CLUSTER_SEQ: AtomicU32 = AtomicU32::new(0);

fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        let mut used = USED_PORTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// The etcd binary, or why there is none.
fn etcd_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("ETCD_BIN={} is not a file", bin.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| "no `etcd` binary on PATH and ETCD_BIN is not set".to_owned())
}

/// Finds etcd, or decides to skip (outside CI) or fail (CI=true).
fn etcd_or_skip(test: &str) -> Option<PathBuf> {
    match etcd_binary() {
        Ok(bin) => Some(bin),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "{test}: etcd is required under CI=true but {why}; install etcd-server (apt-get install etcd-server) or set ETCD_BIN"
            )
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why} (install etcd-server or set ETCD_BIN to run it)");
            None
        }
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    log: PathBuf,
    /// Command-line arguments, kept to restart the member on its data dir.
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    fn endpoint(&self) -> EtcdEndpoint {
        EtcdEndpoint {
            host: "127.0.0.1".into(),
            port: self.client_port,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Starts the process, appending its stderr to the member's log.
    fn launch(&mut self, bin: &Path) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open etcd log file");
        let child = Command::new(bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running etcd cluster (one or more members).
pub(crate) struct EtcdCluster {
    bin: PathBuf,
    members: Vec<Member>,
    /// Data dirs and logs; removed after the children are killed (in Drop).
    _dir: TempDir,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

impl EtcdCluster {
    /// Starts a cluster of `size` members and waits until every member serves linearizable
    /// reads. `None`: etcd is not installed and this is not CI (the test should return).
    pub(crate) async fn start(test: &str, size: usize) -> Option<Self> {
        let bin = etcd_or_skip(test)?;
        let mut last_error = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Self::spawn(&bin, test, size);
            match cluster.wait_healthy().await {
                Ok(()) => return Some(cluster),
                Err(e) => {
                    eprintln!("{test}: etcd start attempt {attempt} failed: {e}");
                    last_error = e;
                }
            }
        }
        panic!("{test}: etcd did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    fn spawn(bin: &Path, test: &str, size: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cladnet-etcd-")
            .tempdir()
            .expect("create a temp dir for etcd");
        let seq = CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed);
        let token = format!("cladnet-{}-{seq}-{test}", std::process::id());
        let mut members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}-{seq}"),
                client_port: free_port(),
                peer_port: free_port(),
                log: dir.path().join(format!("m{i}.log")),
                args: Vec::new(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        // A single member never has to re-elect: short timers make it start fast. A cluster
        // on a loaded 2-core machine needs etcd's default timers to stay stable.
        let (heartbeat, election) = if size == 1 {
            ("25", "250")
        } else {
            ("100", "1000")
        };
        for m in &mut members {
            let client_url = format!("http://127.0.0.1:{}", m.client_port);
            let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
            let data_dir = dir.path().join(format!("{}.etcd", m.name));
            m.args = [
                "--name",
                &m.name,
                "--data-dir",
                &data_dir.to_string_lossy(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                heartbeat,
                "--election-timeout",
                election,
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ]
            .map(String::from)
            .to_vec();
            m.launch(bin);
        }
        Self {
            bin: bin.to_path_buf(),
            members,
            _dir: dir,
        }
    }

    /// Waits until every member answers a linearizable read (which needs a leader).
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        for i in 0..self.members.len() {
            loop {
                let m = &mut self.members[i];
                if let Some(Ok(Some(status))) = m.child.as_mut().map(Child::try_wait) {
                    return Err(format!(
                        "{} exited with {status}:\n{}",
                        m.name,
                        m.log_tail()
                    ));
                }
                if member_ready(m.endpoint()).await {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} not healthy after {START_TIMEOUT:?}:\n{}",
                        m.name,
                        m.log_tail()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// All client endpoints.
    pub(crate) fn endpoints(&self) -> Vec<EtcdEndpoint> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The store URL listing every member.
    pub(crate) fn url(&self) -> StoreUrl {
        StoreUrl::Etcd {
            endpoints: self.endpoints(),
        }
    }

    /// A new client of the whole cluster.
    pub(crate) async fn client(&self) -> Arc<dyn Store> {
        let store = EtcdStore::connect(&self.endpoints(), EtcdOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connect to test etcd: {e}"));
        Arc::new(store)
    }

    /// Index of the current leader, from the members' `/metrics` (`etcd_server_is_leader`).
    pub(crate) fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.child.is_some()
                && metrics(m.client_port)
                    .is_some_and(|text| text.lines().any(|l| l.trim() == "etcd_server_is_leader 1"))
        })
    }

    /// Process ids of the running members.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// The temp dir holding the members' data dirs and logs.
    pub(crate) fn dir(&self) -> PathBuf {
        self._dir.path().to_path_buf()
    }

    /// Starts a killed member again on its data dir and waits until it is healthy.
    pub(crate) async fn restart(&mut self, index: usize) {
        let bin = self.bin.clone();
        self.members[index].launch(&bin);
        if let Err(e) = self.wait_healthy().await {
            panic!("restarting member {index}: {e}");
        }
    }

    /// Kills one member (SIGKILL) and waits for it to exit.
    pub(crate) fn kill(&mut self, index: usize) {
        self.members[index].kill();
    }
}

async fn member_ready(endpoint: EtcdEndpoint) -> bool {
    let options = EtcdOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
        ..EtcdOptions::default()
    };
    let probe = async {
        let store = EtcdStore::connect(&[endpoint], options).await.ok()?;
        store.get("/health-probe").await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(_))
    )
}

/// GET /metrics from a member's client port (plain HTTP/1.1 over the same port as gRPC).
fn metrics(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}
