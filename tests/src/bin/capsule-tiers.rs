//! Prints which test tiers and places this machine runs, and why the others are skipped.

use capsule_tests::l1;
use capsule_tests::tier::{unavailable_reason, Tier};

fn main() {
    for tier in [Tier::T1, Tier::T2, Tier::T3] {
        match unavailable_reason(tier) {
            None => println!("tier {tier:?}: runs"),
            Some(reason) => println!("tier {tier:?}: SKIPPED, {reason}"),
        }
    }
    match l1::unavailable_reason() {
        None => println!(
            "L1 machine (capsule's KVM backend on emulated SVM, the ::kvm-in-l1 tests): runs"
        ),
        Some(reason) => println!("L1 machine: not used, {reason}"),
    }
}
