//! Shared by the agent's integration tests (eBPF and sys): privilege checks, namespace threads and packet
//! builders. Every namespace is the tests' own (unshared, or created under a unique name and
//! deleted by a guard), so nothing touches the machine's interfaces.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test crate uses a different part of this module"
)]

use std::{io::Write as _, process::Command, sync::mpsc, thread::JoinHandle};

/// In the calling thread's (fresh) namespace: loopback up and an underlay veth `ul0` (peer
/// `ul1`, MTU 1500, up) for the programs to run against; returns `ul0`'s index.
pub fn underlay_veth() -> u32 {
    ip(&["link", "set", "lo", "up"]);
    ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
    ip(&["link", "set", "ul0", "mtu", "1500", "up"]);
    cladnet_agent::sys::interface_index("ul0")
        .expect("reading ul0's index")
        .expect("ul0 exists")
}

/// Whether the test may run; panics under CI=true when it may not.
pub fn may_run(test: &str, why_not: Option<String>) -> bool {
    let Some(why) = why_not else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why} (CI=true: not skipping)");
    }
    // Straight to stderr: libtest captures eprintln! of passing tests.
    let _ = writeln!(std::io::stderr(), "skipping {test}: {why}");
    false
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Why this process cannot run namespace/BPF tests, if it cannot.
pub fn privilege_problem() -> Option<String> {
    match effective_uid() {
        Some(0) => None,
        uid => Some(format!(
            "needs root for network namespaces and BPF (euid {uid:?})"
        )),
    }
}

/// Runs `cmd` and returns its stdout; panics with stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS` in the calling thread's namespace.
pub fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

/// Waits up to 2 s for `show()` (e.g. `ip link show DEV`) to stop mentioning `what`, and
/// returns its last output. The kernel drops an XDP or TC link when its last file reference
/// goes, which can be deferred past the `close` that releases it (delayed fput), so a check
/// right after a detach would race it.
pub fn until_gone(what: &str, mut show: impl FnMut() -> String) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let out = show();
        if !out.contains(what) || std::time::Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A named network namespace (`ip netns add`), deleted on drop, pass or fail.
pub struct NamedNetns {
    name: String,
}

impl NamedNetns {
    /// Creates `name` (which should be unique: include the process id).
    pub fn create(name: &str) -> Self {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a command inside the namespace; returns stdout, panics on failure.
    pub fn exec(&self, argv: &[&str]) -> String {
        let mut c = self.command(argv[0]);
        c.args(&argv[1..]);
        run(&mut c)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A thread living in one network namespace, holding state `S` (TUN devices, dataplane
/// handles) that must stay on it; closures run there in order.
pub struct NetnsThread<S> {
    jobs: Option<mpsc::Sender<Job<S>>>,
    handle: Option<JoinHandle<()>>,
}

impl<S: 'static> NetnsThread<S> {
    /// Starts a thread that enters `/var/run/netns/<netns>` (or, with `None`, a fresh
    /// unshared namespace) and builds its state with `init`.
    pub fn spawn(netns: Option<&str>, init: impl FnOnce() -> S + Send + 'static) -> Self {
        let path = netns.map(|n| format!("/var/run/netns/{n}"));
        let (tx, rx) = mpsc::channel::<Job<S>>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{}", netns.unwrap_or("unshared")))
            .spawn(move || {
                enter_netns(path.as_deref());
                let mut state = init();
                let _ = ready_tx.send(());
                while let Ok(job) = rx.recv() {
                    job(&mut state);
                }
            })
            .expect("spawning the namespace thread");
        if ready_rx.recv().is_err() {
            // The thread panicked in init: surface its panic.
            match handle.join() {
                Err(p) => std::panic::resume_unwind(p),
                Ok(()) => panic!("namespace thread ended during init"),
            }
        }
        Self {
            jobs: Some(tx),
            handle: Some(handle),
        }
    }

    /// Runs `f` on the thread and returns its result (re-raising its panic).
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce(&mut S) -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let job: Job<S> = Box::new(move |s| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(s)));
            let _ = tx.send(r);
        });
        self.jobs
            .as_ref()
            .expect("thread running")
            .send(job)
            .expect("namespace thread alive");
        match rx.recv().expect("namespace thread answered") {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl<S> Drop for NetnsThread<S> {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Moves the calling thread into the namespace at `path`, or into a new one.
fn enter_netns(path: Option<&str>) {
    use std::os::fd::AsRawFd as _;
    match path {
        Some(p) => {
            let f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {p}: {e}"));
            // SAFETY: setns(2) on a namespace fd we own; it only switches this thread's
            // network namespace and touches no memory.
            #[allow(unsafe_code, reason = "setns(2) has no safe wrapper")]
            let ret = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "setns {p}: {}", std::io::Error::last_os_error());
        }
        None => {
            // SAFETY: unshare(CLONE_NEWNET) only swaps this thread's network namespace.
            #[allow(unsafe_code, reason = "unshare(2) has no safe wrapper")]
            let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "unshare: {}", std::io::Error::last_os_error());
        }
    }
}

/// A unique bpffs pin directory for this test process, removed (with whatever is pinned in
/// it) on drop.
pub struct PinDir(pub std::path::PathBuf);

impl PinDir {
    /// `/sys/fs/bpf/cladnet-test-<pid>-<tag>`.
    pub fn new(tag: &str) -> Self {
        let p = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/cladnet-test-{}-{tag}",
            std::process::id()
        ));
        if p.exists() {
            let _ = cladnet_agent::ebpf::detach(&p);
        }
        Self(p)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = cladnet_agent::ebpf::detach(&self.0);
        }
    }
}

// ----- packets -----

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header (no options, DF, TTL 64, checksum set) followed by `payload`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..].copy_from_slice(payload);
    p
}

/// A UDP header (checksum 0) followed by `payload`.
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&src_port.to_be_bytes());
    u.extend_from_slice(&dst_port.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// An ICMP echo request with `len` bytes of payload.
pub fn icmp_echo(id: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; 8 + len];
    m[0] = 8;
    m[4..6].copy_from_slice(&id.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in m[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An Ethernet frame.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}
