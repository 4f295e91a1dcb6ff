//! `cargo xtask demo`: a simulated multi-cloud deployment in network namespaces, end to end.
//!
//! Four clouds (two share 192.168.1.0/24, both behind NAT), a controller on the embedded
//! store, one agent per host; the controller recommends the address space, the network is
//! created, everyone joins, and a connectivity test prints the latency matrix. Then it keeps
//! running until Ctrl-C (or exits at once with `--once`) and removes everything it created.
//!
//! The web console is forwarded from the machine's loopback (127.0.0.1:8053, else a free port)
//! into the controller's namespace, and its URL printed.
//!
//! Usage: `cladnet-demo [--once] [--trials N]` (root; `cargo xtask demo` builds it in release
//! mode and runs it).

use std::{
    io::Write as _,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd as _, OwnedFd},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use cladnet_tests::{CONTROLLER_PORT, Mesh, Nat, Process, SiteLabels, Topology, netns_unavailable};

/// Internal mode: `cladnet-demo __forward-console`, started inside the controller's namespace
/// with a listening socket of the host's loopback as stdin (see [`forward_console`]).
const FORWARD: &str = "__forward-console";

const CLOUDS: [(&str, &str, Nat, &[&str]); 4] = [
    ("aws", "192.168.1.0/24", Nat::Masquerade, &["a1", "a2"]),
    ("gcp", "192.168.1.0/24", Nat::OneToOne, &["g1"]),
    ("azure", "10.0.0.0/24", Nat::OneToOne, &["z1"]),
    ("ops", "172.16.0.0/24", Nat::OneToOne, &["ctl"]),
];

fn step(n: u32, text: &str) {
    println!("\n[{n}/6] {text}");
    let _ = std::io::stdout().flush();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(FORWARD) {
        return forward();
    }
    let once = args.iter().any(|a| a == "--once");
    let trials = match args.iter().position(|a| a == "--trials") {
        Some(i) => match args.get(i + 1).and_then(|t| t.parse::<u32>().ok()) {
            Some(t) if (1..=100).contains(&t) => t,
            _ => {
                eprintln!("error: --trials needs a number in 1..=100");
                return ExitCode::from(2);
            }
        },
        None => 5,
    };
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--once" => {}
            "--trials" => {
                rest.next();
            }
            other => {
                eprintln!(
                    "error: unknown argument {other:?}\nusage: cladnet-demo [--once] [--trials N]"
                );
                return ExitCode::from(2);
            }
        }
    }
    if let Some(reason) = netns_unavailable() {
        eprintln!("error: the demo builds network namespaces and needs root: {reason}");
        return ExitCode::FAILURE;
    }
    // Every failure below panics with what failed; unwinding drops the mesh, which stops the
    // processes and removes the namespaces.
    match std::panic::catch_unwind(|| demo(once, trials)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => {
            eprintln!("\ndemo failed (see the message above); everything it created was removed");
            ExitCode::FAILURE
        }
    }
}

fn demo(once: bool, trials: u32) {
    let started = Instant::now();
    step(1, "building the clouds in network namespaces");
    let mut b = Topology::builder();
    for (cloud, cidr, nat, hosts) in CLOUDS {
        b = b.cloud(cloud, cidr, nat);
        for h in hosts {
            b = b.host(cloud, h);
        }
        let nat = match nat {
            Nat::Masquerade => "masquerade NAT",
            Nat::OneToOne => "1:1 NAT",
            Nat::Easy => "easy NAT",
            Nat::Hard => "hard NAT",
            Nat::UdpBlocked => "no UDP",
        };
        println!(
            "      {cloud:<6} {cidr:<15} behind {nat:<14} {}",
            hosts.join(", ")
        );
    }
    let topo = b.build().expect("build the topology");

    step(
        2,
        "starting the controller on the embedded store, TLS with its own certificate",
    );
    let mut mesh = Mesh::with_tls_controller(topo, "ctl");
    println!(
        "      controller at {} (--tls auto; agents trust the pin in their join token)",
        mesh.controller_url()
    );
    if cfg!(debug_assertions) {
        println!(
            "      (debug binaries: RTTs across clouds are several times those of the release \
             build `cargo xtask demo` runs)"
        );
    }
    let (_forwarder, console) = forward_console(&mesh);

    step(
        3,
        "recommending an overlay address space that clashes with no host subnet",
    );
    let cidrs: Vec<&str> = CLOUDS.iter().map(|c| c.1).collect();
    let mut args = vec!["--json", "network", "recommend", "--hosts", "16"];
    for c in &cidrs {
        args.extend(["--cidr", c]);
    }
    let rec: serde_json::Value =
        serde_json::from_str(&mesh.cli(&args)).expect("recommendation JSON");
    let space = rec["recommendedIpv4PrivateAddressSpace"]
        .as_str()
        .expect("a recommended space")
        .to_owned();
    println!(
        "      host subnets {}: recommended {space}",
        cidrs.join(", ")
    );
    mesh.create_network(
        "demo",
        &space,
        &[
            "--encryption",
            "inter-site",
            "--rule-type",
            "cost-prioritized",
        ],
    );
    println!(
        "      network \"demo\": encryption inter-site (PLAIN inside a VPC, WireGuard across)"
    );

    step(
        4,
        "starting one agent per host and waiting until every pair pings",
    );
    let hosts: Vec<&str> = CLOUDS[..3]
        .iter()
        .flat_map(|c| c.3.iter().copied())
        .collect();
    for (cloud, _, _, names) in &CLOUDS[..3] {
        for h in *names {
            let site = SiteLabels {
                provider: cloud,
                vpc: "vpc-1",
            };
            mesh.start_agent(h, site, &["--metrics-listen", "127.0.0.1:9412"]);
        }
    }
    mesh.wait_mesh(&hosts, Duration::from_secs(60));
    println!("{}", mesh.cli(&["peers", "demo"]));

    step(
        5,
        &format!("connectivity test: {trials} pings per pair over the overlay"),
    );
    let t: serde_json::Value = serde_json::from_str(&mesh.cli(&[
        "--json",
        "test",
        "start",
        "demo",
        "--trials",
        &trials.to_string(),
    ]))
    .expect("test JSON");
    let id = t["testId"].as_str().expect("test id").to_owned();
    mesh.wait("the connectivity test", Duration::from_secs(60), |m| {
        let v: serde_json::Value =
            serde_json::from_str(&m.cli(&["--json", "test", "show", "demo", &id])).unwrap();
        v["complete"].as_bool() == Some(true)
    });
    println!("{}", mesh.cli(&["test", "show", "demo", &id]));

    step(6, &format!("running (set up in {:.0?})", started.elapsed()));
    let a1 = mesh.topo.host("a1").netns().name().to_owned();
    let z1 = mesh.overlay_ip("z1");
    println!("      metrics:  ip netns exec {a1} curl -s 127.0.0.1:9412/metrics");
    println!("      traffic:  ip netns exec {a1} ping {z1}");
    // The controller is reachable from this machine through the console's forward.
    println!(
        "      CLI:      {} --controller https://{console} --ca-cert {} --token {} peers demo",
        cladnet_tests::bin_path("cladnet").display(),
        mesh.tls_dir().join("controller.crt").display(),
        cladnet_tests::MESH_ADMIN_TOKEN
    );
    println!(
        "      console:  https://{console}/console/#token={}&net=demo (self-signed: the browser asks to accept it)",
        cladnet_tests::MESH_ADMIN_TOKEN
    );
    println!("      logs:     {}", mesh.log_dir().display());
    if once {
        println!("      --once: stopping now");
    } else {
        println!("      Ctrl-C stops the demo and removes everything it created.");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    }
    drop(mesh);
    println!("cleaned up.");
}

/// Makes the controller's port reachable from this machine: binds 127.0.0.1:8053 (else a free
/// loopback port) here, in the machine's namespace, and hands the listening socket as stdin to
/// a copy of this program started in the controller's namespace (`nsenter --net`), which
/// accepts on it and connects to the controller on its own loopback. A socket stays in the
/// namespace it was made in, so no interface of the machine is touched, no unsafe `setns` is
/// needed, and the forwarder dies with the namespace. Checks the console answers through it.
fn forward_console(mesh: &Mesh) -> (Process, SocketAddr) {
    let listener = TcpListener::bind(("127.0.0.1", CONTROLLER_PORT))
        .or_else(|_| TcpListener::bind("127.0.0.1:0"))
        .expect("a loopback port for the console");
    let addr = listener.local_addr().expect("the console's address");
    let me = std::env::current_exe().expect("the demo's path");
    let mut cmd = mesh
        .topo
        .host("ctl")
        .command(me.to_str().expect("a UTF-8 path"));
    cmd.arg(FORWARD)
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::null());
    let forwarder = Process::spawn(&mut cmd).expect("start the console forwarder");
    let status = https_status(addr, "/console/", &mesh.tls_dir().join("controller.crt"));
    assert_eq!(
        status.as_deref(),
        Some("200"),
        "the console through {addr}: {status:?}"
    );
    (forwarder, addr)
}

/// The status code of `GET path` on `addr` over TLS, trusting the controller's own
/// certificate (it names 127.0.0.1), as a browser that accepted it would.
fn https_status(addr: SocketAddr, path: &str, ca: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg("--cacert")
        .arg(ca)
        .arg(format!("https://{addr}{path}"))
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The forwarder (in the controller's namespace): every connection accepted on the inherited
/// listener is joined to a new connection to the controller's port on this namespace's
/// loopback, one thread per direction.
fn forward() -> ExitCode {
    let listener = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => TcpListener::from(fd),
        Err(e) => {
            eprintln!("error: no listening socket on stdin: {e}");
            return ExitCode::FAILURE;
        }
    };
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        std::thread::spawn(
            move || match TcpStream::connect(("127.0.0.1", CONTROLLER_PORT)) {
                Ok(server) => pump(client, server),
                Err(e) => eprintln!("console forwarder: controller unreachable: {e}"),
            },
        );
    }
    ExitCode::SUCCESS
}

/// Copies both ways until each side has finished sending.
fn pump(client: TcpStream, server: TcpStream) {
    let (Ok(mut client_rx), Ok(mut server_tx)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_rx, &mut server_tx);
        let _ = server_tx.shutdown(Shutdown::Write);
    });
    let (mut server_rx, mut client_tx) = (server, client);
    let _ = std::io::copy(&mut server_rx, &mut client_tx);
    let _ = client_tx.shutdown(Shutdown::Write);
    let _ = up.join();
}
