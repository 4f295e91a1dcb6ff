//! The CLADNet controller: a stateless API server over a key-value store.
//!
//! * [`service`]: the operations (networks, peers, join, watch, tokens, commands, tests),
//!   transport independent, every change a store transaction.
//! * [`grpc`] and [`rest`]: the two transports, served on one port by [`server`].
//! * [`ipam`] and [`recommend`]: pure address logic (see `docs/addressing.md`).
//! * [`routes`]: advertised prefixes (pure validation and merge; `service/routes.rs` stores
//!   them).
//! * [`keys`]: the store key layout (see `docs/store.md`); [`layout`] checks it at start and
//!   migrates an old one.
//! * [`wgconfig`]: the wg-quick configuration of external WireGuard peers.
//! * [`selfsigned`]: `--tls auto`, the controller's own certificate and its pin.
//! * [`console`]: the web console (static HTML/JS/CSS at `/console/` over the REST API).
#![forbid(unsafe_code)]

pub mod auth;
pub mod console;
pub mod error;
pub mod grpc;
pub mod ipam;
pub mod keys;
pub mod layout;
pub mod metrics;
pub mod model;
pub mod recommend;
pub mod reflector;
pub mod rest;
pub mod routes;
pub mod selfsigned;
pub mod server;
pub mod service;
pub mod validate;
pub mod wgconfig;

pub use ipnet::Ipv4Net;
