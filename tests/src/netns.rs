//! One network namespace and running commands inside it.

use std::{
    ffi::OsStr,
    io::Write as _,
    process::{Command, Output, Stdio},
};

/// A named network namespace (`/run/netns/<name>`), deleted with every process inside it on
/// drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Self, String> {
        run_checked(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.exec(["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace. Only the network namespace is
    /// entered (`nsenter --net`), so the caller's mounts, including bpffs, stay visible.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `argv` inside the namespace; `Err` carries the command and its stderr.
    pub fn exec<I, S>(&self, argv: I) -> Result<String, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut argv = argv.into_iter();
        let program = argv.next().ok_or("empty command")?;
        let mut cmd = self.command(program);
        cmd.args(argv);
        run_checked(&mut cmd)
    }

    /// Writes a sysctl inside the namespace (`/proc/sys/net` follows the writer's netns).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        self.exec(["sysctl", "-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Loads an nftables ruleset (the text `nft -f` reads) into the namespace.
    pub fn load_nft(&self, ruleset: &str) -> Result<(), String> {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft in {}: {e}", self.name))?;
        let written = child
            .stdin
            .take()
            .expect("piped")
            .write_all(ruleset.as_bytes());
        let out = child
            .wait_with_output()
            .map_err(|e| format!("nft in {}: {e}", self.name))?;
        match (written, out.status.success()) {
            (Ok(()), true) => Ok(()),
            (w, _) => Err(format!(
                "nft in {}: {} {:?}\nruleset:\n{ruleset}",
                self.name,
                String::from_utf8_lossy(&out.stderr),
                w.err()
            )),
        }
    }

    /// Process ids running inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_and_delete(&self.name);
    }
}

/// SIGKILLs every process in namespace `name`, then deletes it. Errors are ignored: this runs
/// in `Drop` and in the stale sweep, where the namespace may already be gone.
pub(crate) fn kill_all_and_delete(name: &str) {
    for _ in 0..50 {
        let out = Command::new("ip").args(["netns", "pids", name]).output();
        let pids: Vec<String> = out
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() {
            break;
        }
        let _ = Command::new("kill").arg("-9").args(&pids).output();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// Runs `cmd` to completion; `Ok(stdout)` on success, else `Err` naming the command, its exit
/// status and stderr.
pub fn run_checked(cmd: &mut Command) -> Result<String, String> {
    let described = format!("{cmd:?}");
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .output()
        .map_err(|e| format!("{described}: could not start: {e}"))?;
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        Err(format!(
            "{described}: {status}: {}",
            String::from_utf8_lossy(&stderr).trim()
        ))
    }
}

/// A spawned process, killed and reaped on drop (the topology's teardown kills it anyway; this
/// also reaps it, so no zombie is left).
#[derive(Debug)]
pub struct Process(pub std::process::Child);

impl Process {
    /// Spawns `cmd`.
    pub fn spawn(cmd: &mut Command) -> Result<Self, String> {
        cmd.spawn()
            .map(Self)
            .map_err(|e| format!("{cmd:?}: could not start: {e}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
