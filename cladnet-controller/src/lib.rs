//! `cladnet-controller` library: the controller's pure logic, kept free of IO so it can run inside
//! store transactions and be tested exhaustively.
//!
//! * [`ipam`]: overlay IPv4 address allocation for the peers of a network.
//! * [`recommend`]: the address-space recommender, which picks a private IPv4 block for a new
//!   network that overlaps none of the hosts' own CIDRs.
//!
//! The rules are described in `docs/addressing.md`.
#![forbid(unsafe_code)]

pub mod ipam;
pub mod recommend;

pub use ipnet::Ipv4Net;
