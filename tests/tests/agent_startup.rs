//! Agents started at the same instant: every SEALED pair answers a ping within one second of
//! all of them showing `up` (issue 10, part 2).
//!
//! Both ends of a new SEALED link start a WireGuard handshake the moment they install each
//! other, so their initiations cross on the wire. Unless either handshake yields a usable
//! session, the pair stays dark until a retransmission 5 s later. The test restarts all agents
//! together round after round, with default settings, and pings every ordered pair at once as
//! soon as the controller lists them all `up`.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use cladnet_tests::{Mesh, Nat, SiteLabels, require_netns, site, standard_clouds};

const ROUNDS: usize = 20;
const UP: Duration = Duration::from_secs(30);
/// The time every pair gets for its first answer.
const ANSWER_WITHIN: &str = "1";

/// The agents, one per cloud: a1 behind aws's masquerading NAT, the others behind 1:1 NATs.
/// (Two hosts behind one masquerading NAT would need the NAT to hairpin, which the default
/// latency-prioritized rule relies on and the test clouds do not do: another matter.)
const AGENTS: [(&str, SiteLabels<'static>); 5] = [
    ("a1", site("aws", "vpc-a")),
    ("g1", site("gcp", "vpc-g")),
    ("z1", site("azure", "vpc-z")),
    ("o1", site("oci", "vpc-o")),
    ("i1", site("ibm", "vpc-i")),
];

/// Whether the controller lists every agent in `state`.
fn all_in_state(mesh: &Mesh, state: &str) -> bool {
    let peers = mesh.peers();
    AGENTS.iter().all(|(host, _)| {
        peers
            .iter()
            .any(|p| p["hostName"].as_str() == Some(host) && p["state"].as_str() == Some(state))
    })
}

#[test]
fn sealed_pairs_answer_within_a_second_of_a_simultaneous_start() {
    require_netns!();
    let topo = standard_clouds(&["a1"])
        .cloud("oci", "10.1.0.0/24", Nat::OneToOne)
        .host("oci", "o1")
        .cloud("ibm", "10.2.0.0/24", Nat::OneToOne)
        .host("ibm", "i1")
        .build()
        .expect("topology");
    let mut mesh = Mesh::start(topo, "ctl", "10.83.0.0/24", &["--encryption", "always"]);
    let hosts: Vec<&str> = AGENTS.iter().map(|(h, _)| *h).collect();
    let started = Instant::now();
    let mut failures = Vec::new();
    let rounds = ROUNDS;
    for round in 1..=rounds {
        // All at once, with default settings (no shortened probe interval).
        for (host, labels) in AGENTS {
            mesh.start_agent(host, labels, &[]);
        }
        mesh.wait("every agent up", UP, |m| all_in_state(m, "up"));
        let up_at = Instant::now();
        let up_wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // Every ordered pair at once: pings 200 ms apart, stopping after one second; success
        // means at least one answer within that second.
        let pings: Vec<(String, String, Child)> = hosts
            .iter()
            .flat_map(|from| hosts.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| from != to)
            .map(|(from, to)| {
                let dst = mesh.overlay_ip(to).to_string();
                let child = mesh
                    .topo
                    .host(from)
                    .command("ping")
                    .args(["-n", "-i", "0.2", "-w", ANSWER_WITHIN, &dst])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("ping");
                (from.to_owned(), to.to_owned(), child)
            })
            .collect();
        let (mut answered, mut latest_first) = (0, 0_u32);
        let total = pings.len();
        for (from, to, child) in pings {
            let out = child.wait_with_output().expect("ping output");
            let text = String::from_utf8_lossy(&out.stdout);
            // The sequence number of the first answer tells which 200 ms slot it came in.
            let first: Option<u32> = text
                .lines()
                .filter(|l| l.contains(" bytes from "))
                .find_map(|l| {
                    l.split("icmp_seq=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                });
            match first {
                Some(seq) => {
                    answered += 1;
                    latest_first = latest_first.max(seq);
                }
                None => failures.push(format!(
                    "round {round}: {from} -> {to} unanswered ({}): {} {}",
                    out.status,
                    text.lines().last().unwrap_or_default(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            }
        }
        eprintln!(
            "round {round}: {answered}/{total} pairs answered within {ANSWER_WITHIN} s of all \
             up at {}.{:03} (latest first answer: echo #{latest_first}, 200 ms apart; done {:.2} s \
             after up)",
            up_wall.as_secs() % 86_400,
            up_wall.subsec_millis(),
            up_at.elapsed().as_secs_f64()
        );
        if round < rounds {
            mesh.signal_agents(&hosts, "TERM");
            mesh.wait("every agent released", UP, |m| all_in_state(m, "released"));
        }
    }
    eprintln!(
        "{rounds} rounds in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} pings unanswered within {ANSWER_WITHIN} s:\n{}\n{}",
        failures.len(),
        rounds * hosts.len() * (hosts.len() - 1),
        failures.join("\n"),
        mesh.logs()
    );
}
