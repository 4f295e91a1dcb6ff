//! Random event sequences (joins, leaves, moves, policy flips, controller outages, loss)
//! against the same invariants as the scenarios: every pair delivers, nothing is stale, and
//! the run is identical for the same seed.

use std::time::Duration;

use cladnet_core::policy::{Encryption, Policy, RuleType};
use cladnet_sim::{
    Sim, SimConfig,
    underlay::{Impairments, Nat},
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Join(Nat),
    Leave(usize),
    Move(usize),
    Policy(Policy),
    Outage(u64),
    Loss(u8),
    Wait(u64),
}

fn nat() -> impl Strategy<Value = Nat> {
    prop_oneof![
        Just(Nat::Public),
        Just(Nat::OneToOne),
        Just(Nat::PortTranslating)
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    let rule = prop_oneof![Just(RuleType::Basic), Just(RuleType::CostPrioritized)];
    let encryption = prop_oneof![
        Just(Encryption::Never),
        Just(Encryption::InterSite),
        Just(Encryption::Always)
    ];
    (rule, encryption).prop_map(|(rule, encryption)| Policy { rule, encryption })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        nat().prop_map(Op::Join),
        any::<usize>().prop_map(Op::Leave),
        any::<usize>().prop_map(Op::Move),
        policy().prop_map(Op::Policy),
        (1u64..20).prop_map(Op::Outage),
        (0u8..=15).prop_map(Op::Loss),
        (0u64..10).prop_map(Op::Wait),
    ]
}

/// Plays `ops` on 50 nodes (a quarter behind port-translating NATs), lets the network
/// settle; returns the digest, the pairs that did not deliver and the number of stale copies.
fn play(seed: u64, ops: &[Op]) -> (u64, Vec<(usize, usize)>, usize) {
    let mut config = SimConfig::new(seed, 50);
    config.nat = |i| match i % 4 {
        0 => Nat::PortTranslating,
        1 => Nat::Public,
        _ => Nat::OneToOne,
    };
    let mut sim = Sim::new(config);
    sim.run_for(Duration::from_secs(3));
    for op in ops {
        let alive = sim.alive();
        match *op {
            Op::Join(nat) => {
                sim.add_node(nat);
            }
            Op::Leave(k) if alive.len() > 2 => sim.remove_node(alive[k % alive.len()]),
            Op::Move(k) => {
                let roaming: Vec<usize> = alive
                    .into_iter()
                    .filter(|i| sim.nat(*i) != Nat::Public)
                    .collect();
                if !roaming.is_empty() {
                    sim.move_node(roaming[k % roaming.len()]);
                }
            }
            Op::Policy(p) => sim.set_policy(p),
            Op::Outage(s) if sim.controller().is_up() => {
                sim.controller_outage(Duration::from_secs(s));
            }
            Op::Loss(percent) => sim.set_impairments(Impairments {
                loss: f64::from(percent) / 100.0,
                duplicate: 0.01,
                reorder: 0.05,
            }),
            Op::Wait(s) => sim.run_for(Duration::from_secs(s)),
            Op::Leave(_) | Op::Outage(_) => {}
        }
        sim.run_for(Duration::from_millis(300));
    }
    // Outages end within 20 s of their start; agents retry every 1–1.5 s.
    sim.run_for(Duration::from_secs(22));
    let failed = sim.all_pairs_deliver(10);
    let stale = sim.stale();
    assert!(
        stale.is_empty(),
        "stale after {ops:?}: {:#?}",
        &stale[..stale.len().min(5)]
    );
    (sim.digest(), failed, stale.len())
}

/// 4 cases in CI (each runs 50 nodes twice); `PROPTEST_CASES` asks for more.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_event_sequences_keep_the_invariants(
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..6),
    ) {
        let (digest, failed, stale) = play(seed, &ops);
        prop_assert!(failed.is_empty(), "pairs never delivered: {:?}", failed);
        prop_assert_eq!(stale, 0);
        prop_assert_eq!(play(seed, &ops).0, digest, "same seed, same run");
    }
}
