//! `cladnet-controller`: the CLADNet control plane.
fn main() {}
