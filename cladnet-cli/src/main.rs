//! `cladnet` CLI.
fn main() {}
