//! `aya::Pod` for the map types: userspace only (`user` feature).
//!
//! SAFETY (all impls): each type is `#[repr(C)]`, `Copy`, has no padding (checked by the
//! size asserts next to its definition) and is valid for every bit pattern.

use crate::maps::{Config, Counters, EndpointEntry, EndpointKey, PeerCounters, PeerEntry};

// SAFETY: see the module comment.
unsafe impl aya::Pod for Counters {}
// SAFETY: see the module comment.
unsafe impl aya::Pod for Config {}
// SAFETY: see the module comment.
unsafe impl aya::Pod for PeerEntry {}
// SAFETY: see the module comment.
unsafe impl aya::Pod for EndpointKey {}
// SAFETY: see the module comment.
unsafe impl aya::Pod for EndpointEntry {}
// SAFETY: see the module comment.
unsafe impl aya::Pod for PeerCounters {}
