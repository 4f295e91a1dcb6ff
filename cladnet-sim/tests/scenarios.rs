//! The simulator's scenarios. Each is seeded, runs twice and must give the same digest, and
//! checks that every pair of running nodes delivers and that no copy of any fact is stale.

use std::time::Duration;

use cladnet_core::policy::{Encryption, LinkMode, Policy, RuleType};
use cladnet_sim::{
    PLAIN, Sim, SimConfig,
    underlay::{Impairments, Nat},
};

const NODES: usize = 50;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Every kind of NAT: 1:1, public, port-translating, 1:1.
fn every_nat_kind(i: usize) -> Nat {
    match i % 4 {
        0 => Nat::OneToOne,
        1 => Nat::Public,
        2 => Nat::PortTranslating,
        _ => Nat::OneToOne,
    }
}

/// 20 nodes behind every NAT kind get new public addresses in the same instant; then every
/// pair must deliver again.
fn twenty_roam_at_once(sim: &mut Sim) {
    let roaming: Vec<usize> = (0..NODES).filter(|i| i % 4 != 1).take(20).collect();
    for i in roaming {
        sim.move_node(i);
    }
    converged(sim, "after 20 nodes moved at once");
}

/// Lets the network settle, then asserts every pair delivers and nothing is stale.
fn converged(sim: &mut Sim, what: &str) {
    converged_within(sim, what, 10);
}

/// The same, sending each pair's packet up to `tries` times a second apart.
fn converged_within(sim: &mut Sim, what: &str, tries: u32) {
    sim.run_for(secs(3));
    let failed = sim.all_pairs_deliver(tries);
    assert!(
        failed.is_empty(),
        "{what}: {} pairs never delivered, e.g. {:?}; drops {:?}",
        failed.len(),
        &failed[..failed.len().min(5)],
        sim.drops()
    );
    let stale = sim.stale();
    assert!(
        stale.is_empty(),
        "{what}: stale: {:#?}",
        &stale[..stale.len().min(5)]
    );
}

/// The seed: the scenario's own, or `CLADNET_SIM_SEED` to replay another.
fn seed(default: u64) -> u64 {
    std::env::var("CLADNET_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A simulation of `config`; with `CLADNET_SIM_LOG` set it keeps a text log of every step.
fn start(config: SimConfig) -> Sim {
    let mut sim = Sim::new(config);
    if std::env::var_os("CLADNET_SIM_LOG").is_some() {
        sim.keep_log();
    }
    sim
}

/// Runs `scenario` twice with the seed and checks both runs are identical (with
/// `CLADNET_SIM_LOG` set, a difference is shown as the first step where the runs part).
fn twice(default_seed: u64, scenario: impl Fn(u64) -> Sim) {
    let seed = seed(default_seed);
    let a = scenario(seed);
    let b = scenario(seed);
    let parted = a.log().iter().zip(b.log()).find(|(x, y)| x != y);
    assert_eq!(
        (a.steps(), a.digest()),
        (b.steps(), b.digest()),
        "seed {seed}: the runs differ; first differing step: {parted:?}"
    );
}

#[test]
fn another_seed_is_another_run() {
    let run = |seed| {
        let mut sim = Sim::new(SimConfig::new(seed, 8));
        sim.run_for(secs(5));
        sim.digest()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2), "the digest depends on the seed");
}

#[test]
fn full_mesh_converges_from_a_common_start() {
    twice(1, |seed| {
        let mut sim = start(SimConfig::new(seed, NODES));
        converged(&mut sim, "start");
        sim
    });
}

#[test]
fn one_node_roams() {
    twice(2, |seed| {
        let mut sim = start(SimConfig::new(seed, NODES));
        converged(&mut sim, "start");
        let before = sim.controller().records()["node-003"].view.public;
        sim.move_node(3);
        converged(&mut sim, "after node 3 moved");
        assert_ne!(sim.controller().records()["node-003"].view.public, before);
        sim
    });
}

#[test]
fn many_nodes_roam_at_once() {
    twice(3, |seed| {
        let mut config = SimConfig::new(seed, NODES);
        config.nat = every_nat_kind;
        let mut sim = start(config);
        converged(&mut sim, "start");
        twenty_roam_at_once(&mut sim);
        sim
    });
}

#[test]
fn controller_outage_and_resync() {
    twice(4, |seed| {
        let mut sim = start(SimConfig::new(seed, NODES));
        converged(&mut sim, "start");
        sim.controller_outage(secs(20));
        sim.run_for(secs(2));
        // While it is down: one node is deleted (the store changes, no stream carries it),
        // one roams (its report is refused until the controller is back).
        sim.remove_node(7);
        sim.move_node(12);
        sim.run_for(secs(5));
        assert!(
            !sim.stale().is_empty(),
            "while down, the nodes still hold node 7 and node 12's old endpoint"
        );
        sim.run_for(secs(15));
        converged(&mut sim, "after resync");
        for i in sim.alive() {
            assert!(sim.node(i).table().installed().get("node-007").is_none());
        }
        sim
    });
}

#[test]
fn policy_flips_between_plain_and_sealed() {
    twice(5, |seed| {
        let mut sim = start(SimConfig::new(seed, NODES));
        converged(&mut sim, "start");
        sim.set_policy(SEALED);
        // Every pair goes through the Nodes' WireGuard sessions, nothing stale.
        converged(&mut sim, "all SEALED");
        for i in sim.alive() {
            let installed = sim.node(i).table().installed();
            assert!(installed.values().all(|p| p.mode == LinkMode::Sealed));
        }
        sim.set_policy(PLAIN);
        converged(&mut sim, "back to PLAIN");
        // Inside a site PLAIN on private addresses, between sites SEALED.
        sim.set_policy(MIXED);
        converged(
            &mut sim,
            "inter-site SEALED, intra-site PLAIN on private endpoints",
        );
        sim.set_policy(PLAIN);
        converged(&mut sim, "PLAIN again");
        sim
    });
}

#[test]
fn removed_and_released_peers_are_withdrawn() {
    twice(7, |seed| {
        let mut sim = start(SimConfig::new(seed, NODES));
        converged(&mut sim, "start");
        for i in [4, 9, 30, 31, 49] {
            sim.remove_node(i);
        }
        converged(&mut sim, "after 5 removals");
        // Released: the record stays, nobody routes to it any more.
        sim.release_node(20);
        converged(&mut sim, "after a release");
        assert!(sim.controller().records().contains_key("node-020"));
        for i in sim.alive() {
            assert!(sim.node(i).table().installed().get("node-020").is_none());
            assert!(sim.node(i).table().installed().get("node-030").is_none());
        }
        sim
    });
}

#[test]
fn endpoints_are_learnt_behind_port_translating_nats() {
    twice(8, |seed| {
        let mut config = SimConfig::new(seed, NODES);
        config.nat = |i| match i % 3 {
            0 => Nat::PortTranslating,
            1 => Nat::Public,
            _ => Nat::OneToOne,
        };
        let mut sim = start(config);
        converged(&mut sim, "start");
        // A third of the nodes are seen by each peer on a port the reflector never saw.
        let learnt = sim.learnt_endpoints();
        assert!(learnt >= 17 * 49, "{learnt} learnt endpoints");
        sim.move_node(0);
        converged(&mut sim, "after a port-translated node moved");
        sim
    });
}

#[test]
fn ten_percent_loss_with_duplication_and_reordering() {
    twice(9, |seed| {
        let mut config = SimConfig::new(seed, NODES);
        config.impairments = Impairments {
            loss: 0.10,
            duplicate: 0.02,
            reorder: 0.10,
        };
        let mut sim = start(config);
        converged(&mut sim, "start under loss");
        sim.move_node(5);
        sim.controller_outage(secs(5));
        sim.run_for(secs(10));
        converged(&mut sim, "after a move and an outage under loss");
        let stats = sim.underlay_stats();
        assert!(
            stats.lost > 1000 && stats.duplicated > 100 && stats.reordered > 1000,
            "{stats:?}"
        );
        sim
    });
}

/// Every link SEALED.
const SEALED: Policy = Policy {
    rule: RuleType::Basic,
    encryption: Encryption::Always,
};

/// Inside a site PLAIN on private addresses, between sites SEALED.
const MIXED: Policy = Policy {
    rule: RuleType::CostPrioritized,
    encryption: Encryption::InterSite,
};

/// Every pair of running nodes is SEALED (`all`), or some are and some are not.
fn assert_sealed(sim: &Sim, all: bool) {
    let up = sim.alive().len();
    let pairs = up * (up - 1);
    let sealed = sim.sealed_pairs();
    if all {
        assert_eq!(sealed, pairs, "every pair SEALED");
    } else {
        assert!(
            sealed > 0 && sealed < pairs,
            "{sealed} of {pairs} pairs SEALED"
        );
    }
}

/// 50 nodes started at the same instant, every link SEALED: every pair's first packet waits
/// for a handshake inside the Nodes (both ends initiating at once for most pairs), and all
/// arrive.
#[test]
fn sealed_full_mesh_converges_from_a_common_start() {
    twice(11, |seed| {
        let mut config = SimConfig::new(seed, NODES);
        config.policy = SEALED;
        let mut sim = start(config);
        converged(&mut sim, "start, all SEALED");
        assert_sealed(&sim, true);
        sim
    });
}

/// Mixed links, then nodes of every NAT kind roam at once: the SEALED peers follow them by
/// WireGuard roaming (and the controller's report), the PLAIN ones by the controller.
#[test]
fn mixed_links_survive_many_nodes_roaming_at_once() {
    twice(12, |seed| {
        let mut config = SimConfig::new(seed, NODES);
        config.policy = MIXED;
        config.nat = every_nat_kind;
        let mut sim = start(config);
        converged(&mut sim, "start, mixed");
        assert_sealed(&sim, false);
        sim.move_node(3);
        converged(&mut sim, "after node 3 moved");
        twenty_roam_at_once(&mut sim);
        sim
    });
}

/// 10 % loss with duplication and reordering, every link SEALED: lost handshake messages
/// are retried on WireGuard's timers, and a move and an outage under loss still converge.
/// A handshake needs three datagrams (initiation, response, first data), so about one in
/// four fails at 10 % loss and is retried `REKEY_TIMEOUT` (5 s, plus jitter) later: with
/// 2450 pairs, some need several retries, and each pair gets 40 s instead of 10.
#[test]
fn sealed_links_under_ten_percent_loss() {
    twice(13, |seed| {
        let mut config = SimConfig::new(seed, NODES);
        config.policy = SEALED;
        config.impairments = Impairments {
            loss: 0.10,
            duplicate: 0.02,
            reorder: 0.10,
        };
        let mut sim = start(config);
        converged_within(&mut sim, "start under loss, all SEALED", 40);
        assert_sealed(&sim, true);
        sim.move_node(5);
        sim.controller_outage(secs(5));
        sim.run_for(secs(10));
        converged_within(&mut sim, "after a move and an outage under loss", 40);
        sim.set_policy(MIXED);
        converged_within(&mut sim, "mixed under loss", 40);
        assert_sealed(&sim, false);
        sim
    });
}
