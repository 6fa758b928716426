//! capsule's guest agent: PID 1 of the microVM. Serves the RPC API of the `capsule-protocol`
//! crate over virtio-vsock, drives container objects through a [`backend::Backend`] (the
//! kernel's container syscalls, or mainline primitives), reaps every child, and forwards
//! request-key upcalls to the host ([`request_key`]).

//!
//! Layers, bottom up (a module imports only from layers below it): [`sys`] (raw system calls)
//! and [`transport`]; [`attach`] (fds and bridges waiting for a stream), [`tty`], [`bridge`],
//! [`backend`], [`reaper`], [`keyring`]; [`service`] (the RPCs by family); [`server`] (the RPC
//! port and the stream port). `unsafe` is denied outside `sys`, the backends (whose fork child
//! runs raw system calls), PID 1 duties and the shipped helpers.

#![deny(unsafe_code)]

pub mod attach;
#[allow(unsafe_code)]
pub mod backend;
pub mod bridge;
#[allow(unsafe_code)]
pub mod init;
#[allow(unsafe_code)]
pub mod keyctl;
pub mod keyring;
pub mod lock;
pub mod netlink;
#[allow(unsafe_code)]
pub mod reaper;
#[allow(unsafe_code)]
pub mod request_key;
#[allow(unsafe_code)]
pub mod selfctl;
pub mod server;
pub mod service;
#[allow(unsafe_code)]
pub mod sys;
pub mod transport;
pub mod tty;

use std::sync::Arc;

/// A minimal logger to stderr (the console in the guest); level from CAPSULE_AGENT_LOG.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("capsule-agent: {}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Installs the logger.
pub fn init_logging() {
    static LOGGER: StderrLogger = StderrLogger;
    let level = match std::env::var("CAPSULE_AGENT_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// What `run` should do when the agent is told to shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnShutdown {
    /// Return (serve mode).
    Return,
    /// Sync and reboot (PID 1 in the guest).
    PowerOff,
}

/// Options of one agent run.
pub struct Options {
    pub transport: transport::Transport,
    pub backend: BackendChoice,
    pub cgroup_parent: Option<std::path::PathBuf>,
    pub on_shutdown: OnShutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Kernel,
    Mainline,
}

/// Runs the agent until Shutdown.
pub fn run(opts: Options) -> anyhow::Result<()> {
    init::become_subreaper();
    // A session keyring of our own holds the container keyrings (mainline backend); joined
    // before any thread exists, as keyrings are per-thread credentials.
    let _ = sys::keyctl(sys::KEYCTL_JOIN_SESSION_KEYRING, 0, 0, 0, 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let reaper = Arc::new(reaper::Reaper::new());
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let r2 = reaper.clone();
        tokio::spawn(async move {
            loop {
                let r = r2.clone();
                let _ = tokio::task::spawn_blocking(move || r.reap()).await;
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        let backend: Box<dyn backend::Backend> = match opts.backend {
            BackendChoice::Auto => backend::detect(opts.cgroup_parent.clone()),
            BackendChoice::Kernel => {
                anyhow::ensure!(
                    backend::kernel::available(),
                    "the kernel has no container syscalls"
                );
                Box::new(backend::kernel::KernelBackend::new())
            }
            BackendChoice::Mainline => Box::new(backend::mainline::MainlineBackend::new(
                opts.cgroup_parent.clone(),
            )),
        };
        log::info!("backend: {}", backend.name());
        // Containers' cgroups are children of the agent's: give them their counters and limits.
        if let Some(own) = backend::mainline::default_cgroup_parent()
            .as_deref()
            .and_then(std::path::Path::parent)
        {
            service::enable_controllers(own);
        }
        let agent = service::Agent::new(backend, reaper, opts.transport);
        let grace = server::serve(agent.clone()).await?;
        log::info!("shutting down (grace {grace} s)");
        agent
            .stop_all(std::time::Duration::from_secs(grace.into()))
            .await;
        Ok::<(), anyhow::Error>(())
    })?;
    if opts.on_shutdown == OnShutdown::PowerOff {
        init::power_off();
    }
    Ok(())
}
