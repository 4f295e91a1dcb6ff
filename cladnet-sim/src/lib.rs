//! A deterministic simulator of a CLADNet network, in the manner of quinn's `Pair` and
//! Nebula's e2e router: many sans-IO [`Node`](cladnet_core::node::Node)s, each with a model
//! engine, a controller model that sends the Watch stream (snapshot, upserts, removals,
//! policy changes; outages and resync), on a virtual clock and a virtual underlay with NATs
//! (1:1 and port-translating), loss, duplication, reordering and address changes.
//!
//! Everything random comes from one seed ([`rng::Rng`]); time is virtual ([`clock`]); there
//! are no threads, no sockets and no hash-order iteration in anything that reaches the trace,
//! so a seed names one run and [`Sim::digest`] proves it. Scenarios live in `tests/`.
//!
//! One concern per module: [`clock`] (virtual time, agenda), [`rng`], [`underlay`] (hosts,
//! NATs, impairments), [`controller`] (store and Watch stream), [`engine`] (model engines, the
//! Node design's and the old one's), [`harness`] (the agents' IO loops, operator actions),
//! [`delivery`] (every pair's packets), [`check`] (staleness), [`trace`] (the run's digest).

pub mod check;
pub mod clock;
pub mod controller;
pub mod delivery;
pub mod engine;
pub mod harness;
pub mod rng;
pub mod trace;
pub mod underlay;

pub use harness::{Design, PLAIN, Sim, SimConfig};
