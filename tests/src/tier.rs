//! Which test tiers and backends this machine offers, and a runner that skips the others with
//! the reason (docs/testing.md).
//!
//! A test that boots a guest through capsule is written once, as a function of the [`Backend`],
//! and becomes one test per way this machine can run it:
//! - `NAME::qemu`: QEMU's software CPU on the host (tier T2);
//! - `NAME::kvm`: capsule's VMM on this machine's /dev/kvm (tier T1 with a tiny guest; tier T3
//!   with the real guest kernel, which needs hardware KVM);
//! - `NAME::kvm-in-l1`: the `NAME::kvm` test run inside an L1 machine (QEMU's software CPU with
//!   emulated AMD SVM, so that its /dev/kvm is hardware-style KVM), on machines without hardware
//!   KVM of their own; see [`crate::l1`].

use std::path::Path;

use crate::l1;

/// A test tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The capsule VMM on real KVM with tiny test guests.
    T1,
    /// The real guest kernel and agent under QEMU's software CPU.
    T2,
    /// The whole stack on the capsule VMM with the real kernel.
    T3,
}

/// What runs the guest: the value of capsule's `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// QEMU's microvm with its software CPU (`--backend qemu-tcg`).
    Qemu,
    /// capsule's own VMM on /dev/kvm (`--backend kvm`).
    Kvm,
}

impl Backend {
    /// The `capsule create --backend` value.
    pub fn cli_name(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu-tcg",
            Backend::Kvm => "kvm",
        }
    }

    /// The suffix of the test names that use this backend.
    fn suffix(self) -> &'static str {
        match self {
            Backend::Qemu => "qemu",
            Backend::Kvm => "kvm",
        }
    }
}

/// The guest a test boots, which decides what KVM it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// A tiny freestanding test guest: runs on any KVM, kvm-pvm included.
    Tiny,
    /// The real guest kernel: needs hardware(-style) KVM to boot in reasonable time.
    Linux,
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
        Tier::T3 => no_hardware_kvm_reason(),
    }
}

/// Why /dev/kvm here is not hardware KVM (VMX/SVM), or `None` when it is.
pub fn no_hardware_kvm_reason() -> Option<String> {
    if let Some(reason) = kvm_unusable_reason() {
        return Some(reason);
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some(
            "/dev/kvm is served by kvm-pvm (software virtualization, no VMX/SVM): a Linux guest \
             runs under instruction emulation here, so this runs inside an L1 machine instead \
             (the ::kvm-in-l1 test)"
                .into(),
        );
    }
    if !Path::new("/sys/module/kvm_intel").exists() && !Path::new("/sys/module/kvm_amd").exists() {
        return Some("neither kvm_intel nor kvm_amd is loaded: no hardware KVM".into());
    }
    None
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

/// One integration test of a tier, for tests that exist on one tier only.
pub struct TierTest {
    pub name: &'static str,
    pub tier: Tier,
    pub run: fn() -> Result<(), String>,
}

/// One integration test written once for every backend in `backends`.
pub struct BackendTest {
    pub name: &'static str,
    pub guest: GuestKind,
    pub backends: &'static [Backend],
    pub run: fn(Backend) -> Result<(), String>,
    /// Why this host cannot run the test on a backend beyond the tier's own needs (asked on
    /// the host only: inside L1 the test must run).
    pub unsupported: Option<fn(Backend) -> Option<String>>,
}

/// Both backends.
pub const EVERY_BACKEND: &[Backend] = &[Backend::Qemu, Backend::Kvm];

impl BackendTest {
    /// A test of the real guest kernel on every backend.
    pub fn linux(name: &'static str, run: fn(Backend) -> Result<(), String>) -> BackendTest {
        BackendTest {
            name,
            guest: GuestKind::Linux,
            backends: EVERY_BACKEND,
            run,
            unsupported: None,
        }
    }

    /// This test, skipped on a backend where `why` gives a reason.
    pub fn unless(mut self, why: fn(Backend) -> Option<String>) -> BackendTest {
        self.unsupported = Some(why);
        self
    }
}

/// A test as the runner sees it: a name, a kind for the listing, whether it can run here.
struct Case {
    name: String,
    kind: &'static str,
    skip: Option<String>,
    run: Box<dyn FnOnce() -> Result<(), String> + Send>,
}

impl From<TierTest> for Case {
    fn from(test: TierTest) -> Case {
        let run = test.run;
        Case {
            name: test.name.to_string(),
            kind: tier_name(test.tier),
            skip: unavailable_reason(test.tier),
            run: Box::new(run),
        }
    }
}

fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::T1 => "T1",
        Tier::T2 => "T2",
        Tier::T3 => "T3",
    }
}

impl BackendTest {
    /// The tests this one becomes: one per backend, plus the KVM one inside L1.
    fn cases(&self) -> Vec<Case> {
        let mut cases = Vec::new();
        for &backend in self.backends {
            let name = format!("{}::{}", self.name, backend.suffix());
            let run = self.run;
            let (kind, skip) = match (backend, self.guest) {
                (Backend::Qemu, _) => ("T2", unavailable_reason(Tier::T2)),
                (Backend::Kvm, GuestKind::Tiny) => ("T1", unavailable_reason(Tier::T1)),
                (Backend::Kvm, GuestKind::Linux) => ("T3", no_hardware_kvm_reason()),
            };
            let skip = skip.or_else(|| self.unsupported.and_then(|why| why(backend)));
            cases.push(Case {
                name: name.clone(),
                kind,
                skip,
                run: Box::new(move || run(backend)),
            });
            if backend == Backend::Kvm {
                let guest = self.guest;
                cases.push(Case {
                    name: format!("{name}-in-l1"),
                    kind,
                    skip: l1::unavailable_reason(),
                    run: Box::new(move || l1::run_test_inside(&name, guest)),
                });
            }
        }
        cases
    }
}

/// Runs `tests` with libtest's command-line interface (so `cargo test` and nextest drive them).
/// Tests whose tier is unavailable are marked ignored, and the reason is printed once per tier.
pub fn run_tier_tests(tests: Vec<TierTest>) -> ! {
    run_cases(tests.into_iter().map(Case::from).collect())
}

/// Runs `tests`, each on every backend it names that this machine offers; the others are
/// ignored with the reason printed once.
pub fn run_backend_tests(tests: Vec<BackendTest>) -> ! {
    run_cases(tests.iter().flat_map(BackendTest::cases).collect())
}

fn run_cases(cases: Vec<Case>) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    let listing = args.list;
    let mut reported: Vec<String> = Vec::new();
    let trials = cases
        .into_iter()
        .map(|case| {
            if let Some(reason) = &case.skip {
                if !listing && !reported.contains(reason) {
                    eprintln!("SKIPPED {} tests: {reason}", case.kind);
                    reported.push(reason.clone());
                }
            }
            libtest_mimic::Trial::test(case.name, move || (case.run)().map_err(Into::into))
                .with_kind(case.kind)
                .with_ignored_flag(case.skip.is_some())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// `BackendTest`s of tiny guests on capsule's KVM backend, from `"name" => function` pairs of
/// functions without a backend argument (the tiny guests run on capsule's VMM only).
#[macro_export]
macro_rules! tiny_guest_tests_on_kvm {
    ($($name:literal => $run:expr),* $(,)?) => {
        vec![$($crate::tier::BackendTest {
            name: $name,
            guest: $crate::tier::GuestKind::Tiny,
            backends: &[$crate::tier::Backend::Kvm],
            run: |_| $run(),
            unsupported: None,
        }),*]
    };
}
