//! Which test tiers this machine can run, and a runner that skips the others with a reason.

use std::path::Path;

/// A test tier, as defined in PLATFORM.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The capsule VMM on real KVM with tiny test guests.
    T1,
    /// The real guest kernel and agent under QEMU's software CPU.
    T2,
    /// The whole stack on the capsule VMM with the real kernel: hardware KVM only.
    T3,
}

/// Why a tier cannot run here, or `None` when it can.
pub fn unavailable_reason(tier: Tier) -> Option<String> {
    match tier {
        Tier::T1 => kvm_unusable_reason(),
        Tier::T2 => {
            if find_in_path("qemu-system-x86_64").is_none() {
                Some(
                    "qemu-system-x86_64 is not installed (scripts/install-deps.sh installs it)"
                        .into(),
                )
            } else {
                None
            }
        }
        Tier::T3 => {
            if let Some(reason) = kvm_unusable_reason() {
                return Some(reason);
            }
            if Path::new("/sys/module/kvm_pvm").exists() {
                return Some(
                    "/dev/kvm is served by kvm-pvm (software virtualization, no VMX/SVM): a Linux \
                     guest runs under instruction emulation here, so T3 needs hardware KVM"
                        .into(),
                );
            }
            if !Path::new("/sys/module/kvm_intel").exists()
                && !Path::new("/sys/module/kvm_amd").exists()
            {
                return Some("neither kvm_intel nor kvm_amd is loaded: no hardware KVM".into());
            }
            None
        }
    }
}

fn kvm_unusable_reason() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm cannot be opened read-write: {e}")),
    }
}

/// Finds an executable by name in `$PATH`.
pub fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// One integration test of a tier.
pub struct TierTest {
    pub name: &'static str,
    pub tier: Tier,
    pub run: fn() -> Result<(), String>,
}

/// Runs `tests` with libtest's command-line interface (so `cargo test` and nextest drive them).
/// Tests whose tier is unavailable are marked ignored, and the reason is printed once per tier.
pub fn run_tier_tests(tests: Vec<TierTest>) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    let listing = args.list;
    let mut reported = Vec::new();
    let trials = tests
        .into_iter()
        .map(|test| {
            let reason = unavailable_reason(test.tier);
            if let Some(reason) = &reason {
                if !listing && !reported.contains(&test.tier) {
                    eprintln!("SKIPPED tier {:?} tests: {reason}", test.tier);
                    reported.push(test.tier);
                }
            }
            let run = test.run;
            libtest_mimic::Trial::test(test.name, move || run().map_err(Into::into))
                .with_kind(format!("{:?}", test.tier))
                .with_ignored_flag(reason.is_some())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}
