//! The stale-table bounce of issue 12, replayed: in the old design a port the router learnt
//! from a peer's packets went out as an event, and the daemon patched the kernel's copy of the
//! peer directly, skipping its own peer table, which was then stale. Pings still got through
//! (the router had the port), so only a check of every copy finds it. The same network with
//! the Node design, whose engines only apply the Node's commands, has no stale copy.

use std::time::Duration;

use cladnet_sim::{Design, Sim, SimConfig, check::Stale, underlay::Nat};

/// 50 nodes, a third behind port-translating NATs (their peers learn their ports).
fn run(design: Design) -> (Vec<(usize, usize)>, Vec<Stale>, usize) {
    let mut config = SimConfig::new(12, 50);
    config.nat = |i| {
        if i % 3 == 0 {
            Nat::PortTranslating
        } else {
            Nat::OneToOne
        }
    };
    config.design = design;
    let mut sim = Sim::new(config);
    sim.run_for(Duration::from_secs(3));
    let failed = sim.all_pairs_deliver(10);
    (failed, sim.stale(), sim.learnt_endpoints())
}

#[test]
fn old_design_leaves_the_daemon_table_stale_and_the_check_catches_it() {
    let (failed, stale, learnt) = run(Design::Legacy);
    assert!(learnt > 0, "the scenario learns endpoints");
    assert!(
        failed.is_empty(),
        "the router path still delivers: {failed:?}"
    );
    assert!(
        !stale.is_empty(),
        "the staleness check must catch the bounce"
    );
    // Exactly the bug: the daemon's table lacks the learnt port; the kernel copy has it.
    assert!(
        stale.iter().all(|s| s.copy == "daemon table vs node"),
        "{:#?}",
        &stale[..3]
    );
    assert_eq!(stale.len(), learnt, "one stale entry per learnt endpoint");
}

#[test]
fn node_design_has_no_stale_copy_in_the_same_network() {
    let (failed, stale, learnt) = run(Design::Node);
    assert!(learnt > 0);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(stale.is_empty(), "{stale:#?}");
}
