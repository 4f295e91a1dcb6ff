//! CLADNet's control-plane API, package `cladnet.v1` (see `proto/cladnet/v1/cladnet.proto`).
//!
//! Generated: prost messages, tonic clients and servers, and serde impls following the proto3
//! JSON mapping (lowerCamelCase names), which the REST API uses.

/// Package `cladnet.v1`.
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::allow_attributes_without_reason,
    clippy::use_self,
    clippy::manual_let_else,
    reason = "generated code"
)]
pub mod v1 {
    tonic::include_proto!("cladnet.v1");
    include!(concat!(env!("OUT_DIR"), "/cladnet.v1.serde.rs"));
}

pub mod join;
/// The protobuf runtime the generated types use (for `encoded_len` and friends).
pub use prost;
pub mod tls;
