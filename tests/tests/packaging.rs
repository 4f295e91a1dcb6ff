//! What operators install: the systemd units verify and keep their privileges low, the install
//! script writes a working, private configuration (and refuses bad input), the example
//! configuration is accepted by the agent, and the Grafana dashboard only queries metrics the
//! agent exports.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use cladnet_tests::{bin_path, skip_or_fail};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn systemd_analyze(args: &[&str]) -> Option<(bool, String)> {
    let out = Command::new("systemd-analyze").args(args).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

/// A copy of `unit` whose ExecStart points at the freshly built binary.
fn unit_copy(dir: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(deploy(&format!("systemd/{name}.service"))).unwrap();
    let text = text.replace(
        &format!("/usr/local/bin/{name}"),
        bin_path(name).to_str().unwrap(),
    );
    let path = dir.join(format!("{name}.service"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn systemd_units_verify_and_stay_least_privileged() {
    let dir = tempfile::tempdir().unwrap();
    let units: Vec<PathBuf> = ["cladnet-controller", "cladnet-agent"]
        .iter()
        .map(|u| unit_copy(dir.path(), u))
        .collect();
    let paths: Vec<&str> = units.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["verify", "--man=no"];
    args.extend(&paths);
    let Some((ok, text)) = systemd_analyze(&args) else {
        skip_or_fail(module_path!(), "systemd-analyze is not installed");
        return;
    };
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
    // Exposure scores (0 = locked down, 10 = unconfined): the controller needs nothing; the
    // agent needs network and BPF capabilities, nothing more.
    for (unit, max) in [(&paths[0], 2.5), (&paths[1], 6.0)] {
        let (_, text) =
            systemd_analyze(&["security", "--offline=true", "--no-pager", unit]).unwrap();
        let score: f64 = text
            .split("exposure level for")
            .nth(1)
            .and_then(|s| s.split(':').nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no exposure score in {text}"));
        assert!(score <= max, "{unit}: exposure {score} > {max}");
    }
}

fn install(prefix: &Path, token: &Path, extra: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg(deploy("install-agent.sh"))
        .args([
            "--controller",
            "https://ctl.example.internal:8053",
            "--network",
            "prod",
        ])
        .arg("--join-token-file")
        .arg(token)
        .arg("--binary")
        .arg(bin_path("cladnet-agent"))
        .arg("--prefix")
        .arg(prefix)
        .args(["--no-start", "--provider", "aws", "--vpc", "vpc-1"])
        .args(extra)
        .output()
        .expect("run install-agent.sh")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn install_script_writes_a_private_working_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "cnj.abc.def\n").unwrap();
    let root = dir.path().join("root");
    let out = install(&root, &token, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etc = root.join("etc/cladnet");
    assert_eq!(
        std::fs::read_to_string(etc.join("join.token")).unwrap(),
        "cnj.abc.def\n"
    );
    assert_eq!(mode(&etc.join("join.token")), 0o600);
    assert_eq!(mode(&etc.join("agent.toml")), 0o600);
    assert_eq!(mode(&root.join("var/lib/cladnet-agent")), 0o700);
    assert_eq!(mode(&root.join("usr/local/bin/cladnet-agent")), 0o755);
    assert!(
        root.join("etc/systemd/system/cladnet-agent.service")
            .exists()
    );
    // The agent accepts what was written.
    let check = Command::new(bin_path("cladnet-agent"))
        .args(["check-config", "--config"])
        .arg(etc.join("agent.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && text.contains("network prod"),
        "{text}"
    );
    // A CA file and a pin end up in the configuration the agent accepts; a pinned token
    // with an http:// controller is refused by the agent's own check.
    let ca = dir.path().join("ca.pem");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=ctl", "-keyout"])
        .arg(dir.path().join("ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let tls_root = dir.path().join("tls-root");
    let pin = format!("sha256:{}", "ab".repeat(32));
    let out = install(
        &tls_root,
        &token,
        &["--ca-cert", ca.to_str().unwrap(), "--controller-pin", &pin],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(tls_root.join("etc/cladnet/agent.toml")).unwrap();
    assert!(
        written.contains(&format!("controller_pin = \"{pin}\"")),
        "{written}"
    );
    assert!(written.contains("ca_cert = "), "{written}");
    let pinned = dir.path().join("pinned-token");
    std::fs::write(&pinned, format!("cnj.abc.def.{}\n", "ab".repeat(32))).unwrap();
    let out = Command::new("sh")
        .arg(deploy("install-agent.sh"))
        .args([
            "--controller",
            "http://ctl.example.internal:8053",
            "--network",
            "prod",
        ])
        .arg("--join-token-file")
        .arg(&pinned)
        .arg("--binary")
        .arg(bin_path("cladnet-agent"))
        .arg("--prefix")
        .arg(dir.path().join("plain-root"))
        .arg("--no-start")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("warning: http://") && err.contains("use https://"),
        "{err}"
    );
    // No silent overwrite; --force replaces.
    let again = install(&root, &token, &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(install(&root, &token, &["--force"]).status.success());
    // Bad input is refused before anything is written, naming the option.
    let fresh = dir.path().join("fresh");
    for (args, option) in [
        (&["--network", "Bad_Net"][..], "--network"),
        (&["--controller", "ctl:8053"][..], "--controller"),
        (&["--bogus"][..], "--bogus"),
    ] {
        let out = install(&fresh, &token, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(option), "{args:?}: {err}");
    }
    assert!(!fresh.join("etc/cladnet/agent.toml").exists());
}

#[test]
fn example_agent_configuration_is_accepted() {
    let out = Command::new(bin_path("cladnet-agent"))
        .args(["check-config", "--join-token", "cnj.x.y", "--config"])
        .arg(deploy("agent.toml.example"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/cladnet-dashboard.json")).unwrap(),
    )
    .expect("dashboard JSON");
    // Metric names as the agent and the controller declare them.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let agent = std::fs::read_to_string(root.join("cladnet-agent/src/daemon/metrics.rs")).unwrap();
    let controller = std::fs::read_to_string(root.join("cladnet-controller/src/metrics.rs"))
        .unwrap()
        .replace("\"", "\"cladnet_controller_");
    let exported = agent + &controller;
    let mut names = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("cladnet_") {
                    names.push(word.to_owned());
                }
            }
        }
    }
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        // Counters are declared without the `_total` suffix the exposition adds, histograms
        // without their unit and series suffixes.
        let declared = [
            "_total",
            "_seconds_bucket",
            "_seconds_count",
            "_seconds_sum",
        ]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(&name);
        assert!(
            exported.contains(&format!("\"{declared}\"")),
            "dashboard uses {name}, which the agent does not export"
        );
    }
}
