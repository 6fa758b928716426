//! `capsule-agent`: PID 1 of a capsule microVM (no arguments), a test server
//! (`serve --unix PATH`), or the request-key helper (`request-key ...`, or run as
//! `/sbin/request-key`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use capsule_agent::transport::Transport;
use capsule_agent::{init, keyctl, request_key, run, selfctl, BackendChoice, OnShutdown, Options};

const USAGE: &str = "usage:
  capsule-agent                         run as PID 1 of the guest (vsock ports 1024/1025)
  capsule-agent serve [--unix PATH | --vsock] [--backend auto|kernel|mainline]
                      [--cgroup-parent DIR]
  capsule-agent request-key <op> <key> <uid> <gid> <thread-kr> <process-kr> <session-kr> [--unix PATH]
  capsule-agent keyctl request|request2|print|pipe|describe ...   (also as /bin/keyctl)
  capsule-agent container kill [SIGNAL]|freeze|thaw   act on one's own container (also as /bin/container)";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    if argv0 == "request-key" {
        std::process::exit(request_key::main(&args[1..]));
    }
    if argv0 == "keyctl" {
        std::process::exit(keyctl::main(&args[1..]));
    }
    if argv0 == "container" {
        std::process::exit(selfctl::main(&args[1..]));
    }
    capsule_agent::init_logging();
    let code = match args.get(1).map(String::as_str) {
        Some("request-key") => request_key::main(&args[2..]),
        Some("keyctl") => keyctl::main(&args[2..]),
        Some("container") => selfctl::main(&args[2..]),
        Some("serve") => report(serve(&args[2..])),
        Some("-h") | Some("--help") => {
            println!("{USAGE}");
            0
        }
        None | Some("init") => report(pid1()),
        Some(other) => {
            eprintln!("capsule-agent: unknown command {other:?}\n{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

fn report(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("capsule-agent: {e:#}");
            1
        }
    }
}

fn pid1() -> anyhow::Result<()> {
    let is_init = std::process::id() == 1;
    if is_init {
        for p in init::mount_early() {
            log::warn!("{p}");
        }
        init::ensure_stdio();
    }
    let r = run(Options {
        transport: Transport::Vsock,
        backend: BackendChoice::Auto,
        cgroup_parent: None,
        on_shutdown: if is_init {
            OnShutdown::PowerOff
        } else {
            OnShutdown::Return
        },
    });
    if is_init {
        // PID 1 must not exit: a failure ends the VM cleanly instead of panicking the kernel.
        if let Err(e) = &r {
            log::error!("{e:#}");
        }
        init::power_off();
    }
    r
}

fn serve(args: &[String]) -> anyhow::Result<()> {
    let mut transport = None;
    let mut backend = BackendChoice::Auto;
    let mut cgroup_parent = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--unix" => {
                transport = Some(Transport::Unix(PathBuf::from(
                    it.next().context("--unix needs a path")?,
                )))
            }
            "--vsock" => transport = Some(Transport::Vsock),
            "--backend" => {
                backend = match it.next().map(String::as_str) {
                    Some("auto") => BackendChoice::Auto,
                    Some("kernel") => BackendChoice::Kernel,
                    Some("mainline") => BackendChoice::Mainline,
                    other => bail!("--backend wants auto, kernel or mainline, not {other:?}"),
                }
            }
            "--cgroup-parent" => {
                cgroup_parent = Some(PathBuf::from(
                    it.next().context("--cgroup-parent needs a directory")?,
                ))
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    run(Options {
        transport: transport.context("serve needs --unix PATH or --vsock")?,
        backend,
        cgroup_parent,
        on_shutdown: OnShutdown::Return,
    })
}
