//! Shared infrastructure for capsule's integration tests.
//!
//! Tests are grouped in tiers (see `docs/testing.md`): a tier's tests run only on
//! a machine that has what the tier needs, and are otherwise reported as ignored, with the reason
//! printed, never as passed.

pub mod capsule;
pub mod cli;
pub mod containerd;
pub mod guests;
pub mod l1;
pub mod qemu;
pub mod tier;
pub mod vsock_echo;
