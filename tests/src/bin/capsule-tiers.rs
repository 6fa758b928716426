//! Prints which test tiers this machine runs, and why the others are skipped.

use capsule_tests::tier::{unavailable_reason, Tier};

fn main() {
    for tier in [Tier::T1, Tier::T2, Tier::T3] {
        match unavailable_reason(tier) {
            None => println!("tier {tier:?}: runs"),
            Some(reason) => println!("tier {tier:?}: SKIPPED, {reason}"),
        }
    }
}
