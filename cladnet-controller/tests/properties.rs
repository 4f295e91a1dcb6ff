//! Property tests for overlay IP allocation and the address-space recommender, through the
//! public API only.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use cladnet_controller::{
    Ipv4Net,
    ipam::{AddressKind, Allocation, Ipam, IpamError, NodeId, Pool},
    recommend::{
        CANDIDATES_PER_RANGE, MAX_HOSTS, PREFERRED_PREFIX_LEN, PRIVATE_RANGES, RecommendError,
        Recommendation, recommend, recommend_nets, required_prefix_len,
    },
};
use proptest::prelude::*;

// ---------------------------------------------------------------- IPAM

fn pool_strategy() -> impl Strategy<Value = Pool> {
    (any::<u32>(), 23u8..=29).prop_map(|(base, prefix)| {
        let cidr = Ipv4Net::new(Ipv4Addr::from(base), prefix).unwrap().trunc();
        Pool::new(cidr).unwrap()
    })
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Allocate(u8),
    Release(u8),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..40).prop_map(Op::Allocate),
        1 => (0u8..40).prop_map(Op::Release),
    ]
}

fn node(n: u8) -> NodeId {
    NodeId::new(format!("node-{n}"))
}

/// The reference model's choice: the lowest assignable address not held.
fn model_lowest_free(pool: &Pool, held: &BTreeMap<u8, Ipv4Addr>) -> Option<Ipv4Addr> {
    let used: BTreeSet<Ipv4Addr> = held.values().copied().collect();
    pool.cidr()
        .hosts()
        .find(|a| pool.is_assignable(*a) && !used.contains(a))
}

proptest! {
    #[test]
    fn ipam_matches_model_and_keeps_invariants(
        pool in pool_strategy(),
        ops in prop::collection::vec(op_strategy(), 0..200),
    ) {
        let mut ipam = Ipam::new(pool);
        let mut model: BTreeMap<u8, Ipv4Addr> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Allocate(n) => {
                    let result = ipam.allocate(&node(n));
                    match model.get(&n) {
                        Some(&held) => prop_assert_eq!(result, Ok(Allocation::Existing(held))),
                        None => match model_lowest_free(&pool, &model) {
                            Some(expected) => {
                                prop_assert_eq!(result, Ok(Allocation::New(expected)));
                                model.insert(n, expected);
                            }
                            None => {
                                prop_assert_eq!(model.len(), pool.capacity() as usize);
                                prop_assert_eq!(
                                    result,
                                    Err(IpamError::Exhausted {
                                        cidr: pool.cidr(),
                                        capacity: pool.capacity()
                                    })
                                );
                            }
                        },
                    }
                }
                Op::Release(n) => {
                    prop_assert_eq!(ipam.release(&node(n)), model.remove(&n));
                }
            }
            // Invariants: every held address is assignable (never network, gateway, broadcast or
            // outside the CIDR) and held by exactly one node.
            let mut seen = BTreeSet::new();
            for (holder, addr) in ipam.iter() {
                prop_assert_eq!(pool.classify(addr), AddressKind::Assignable);
                prop_assert!(pool.cidr().contains(&addr));
                prop_assert!(addr != pool.cidr().network() && addr != pool.cidr().broadcast());
                prop_assert!(addr != pool.gateway());
                prop_assert!(seen.insert(addr), "duplicate {}", addr);
                prop_assert_eq!(ipam.get(holder), Some(addr));
            }
            prop_assert_eq!(ipam.len(), model.len());
            prop_assert_eq!(ipam.available() as usize, pool.capacity() as usize - model.len());
        }
        // A controller that reads the same snapshot rebuilds the same table.
        let rebuilt = Ipam::from_snapshot(pool, model.iter().map(|(&n, &a)| (node(n), a)));
        prop_assert_eq!(rebuilt, Ok(ipam));
    }

    #[test]
    fn ipam_fills_every_assignable_address_then_is_exhausted(pool in pool_strategy()) {
        let mut ipam = Ipam::new(pool);
        let capacity = pool.capacity();
        let mut got = BTreeSet::new();
        for i in 0..capacity {
            let addr = ipam.allocate(&NodeId::new(format!("n{i}"))).unwrap();
            prop_assert!(addr.is_new());
            prop_assert!(got.insert(addr.addr()));
        }
        let all: BTreeSet<Ipv4Addr> =
            pool.cidr().hosts().filter(|a| pool.is_assignable(*a)).collect();
        prop_assert_eq!(all.len(), capacity as usize);
        prop_assert_eq!(&got, &all);
        prop_assert!(
            matches!(ipam.allocate(&NodeId::from("one-too-many")), Err(IpamError::Exhausted { .. })),
            "expected Exhausted"
        );
        // Stability still holds when full.
        prop_assert_eq!(
            ipam.allocate(&NodeId::from("n0")).map(Allocation::addr),
            Ok(pool.first_assignable())
        );
    }
}

// ---------------------------------------------------------------- recommender

/// Input CIDRs biased towards the private ranges, with host bits and a wide range of sizes.
fn input_cidr() -> impl Strategy<Value = Ipv4Net> {
    let within = |range: Ipv4Net| {
        let base = u32::from(range.network());
        let mask = !u32::from(range.netmask());
        (any::<u32>(), range.prefix_len()..=32).prop_map(move |(bits, prefix)| {
            Ipv4Net::new(Ipv4Addr::from(base | (bits & mask)), prefix).unwrap()
        })
    };
    prop_oneof![
        3 => within(PRIVATE_RANGES[0]),
        3 => within(PRIVATE_RANGES[1]),
        3 => within(PRIVATE_RANGES[2]),
        // Small subnets packed at the bottom of a range, where candidates are looked for first.
        2 => (0usize..3, 0u32..64, 20u8..=30).prop_map(|(r, i, prefix)| {
            let base = u32::from(PRIVATE_RANGES[r].network());
            Ipv4Net::new(Ipv4Addr::from(base + i * 256), prefix).unwrap()
        }),
        1 => Just(PRIVATE_RANGES[0]),
        1 => Just(PRIVATE_RANGES[1]),
        1 => Just(PRIVATE_RANGES[2]),
        1 => (any::<u32>(), 0u8..=32)
            .prop_map(|(addr, prefix)| Ipv4Net::new(Ipv4Addr::from(addr), prefix).unwrap()),
    ]
}

fn hosts_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 1u32..=300,
        2 => 1u32..=100_000,
        1 => 1u32..=MAX_HOSTS + 10,
        1 => Just(0),
    ]
}

/// Inclusive `[start, end]` of a CIDR after clearing host bits, in u64.
fn span(net: Ipv4Net) -> (u64, u64) {
    let net = net.trunc();
    (
        u64::from(u32::from(net.network())),
        u64::from(u32::from(net.broadcast())),
    )
}

/// Oracle, independent of the recommender's merging: the first aligned `/prefix_len` block of
/// `range` starting at or after `from` that overlaps no input, scanning the raw inputs.
fn oracle_first_free(range: Ipv4Net, prefix_len: u8, inputs: &[Ipv4Net], from: u64) -> Option<u64> {
    if prefix_len < range.prefix_len() {
        return None;
    }
    let size = 1u64 << (32 - prefix_len);
    let (_, range_end) = span(range);
    let mut start = from.div_ceil(size) * size;
    while start + size - 1 <= range_end {
        let end = start + size - 1;
        match inputs
            .iter()
            .map(|&i| span(i))
            .find(|&(s, e)| s <= end && e >= start)
        {
            // Every aligned block starting at or before `e` overlaps this input.
            Some((_, e)) => start = (e + 1).div_ceil(size) * size,
            None => return Some(start),
        }
    }
    None
}

fn check_recommendation(
    inputs: &[Ipv4Net],
    hosts: u32,
    rec: &Recommendation,
) -> Result<(), TestCaseError> {
    let needed = required_prefix_len(hosts).unwrap();
    let prefix_len = rec.recommended.prefix_len();
    // Large enough: the block fits 2x hosts plus the reserved addresses.
    prop_assert!(prefix_len <= needed);
    prop_assert!(1u64 << (32 - prefix_len) >= 2 * u64::from(hosts) + 3);
    // At least a /24 unless no range had a free block of the preferred size.
    let preferred = needed.min(PREFERRED_PREFIX_LEN);
    prop_assert!(prefix_len >= preferred);
    if prefix_len > preferred {
        for range in PRIVATE_RANGES {
            let (start, _) = span(range);
            prop_assert_eq!(
                oracle_first_free(range, prefix_len - 1, inputs, start),
                None
            );
        }
    }
    let mut recommended_listed = false;
    for (range, list) in PRIVATE_RANGES.into_iter().zip(rec.candidates()) {
        prop_assert!(list.len() <= CANDIDATES_PER_RANGE);
        // The list is exactly the first K free aligned blocks of the range, in order.
        let (mut from, _) = span(range);
        for block in list {
            prop_assert!(range.contains(block), "{} outside {}", block, range);
            prop_assert_eq!(block.trunc(), *block, "{} not aligned", block);
            prop_assert_eq!(block.prefix_len(), prefix_len);
            for input in inputs {
                let (s, e) = span(*input);
                let (bs, be) = span(*block);
                prop_assert!(e < bs || s > be, "{} overlaps input {}", block, input);
            }
            let (block_start, block_end) = span(*block);
            prop_assert_eq!(
                oracle_first_free(range, prefix_len, inputs, from),
                Some(block_start)
            );
            from = block_end + 1;
            recommended_listed |= *block == rec.recommended;
        }
        if list.len() < CANDIDATES_PER_RANGE {
            prop_assert_eq!(oracle_first_free(range, prefix_len, inputs, from), None);
        }
    }
    prop_assert!(recommended_listed, "{} is in no list", rec.recommended);
    Ok(())
}

/// The CIDRs covering `range` except the aligned block `hole`: the sibling of each block on the
/// path from the range down to the hole.
fn complement(range: Ipv4Net, hole: Ipv4Net) -> Vec<Ipv4Net> {
    let hole_start = u32::from(hole.network());
    (range.prefix_len() + 1..=hole.prefix_len())
        .map(|prefix| {
            let on_path = Ipv4Net::new(Ipv4Addr::from(hole_start), prefix)
                .unwrap()
                .trunc();
            let sibling = u32::from(on_path.network()) ^ (1 << (32 - prefix));
            Ipv4Net::new(Ipv4Addr::from(sibling), prefix).unwrap()
        })
        .collect()
}

/// Nearly full private space: each range is either fully used or used except one random hole,
/// plus a few random inputs that may fill the holes. This drives the fallback to blocks smaller
/// than the preferred /24 and the no-free-space error.
fn nearly_full_inputs() -> impl Strategy<Value = Vec<Ipv4Net>> {
    let hole = prop::option::weighted(0.7, (any::<u32>(), 23u8..=30));
    (
        [hole.clone(), hole.clone(), hole],
        prop::collection::vec(input_cidr(), 0..4),
    )
        .prop_map(|(holes, extra)| {
            let mut inputs = extra;
            for (range, hole) in PRIVATE_RANGES.into_iter().zip(holes) {
                match hole {
                    None => inputs.push(range),
                    Some((bits, prefix)) => {
                        let mask = !u32::from(range.netmask());
                        let addr = u32::from(range.network()) | (bits & mask);
                        let hole = Ipv4Net::new(Ipv4Addr::from(addr), prefix).unwrap().trunc();
                        inputs.extend(complement(range, hole));
                    }
                }
            }
            inputs
        })
}

proptest! {
    // At least 512 cases; PROPTEST_CASES raises it for a longer soak.
    #![proptest_config(ProptestConfig {
        cases: ProptestConfig::default().cases.max(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn recommendation_is_free_aligned_large_enough_and_complete(
        inputs in prop_oneof![
            3 => prop::collection::vec(input_cidr(), 0..24),
            1 => nearly_full_inputs(),
        ],
        hosts in hosts_strategy(),
    ) {
        match recommend_nets(&inputs, hosts) {
            Ok(rec) => check_recommendation(&inputs, hosts, &rec)?,
            Err(RecommendError::NoHosts) => prop_assert_eq!(hosts, 0),
            Err(RecommendError::TooManyHosts { .. }) => prop_assert!(hosts > MAX_HOSTS),
            Err(RecommendError::NoFreeSpace { prefix_len, .. }) => {
                prop_assert_eq!(Ok(prefix_len), required_prefix_len(hosts));
                for range in PRIVATE_RANGES {
                    let (start, _) = span(range);
                    prop_assert_eq!(oracle_first_free(range, prefix_len, &inputs, start), None);
                }
            }
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }

    #[test]
    fn recommendation_ignores_input_order_and_duplicates(
        inputs in prop::collection::vec(input_cidr(), 0..12),
        hosts in 1u32..=5000,
    ) {
        let mut shuffled: Vec<Ipv4Net> = inputs.iter().rev().copied().collect();
        shuffled.extend(inputs.iter().take(3));
        // Errors may differ only in the input count they report.
        let (a, b) = (recommend_nets(&inputs, hosts), recommend_nets(&shuffled, hosts));
        prop_assert_eq!(a.is_ok(), b.is_ok());
        prop_assert_eq!(a.ok(), b.ok());
    }

    #[test]
    fn string_and_typed_inputs_agree(
        inputs in prop::collection::vec(input_cidr(), 0..12),
        hosts in 1u32..=5000,
    ) {
        let strings: Vec<String> = inputs.iter().map(ToString::to_string).collect();
        prop_assert_eq!(recommend(&strings, hosts), recommend_nets(&inputs, hosts));
    }
}
