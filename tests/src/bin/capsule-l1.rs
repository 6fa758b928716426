//! Runs a shell command inside a fresh L1 machine (docs/testing.md), with the host's root
//! read-only and capsule's KVM backend on hardware-style KVM: for benchmarks and for looking
//! at a failing `::kvm-in-l1` test by hand.
//!
//! Usage: capsule-l1 [--timeout SECONDS] -- COMMAND...
//! The console goes to stdout; the exit status is the command's.

use std::time::Duration;

use capsule_tests::l1;

const USAGE: &str = "usage: capsule-l1 [--timeout SECONDS] -- COMMAND...\n\
    Runs COMMAND (joined by spaces, run by /bin/sh in this directory) inside a fresh L1 machine.";

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let mut timeout = Duration::from_secs(1800);
    let mut command = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--timeout" => {
                let Some(secs) = args.next().and_then(|s| s.parse().ok()) else {
                    eprintln!("capsule-l1: --timeout needs a number of seconds\n{USAGE}");
                    std::process::exit(2);
                };
                timeout = Duration::from_secs(secs);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            "--" => command.extend(args.by_ref()),
            other => {
                eprintln!("capsule-l1: unexpected argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if command.is_empty() {
        eprintln!("capsule-l1: no command\n{USAGE}");
        std::process::exit(2);
    }
    // The `capsule` built next to this binary, unless the caller names one.
    if std::env::var_os("CAPSULE_BIN").is_none() {
        if let Some(sibling) = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("capsule")))
            .filter(|bin| bin.is_file())
        {
            std::env::set_var("CAPSULE_BIN", sibling);
        }
    }
    match l1::run_in_l1(&command.join(" "), timeout, |line| {
        if !line.starts_with("@@l1 ") {
            println!("{line}");
        }
    }) {
        Ok(outcome) => std::process::exit(outcome.exit.unwrap_or(1)),
        Err(e) => {
            eprintln!("capsule-l1: {e}");
            std::process::exit(1);
        }
    }
}
