//! CLADNet's sans-IO core: logic both the controller and the agents run, with no IO, no
//! clocks and no randomness of its own, so that every peer computes the same answer.
#![forbid(unsafe_code)]

pub mod node;
pub mod pmtu;
pub mod policy;
pub mod relay;
