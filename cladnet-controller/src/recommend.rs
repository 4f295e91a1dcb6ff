//! The address-space recommender: a private IPv4 block for a new overlay network that overlaps
//! none of the hosts' own CIDRs.
//!
//! This is cb-network's "available IPv4 private address spaces" recommender with the same JSON
//! response ([`Recommendation`]), rewritten to be overlap-correct.
//!
//! # Algorithm
//!
//! 1. **Inputs.** Every input CIDR is normalized (host bits cleared, `10.0.0.7/24` counts as
//!    `10.0.0.0/24`); the set is merged into disjoint intervals. Duplicates, overlaps and
//!    non-private CIDRs are allowed (non-private ones simply never collide with a candidate).
//! 2. **Size.** A network for `hosts` peers needs [`HEADROOM`] × `hosts` assignable addresses plus
//!    the [`RESERVED_ADDRESSES`] of [IPAM](crate::ipam), rounded up to a power of two: that is the
//!    smallest block that fits, see [`required_prefix_len`]. The recommender prefers a block of at
//!    least a /[`PREFERRED_PREFIX_LEN`] (253 peers) so a small network can grow without
//!    renumbering; only if no range has a free block of that size does it fall back to smaller
//!    blocks, never below the smallest that fits.
//! 3. **Candidates.** In each private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, see
//!    [`PRIVATE_RANGES`]) the candidates are the first [`CANDIDATES_PER_RANGE`] aligned blocks of
//!    the chosen size, in address order, that overlap no input. A range with no free block has an
//!    empty list.
//! 4. **Preference.** The recommendation is the first candidate of the range *least used by the
//!    inputs* (the smallest share of the range's addresses covered), ties broken in the order
//!    10/8, 172.16/12, 192.168/16. Clouds keep adding subnets near the ones they already use, and
//!    a range no host uses is the one least likely to collide later. On a tie the largest range
//!    comes first: it leaves the most room, and 192.168/16 is the range most crowded by LANs, VPN
//!    clients, Docker and Calico defaults, which the inputs do not show.
//!
//! Everything is deterministic: the same inputs (in any order) give the same answer.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::ipam::RESERVED_ADDRESSES;

/// The three private IPv4 ranges of RFC 1918, in tie-break preference order.
pub const PRIVATE_RANGES: [Ipv4Net; 3] = [
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
];

/// How many candidate blocks each range's list holds at most.
pub const CANDIDATES_PER_RANGE: usize = 8;

/// Growth headroom: a recommended block holds at least this many times the requested hosts
/// (after the reserved addresses).
pub const HEADROOM: u32 = 2;

/// Preferred longest prefix: the recommender offers at least a /24 when one is free, even for a
/// handful of hosts.
pub const PREFERRED_PREFIX_LEN: u8 = 24;

/// The most hosts that fit with [`HEADROOM`] in the largest private block, 10.0.0.0/8.
pub const MAX_HOSTS: u32 = ((1 << 24) - RESERVED_ADDRESSES) / HEADROOM;

/// The recommender's answer, serialized with cb-network's JSON field names.
///
/// ```json
/// {
///   "recommendedIpv4PrivateAddressSpace": "172.16.0.0/24",
///   "addressSpace10s": ["10.0.1.0/24", "10.0.2.0/24"],
///   "addressSpace172s": ["172.16.0.0/24", "172.16.1.0/24"],
///   "addressSpace192s": ["192.168.0.0/24", "192.168.2.0/24"]
/// }
/// ```
///
/// All blocks have the same prefix length. Each list is in address order and holds at most
/// [`CANDIDATES_PER_RANGE`] blocks; `recommended` is the first block of one of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Recommendation {
    /// The recommended network CIDR.
    #[serde(rename = "recommendedIpv4PrivateAddressSpace")]
    pub recommended: Ipv4Net,
    /// Free blocks inside 10.0.0.0/8.
    #[serde(rename = "addressSpace10s")]
    pub address_spaces_10: Vec<Ipv4Net>,
    /// Free blocks inside 172.16.0.0/12.
    #[serde(rename = "addressSpace172s")]
    pub address_spaces_172: Vec<Ipv4Net>,
    /// Free blocks inside 192.168.0.0/16.
    #[serde(rename = "addressSpace192s")]
    pub address_spaces_192: Vec<Ipv4Net>,
}

impl Recommendation {
    /// The three candidate lists, in the order of [`PRIVATE_RANGES`].
    pub fn candidates(&self) -> [&[Ipv4Net]; 3] {
        [
            &self.address_spaces_10,
            &self.address_spaces_172,
            &self.address_spaces_192,
        ]
    }
}

/// Errors of the recommender. Each names the offending field (`hosts`, `cidrs[i]`) or says why no
/// block is free.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecommendError {
    /// `hosts` is zero.
    #[error("hosts: must be at least 1")]
    NoHosts,
    /// `hosts` cannot fit even in 10.0.0.0/8.
    #[error(
        "hosts: {hosts} hosts need {needed} addresses ({}x headroom plus {} reserved), more than \
         the largest private block 10.0.0.0/8 holds (at most {} hosts)",
        HEADROOM,
        RESERVED_ADDRESSES,
        MAX_HOSTS
    )]
    TooManyHosts {
        /// The requested host count.
        hosts: u32,
        /// Addresses it would need.
        needed: u64,
    },
    /// An input CIDR does not parse.
    #[error("cidrs[{index}]: {input:?} is not an IPv4 CIDR like 192.168.1.0/24: {reason}")]
    InvalidCidr {
        /// Position in the input list.
        index: usize,
        /// The string given.
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Every block large enough overlaps an input.
    #[error(
        "no free private address space for {hosts} hosts: every aligned /{prefix_len} block in \
         10.0.0.0/8, 172.16.0.0/12 and 192.168.0.0/16 overlaps one of the {inputs} input CIDRs"
    )]
    NoFreeSpace {
        /// The requested host count.
        hosts: u32,
        /// The smallest block that would fit them.
        prefix_len: u8,
        /// How many input CIDRs there were.
        inputs: usize,
    },
}

/// Parses input CIDR strings; host bits are allowed (they are cleared later).
///
/// # Errors
///
/// [`RecommendError::InvalidCidr`] naming the first string that is not an IPv4 CIDR.
pub fn parse_cidrs<S: AsRef<str>>(cidrs: &[S]) -> Result<Vec<Ipv4Net>, RecommendError> {
    cidrs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let input = input.as_ref();
            let trimmed = input.trim();
            trimmed.parse::<Ipv4Net>().map_err(|e| {
                let reason = if matches!(trimmed.parse::<IpNet>(), Ok(IpNet::V6(_))) {
                    "IPv6 is not supported".to_owned()
                } else if !trimmed.contains('/') {
                    "missing the /prefix length".to_owned()
                } else {
                    e.to_string()
                };
                RecommendError::InvalidCidr {
                    index,
                    input: input.to_owned(),
                    reason,
                }
            })
        })
        .collect()
}

/// The prefix length of the smallest block that fits `hosts` peers with [`HEADROOM`]:
/// `32 − ⌈log2(HEADROOM × hosts + RESERVED_ADDRESSES)⌉`.
///
/// # Errors
///
/// [`RecommendError::NoHosts`] for 0, [`RecommendError::TooManyHosts`] above [`MAX_HOSTS`].
pub fn required_prefix_len(hosts: u32) -> Result<u8, RecommendError> {
    if hosts == 0 {
        return Err(RecommendError::NoHosts);
    }
    let needed = u64::from(hosts) * u64::from(HEADROOM) + u64::from(RESERVED_ADDRESSES);
    if needed > 1 << 24 {
        return Err(RecommendError::TooManyHosts { hosts, needed });
    }
    // needed <= 2^24, so the exponent is at most 24 and the result at least 8.
    let bits = u8::try_from(needed.next_power_of_two().trailing_zeros()).unwrap_or(24);
    Ok(32 - bits)
}

/// Recommends a private address space for `hosts` peers whose hosts sit in `cidrs` (strings such
/// as `"192.168.1.0/24"`).
///
/// # Errors
///
/// See [`parse_cidrs`] and [`recommend_nets`].
pub fn recommend<S: AsRef<str>>(cidrs: &[S], hosts: u32) -> Result<Recommendation, RecommendError> {
    recommend_nets(&parse_cidrs(cidrs)?, hosts)
}

/// Recommends a private address space for `hosts` peers whose hosts sit in `cidrs`.
///
/// # Errors
///
/// [`RecommendError::NoHosts`] / [`RecommendError::TooManyHosts`] for a bad `hosts`,
/// [`RecommendError::NoFreeSpace`] if every block large enough overlaps an input.
pub fn recommend_nets(cidrs: &[Ipv4Net], hosts: u32) -> Result<Recommendation, RecommendError> {
    let needed = required_prefix_len(hosts)?;
    let used = merge(cidrs);
    let order = preference_order(&used);
    for prefix_len in needed.min(PREFERRED_PREFIX_LEN)..=needed {
        let lists =
            PRIVATE_RANGES.map(|range| free_blocks(range, prefix_len, &used, CANDIDATES_PER_RANGE));
        if let Some(recommended) = order.iter().find_map(|&i| lists[i].first().copied()) {
            let [address_spaces_10, address_spaces_172, address_spaces_192] = lists;
            return Ok(Recommendation {
                recommended,
                address_spaces_10,
                address_spaces_172,
                address_spaces_192,
            });
        }
    }
    Err(RecommendError::NoFreeSpace {
        hosts,
        prefix_len: needed,
        inputs: cidrs.len(),
    })
}

/// An inclusive address interval, in u64 so `end + 1` never overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Interval {
    start: u64,
    end: u64,
}

impl Interval {
    fn of(net: Ipv4Net) -> Self {
        Self {
            start: u64::from(u32::from(net.network())),
            end: u64::from(u32::from(net.broadcast())),
        }
    }

    fn len(self) -> u64 {
        self.end - self.start + 1
    }

    fn intersection(self, other: Self) -> Option<Self> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start <= end).then_some(Self { start, end })
    }
}

/// Normalized inputs as sorted, disjoint, non-adjacent intervals.
fn merge(cidrs: &[Ipv4Net]) -> Vec<Interval> {
    let mut intervals: Vec<Interval> = cidrs.iter().map(|&net| Interval::of(net)).collect();
    intervals.sort_unstable();
    let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
    for next in intervals {
        match merged.last_mut() {
            Some(last) if next.start <= last.end + 1 => last.end = last.end.max(next.end),
            _ => merged.push(next),
        }
    }
    merged
}

/// Indices into [`PRIVATE_RANGES`], least used share first; the stable sort keeps the
/// 10 → 172.16 → 192.168 order on ties.
fn preference_order(used: &[Interval]) -> [usize; 3] {
    let ranges = PRIVATE_RANGES.map(Interval::of);
    let usage = ranges.map(|range| {
        used.iter()
            .filter_map(|&u| u.intersection(range))
            .map(Interval::len)
            .sum::<u64>()
    });
    let mut order = [0, 1, 2];
    // usage[a] / len[a] vs usage[b] / len[b]; the products stay below 2^48.
    order.sort_by(|&a, &b| {
        let lhs = usage[a] * ranges[b].len();
        let rhs = usage[b] * ranges[a].len();
        lhs.cmp(&rhs)
    });
    order
}

/// The first `limit` aligned `/prefix_len` blocks of `range`, in address order, that overlap no
/// interval of `used`.
fn free_blocks(range: Ipv4Net, prefix_len: u8, used: &[Interval], limit: usize) -> Vec<Ipv4Net> {
    let mut blocks = Vec::new();
    if prefix_len < range.prefix_len() {
        return blocks;
    }
    let size = 1u64 << (32 - prefix_len);
    let range = Interval::of(range);
    // The range's base is aligned to any block no larger than the range.
    let mut start = range.start;
    let mut next_used = used.partition_point(|u| u.end < start);
    while blocks.len() < limit && start + size - 1 <= range.end {
        let block = Interval {
            start,
            end: start + size - 1,
        };
        while next_used < used.len() && used[next_used].end < block.start {
            next_used += 1;
        }
        match used.get(next_used) {
            Some(u) if u.start <= block.end => {
                // Skip to the first aligned block after this used interval.
                start = (u.end + 1).div_ceil(size) * size;
            }
            _ => {
                blocks.push(block_net(block.start, prefix_len));
                start += size;
            }
        }
    }
    blocks
}

fn block_net(start: u64, prefix_len: u8) -> Ipv4Net {
    // `start` lies inside a private range, so it fits in u32.
    let addr = Ipv4Addr::from(u32::try_from(start).unwrap_or(u32::MAX));
    Ipv4Net::new_assert(addr, prefix_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Ipv4Net> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
        a.contains(&b.network()) || b.contains(&a.network())
    }

    /// Checks the answer against the inputs: every block is free, aligned, inside its range.
    fn assert_sound(inputs: &[&str], rec: &Recommendation) {
        let inputs: Vec<Ipv4Net> = nets(inputs).iter().map(Ipv4Net::trunc).collect();
        for (range, list) in PRIVATE_RANGES.iter().zip(rec.candidates()) {
            for block in list {
                assert!(range.contains(block), "{block} outside {range}");
                assert_eq!(block.trunc(), *block, "{block} not aligned");
                assert_eq!(block.prefix_len(), rec.recommended.prefix_len());
                for input in &inputs {
                    assert!(!overlaps(*block, *input), "{block} overlaps input {input}");
                }
            }
        }
        assert!(
            rec.candidates()
                .iter()
                .any(|l| l.first() == Some(&rec.recommended))
        );
    }

    #[test]
    fn sizing_rule() {
        assert_eq!(required_prefix_len(0), Err(RecommendError::NoHosts));
        assert_eq!(required_prefix_len(1), Ok(29)); // 2 + 3 = 5 -> 8
        assert_eq!(required_prefix_len(2), Ok(29)); // 7 -> 8
        assert_eq!(required_prefix_len(3), Ok(28)); // 9 -> 16
        assert_eq!(required_prefix_len(126), Ok(24)); // 255 -> 256
        assert_eq!(required_prefix_len(127), Ok(23)); // 257 -> 512
        assert_eq!(required_prefix_len(1000), Ok(21));
        assert_eq!(required_prefix_len(MAX_HOSTS), Ok(8));
        assert_eq!(MAX_HOSTS, 8_388_606);
        let err = required_prefix_len(MAX_HOSTS + 1).unwrap_err();
        assert_eq!(
            err,
            RecommendError::TooManyHosts {
                hosts: 8_388_607,
                needed: 16_777_217
            }
        );
        assert!(
            err.to_string().starts_with("hosts: 8388607 hosts need"),
            "{err}"
        );
        assert!(matches!(
            required_prefix_len(u32::MAX),
            Err(RecommendError::TooManyHosts { .. })
        ));
    }

    #[test]
    fn zero_hosts_is_an_error_naming_the_field() {
        let err = recommend(&["10.0.0.0/24"], 0).unwrap_err();
        assert_eq!(err.to_string(), "hosts: must be at least 1");
    }

    #[test]
    fn invalid_cidrs_are_named_by_index() {
        let err = recommend(&["10.0.0.0/24", "10.0.0.300/24"], 3).unwrap_err();
        assert!(
            matches!(err, RecommendError::InvalidCidr { index: 1, .. }),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("cidrs[1]: \"10.0.0.300/24\""),
            "{err}"
        );
        let err = recommend(&["192.168.1.7"], 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cidrs[0]: \"192.168.1.7\" is not an IPv4 CIDR like 192.168.1.0/24: missing the \
             /prefix length"
        );
        let err = recommend(&["10.0.0.0/8", "fd00::/8"], 3).unwrap_err();
        assert!(err.to_string().ends_with("IPv6 is not supported"), "{err}");
        let err = recommend(&["10.0.0.0/33"], 3).unwrap_err();
        assert!(
            matches!(err, RecommendError::InvalidCidr { index: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn three_clouds_two_on_192_168_1_and_one_on_10_0_0() {
        let inputs = ["192.168.1.0/24", "192.168.1.0/24", "10.0.0.0/24"];
        let rec = recommend(&inputs, 3).unwrap();
        assert_sound(&inputs, &rec);
        // 172.16/12 is untouched, so it is preferred.
        assert_eq!(rec.recommended, net("172.16.0.0/24"));
        assert_eq!(
            rec.address_spaces_10,
            nets(&[
                "10.0.1.0/24",
                "10.0.2.0/24",
                "10.0.3.0/24",
                "10.0.4.0/24",
                "10.0.5.0/24",
                "10.0.6.0/24",
                "10.0.7.0/24",
                "10.0.8.0/24"
            ])
        );
        assert_eq!(rec.address_spaces_172.len(), CANDIDATES_PER_RANGE);
        assert_eq!(rec.address_spaces_172[7], net("172.16.7.0/24"));
        assert_eq!(
            rec.address_spaces_192[..3],
            nets(&["192.168.0.0/24", "192.168.2.0/24", "192.168.3.0/24"])
        );
    }

    #[test]
    fn json_uses_cb_network_field_names() {
        let rec = recommend(&["192.168.1.0/24", "10.0.0.0/24"], 3).unwrap();
        let json = serde_json::to_value(&rec).unwrap();
        let object = json.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "addressSpace10s",
                "addressSpace172s",
                "addressSpace192s",
                "recommendedIpv4PrivateAddressSpace"
            ]
        );
        assert_eq!(json["recommendedIpv4PrivateAddressSpace"], "172.16.0.0/24");
        assert_eq!(json["addressSpace10s"][0], "10.0.1.0/24");
        assert_eq!(json["addressSpace192s"][1], "192.168.2.0/24");
        let back: Recommendation = serde_json::from_value(json).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn aws_default_vpc_172_31() {
        let inputs = ["172.31.0.0/16", "172.31.16.0/20", "172.31.32.0/20"];
        let rec = recommend(&inputs, 10).unwrap();
        assert_sound(&inputs, &rec);
        // 10/8 and 192.168/16 are both unused: the tie goes to 10/8.
        assert_eq!(rec.recommended, net("10.0.0.0/24"));
        assert_eq!(rec.address_spaces_172[0], net("172.16.0.0/24"));
    }

    #[test]
    fn aws_azure_and_on_premises_192_168() {
        let inputs = ["172.31.0.0/16", "10.0.0.0/16", "192.168.0.0/16"];
        let rec = recommend(&inputs, 40).unwrap();
        assert_sound(&inputs, &rec);
        // 10/8 is 1/256 used, 172.16/12 1/16, 192.168/16 fully.
        assert_eq!(rec.recommended, net("10.1.0.0/24"));
        assert!(rec.address_spaces_192.is_empty());
        assert_eq!(rec.address_spaces_172[0], net("172.16.0.0/24"));
    }

    #[test]
    fn gcp_auto_mode_10_128_slash_9() {
        let inputs = [
            "10.128.0.0/9",
            "10.128.0.0/20",
            "10.132.0.0/20",
            "10.138.0.0/20",
        ];
        let rec = recommend(&inputs, 50).unwrap();
        assert_sound(&inputs, &rec);
        assert_eq!(rec.recommended, net("172.16.0.0/24"));
        // The lower half of 10/8 is free.
        assert_eq!(rec.address_spaces_10[0], net("10.0.0.0/24"));
        let with_aws = recommend(&["10.128.0.0/9", "172.31.0.0/16"], 50).unwrap();
        assert_eq!(with_aws.recommended, net("192.168.0.0/24"));
    }

    #[test]
    fn gcp_lower_half_of_10_leaves_the_upper_half() {
        let inputs = ["10.0.0.0/9", "172.16.0.0/12", "192.168.0.0/16"];
        let rec = recommend(&inputs, 100).unwrap();
        assert_sound(&inputs, &rec);
        assert_eq!(rec.recommended, net("10.128.0.0/24"));
    }

    #[test]
    fn inputs_covering_all_of_10_slash_8() {
        let inputs = ["10.0.0.0/8"];
        let rec = recommend(&inputs, 200).unwrap();
        assert_sound(&inputs, &rec);
        assert!(rec.address_spaces_10.is_empty());
        assert_eq!(rec.recommended, net("172.16.0.0/23"));
        // Many small subnets spread over 10/8 count by their union.
        let spread: Vec<String> = (0..=255).map(|i| format!("10.{i}.0.0/16")).collect();
        let rec = recommend(&spread, 200).unwrap();
        assert!(rec.address_spaces_10.is_empty());
        assert_eq!(rec.recommended, net("172.16.0.0/23"));
    }

    #[test]
    fn host_count_needing_all_of_10_slash_8() {
        let rec = recommend::<&str>(&[], MAX_HOSTS).unwrap();
        assert_eq!(rec.recommended, net("10.0.0.0/8"));
        assert_eq!(rec.address_spaces_10, [net("10.0.0.0/8")]);
        assert!(rec.address_spaces_172.is_empty());
        assert!(rec.address_spaces_192.is_empty());
        let err = recommend(&["10.255.255.255/32"], MAX_HOSTS).unwrap_err();
        assert_eq!(
            err,
            RecommendError::NoFreeSpace {
                hosts: MAX_HOSTS,
                prefix_len: 8,
                inputs: 1
            }
        );
        // A /9 fits only in 10/8, and both of its halves are touched here.
        let err = recommend(&["10.0.0.0/16", "10.128.0.0/16"], 3_000_000).unwrap_err();
        assert!(
            matches!(err, RecommendError::NoFreeSpace { prefix_len: 9, .. }),
            "{err}"
        );
        // A /12's worth fits in 172.16/12 when 10/8 is taken.
        let rec = recommend(&["10.0.0.0/8"], 500_000).unwrap();
        assert_eq!(rec.recommended, net("172.16.0.0/12"));
    }

    #[test]
    fn larger_networks_get_larger_aligned_blocks() {
        let inputs = ["192.168.1.0/24", "10.0.0.0/24"];
        let rec = recommend(&inputs, 1000).unwrap();
        assert_sound(&inputs, &rec);
        assert_eq!(rec.recommended, net("172.16.0.0/21"));
        assert_eq!(rec.address_spaces_10[0], net("10.0.8.0/21"));
        assert_eq!(rec.address_spaces_192[0], net("192.168.8.0/21"));
    }

    #[test]
    fn falls_back_to_a_smaller_block_only_when_no_slash_24_is_free() {
        // Everything private is used except 192.168.255.192/26.
        let inputs = [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/17",
            "192.168.128.0/18",
            "192.168.192.0/19",
            "192.168.224.0/20",
            "192.168.240.0/21",
            "192.168.248.0/22",
            "192.168.252.0/23",
            "192.168.254.0/24",
            "192.168.255.0/25",
            "192.168.255.128/26",
        ];
        let rec = recommend(&inputs, 10).unwrap();
        assert_sound(&inputs, &rec);
        assert_eq!(rec.recommended, net("192.168.255.192/26"));
        assert_eq!(rec.address_spaces_192, [net("192.168.255.192/26")]);
        assert_eq!(recommend(&inputs, 30).unwrap().recommended, rec.recommended);
        // 31 hosts need 65 addresses: a /25, which is not free.
        let err = recommend(&inputs, 31).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free private address space for 31 hosts: every aligned /25 block in 10.0.0.0/8, \
             172.16.0.0/12 and 192.168.0.0/16 overlaps one of the 12 input CIDRs"
        );
    }

    #[test]
    fn whole_ipv4_space_as_input_leaves_nothing() {
        let err = recommend(&["0.0.0.0/0"], 1).unwrap_err();
        assert!(
            matches!(err, RecommendError::NoFreeSpace { prefix_len: 29, .. }),
            "{err}"
        );
    }

    #[test]
    fn non_private_inputs_never_collide() {
        let inputs = [
            "8.8.8.0/24",
            "100.64.0.0/10",
            "172.32.0.0/16",
            "192.169.0.0/16",
        ];
        let rec = recommend(&inputs, 5).unwrap();
        assert_sound(&inputs, &rec);
        assert_eq!(rec.recommended, net("10.0.0.0/24"));
        assert_eq!(rec.address_spaces_172[0], net("172.16.0.0/24"));
        assert_eq!(rec.address_spaces_192[0], net("192.168.0.0/24"));
    }

    #[test]
    fn host_bits_are_normalized() {
        let inputs = ["10.0.0.77/24", "192.168.0.1/32", "172.16.3.9/16"];
        let rec = recommend(&inputs, 5).unwrap();
        assert_sound(&inputs, &rec);
        assert_eq!(rec.address_spaces_10[0], net("10.0.1.0/24"));
        assert_eq!(rec.address_spaces_172[0], net("172.17.0.0/24"));
        assert_eq!(rec.address_spaces_192[0], net("192.168.1.0/24"));
    }

    #[test]
    fn empty_input_recommends_the_first_slash_24_of_10() {
        let rec = recommend::<&str>(&[], 1).unwrap();
        assert_eq!(rec.recommended, net("10.0.0.0/24"));
        for (range, list) in PRIVATE_RANGES.iter().zip(rec.candidates()) {
            assert_eq!(list.len(), CANDIDATES_PER_RANGE);
            assert_eq!(list[0].network(), range.network());
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let a = [
            "192.168.1.0/24",
            "10.0.0.0/24",
            "172.31.0.0/16",
            "10.0.4.0/22",
        ];
        let mut b = a;
        b.reverse();
        assert_eq!(recommend(&a, 20).unwrap(), recommend(&b, 20).unwrap());
    }

    #[test]
    fn candidates_skip_partly_used_blocks() {
        // A /30 and a /25 poke into the first /24s; both blocks are skipped whole.
        let inputs = ["10.0.0.4/30", "10.0.1.128/25", "10.0.3.0/24"];
        let rec = recommend(&inputs, 5).unwrap();
        assert_eq!(
            rec.address_spaces_10[..3],
            nets(&["10.0.2.0/24", "10.0.4.0/24", "10.0.5.0/24"])
        );
    }

    // ----- Regression tests for the bugs of cb-network's recommender (reference §4). -----

    /// cb-network marked only the *prefix length* of each input as used, so `192.168.0.0/24` did
    /// not remove `192.168.0.0/28`. With the list from its `test-rest-call.go` it recommended
    /// `192.168.0.0/28`, which overlaps an input.
    #[test]
    fn cb_network_bug_overlap_ignored_by_comparing_only_prefix_lengths() {
        let inputs = [
            "192.168.0.0/24",
            "192.168.0.0/25",
            "192.168.0.0/26",
            "192.168.0.0/27",
            "172.16.0.0/16",
            "172.16.0.0/16",
            "10.0.0.0/16",
            "10.0.0.0/10",
        ];
        let rec = recommend(&inputs, 8).unwrap();
        assert_sound(&inputs, &rec);
        assert!(!overlaps(rec.recommended, net("192.168.0.0/28")));
        assert_eq!(rec.recommended, net("192.168.1.0/24"));
        assert_eq!(rec.address_spaces_10[0], net("10.64.0.0/24"));
        assert_eq!(rec.address_spaces_172[0], net("172.17.0.0/24"));
        // The VPC example where cb-network's answer was right only by luck.
        let vpcs = ["192.168.1.0/24", "192.168.2.0/24", "192.168.3.0/24"];
        let rec = recommend(&vpcs, 3).unwrap();
        assert_sound(&vpcs, &rec);
        assert_eq!(
            rec.address_spaces_192[..2],
            nets(&["192.168.0.0/24", "192.168.4.0/24"])
        );
    }

    /// cb-network filtered the 192.168 list with the 172.16 table: a used 192.168 prefix had no
    /// effect, and a used 172.16 prefix removed a free 192.168 block.
    #[test]
    fn cb_network_bug_192_168_list_filtered_with_the_172_16_table() {
        let rec = recommend(&["172.16.0.0/24"], 3).unwrap();
        assert_eq!(rec.address_spaces_192[0], net("192.168.0.0/24"));
        assert_eq!(rec.address_spaces_172[0], net("172.16.1.0/24"));

        let inputs = ["192.168.0.0/24"];
        let rec = recommend(&inputs, 3).unwrap();
        assert_sound(&inputs, &rec);
        assert_eq!(rec.address_spaces_192[0], net("192.168.1.0/24"));
        assert_eq!(rec.address_spaces_172[0], net("172.16.0.0/24"));
    }

    /// cb-network's candidates were always at the range base (10.0.0.0, 172.16.0.0,
    /// 192.168.0.0); ours are the first free blocks anywhere in the range.
    #[test]
    fn cb_network_bug_candidates_only_at_the_range_base() {
        let inputs = ["10.0.0.0/24", "172.16.0.0/16", "192.168.0.0/20"];
        let rec = recommend(&inputs, 3).unwrap();
        assert_sound(&inputs, &rec);
        assert_eq!(rec.address_spaces_10[0], net("10.0.1.0/24"));
        assert_eq!(rec.address_spaces_172[0], net("172.17.0.0/24"));
        assert_eq!(rec.address_spaces_192[0], net("192.168.16.0/24"));
    }

    /// cb-network listed useless /31 and /32 candidates; every block here fits the hosts.
    #[test]
    fn cb_network_bug_useless_slash_31_and_32_candidates() {
        let rec = recommend(&["10.0.0.0/24"], 1).unwrap();
        for list in rec.candidates() {
            assert!(list.iter().all(|b| b.prefix_len() == PREFERRED_PREFIX_LEN));
        }
    }

    /// cb-network returned an empty recommendation (`""`) and only printed the error when nothing
    /// fit; an unparsable CIDR would crash its handler.
    #[test]
    fn cb_network_bug_silent_empty_answer_and_crash_on_bad_input() {
        assert!(matches!(
            recommend(&["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"], 1),
            Err(RecommendError::NoFreeSpace { .. })
        ));
        assert!(matches!(
            recommend(&["not-a-cidr"], 1),
            Err(RecommendError::InvalidCidr { index: 0, .. })
        ));
    }
}
