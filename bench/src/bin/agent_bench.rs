//! Agent and CLI latency, per machine backend: RPC round trip (Health.Check over the
//! hybrid-vsock socket, p50/p99), `exec` of `/bin/true` (through the API, and as a user runs
//! `capsule exec`), and the time from `capsule create` to the end of the first `capsule exec`.
//!
//! Backends this machine cannot run (capsule's KVM VMM needs hardware virtualization for a
//! Linux guest) are reported as skipped, with the reason.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use capsule_protocol::methods::Exec;
use capsule_protocol::{pb, Client, HybridVsock};
use capsule_tests::cli::CapsuleCli;
use capsule_tests::tier::{unavailable_reason, Tier};
use clap::Parser;

#[derive(Parser)]
#[command(about = "RPC, exec and create-to-first-exec latency of capsule, per backend")]
struct Args {
    /// Health calls for the RPC round trip.
    #[arg(long, default_value_t = 1000)]
    rpc_calls: usize,
    /// exec of /bin/true through the API, and through the CLI.
    #[arg(long, default_value_t = 100)]
    execs: usize,
    /// VMs created for create-to-first-exec.
    #[arg(long, default_value_t = 5)]
    creates: usize,
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn row(what: &str, backend: &str, samples: &mut [Duration]) {
    let p50 = percentile(samples, 0.5);
    let p99 = percentile(samples, 0.99);
    println!(
        "| {what} | {backend} | {} | {:.3} ms | {:.3} ms |",
        samples.len(),
        ms(p50),
        ms(p99)
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("| measurement | backend | samples | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for (backend, tier) in [("qemu-tcg", Tier::T2), ("kvm", Tier::T3)] {
        if let Some(reason) = unavailable_reason(tier) {
            println!("| all | {backend} | skipped: {reason} | | |");
            continue;
        }
        bench_backend(&args, backend)?;
    }
    Ok(())
}

fn bench_backend(args: &Args, backend: &str) -> Result<()> {
    let cli = CapsuleCli::new(&format!("bench-{backend}")).map_err(anyhow::Error::msg)?;

    let mut create_to_exec = Vec::new();
    for i in 0..args.creates {
        let name = format!("b{i}");
        let start = Instant::now();
        let created = cli
            .run(&["create", &name, "--backend", backend])
            .map_err(anyhow::Error::msg)?;
        if created.code != Some(0) {
            bail!("create failed: {}", created.describe());
        }
        let first = cli
            .run(&["exec", &name, "--", "/bin/true"])
            .map_err(anyhow::Error::msg)?;
        if first.code != Some(0) {
            bail!("first exec failed: {}", first.describe());
        }
        create_to_exec.push(start.elapsed());
        if i + 1 < args.creates {
            cli.run(&["rm", "--force", &name])
                .map_err(anyhow::Error::msg)?;
        }
        eprint!("\r{backend}: creates {}/{}", i + 1, args.creates);
    }
    eprintln!();
    let name = format!("b{}", args.creates - 1);
    let vsock = cli.state_dir().join(&name).join("vsock.sock");

    let client = Client::connect(HybridVsock::new(&vsock))?.with_timeout(Duration::from_secs(30));
    let mut rpc = Vec::with_capacity(args.rpc_calls);
    for _ in 0..args.rpc_calls {
        let t = Instant::now();
        client.health().context("Health.Check")?;
        rpc.push(t.elapsed());
    }

    let mut api_exec = Vec::with_capacity(args.execs);
    for _ in 0..args.execs {
        let t = Instant::now();
        exec_true(&client, &name)?;
        api_exec.push(t.elapsed());
    }

    let mut cli_exec = Vec::with_capacity(args.execs);
    for _ in 0..args.execs {
        let t = Instant::now();
        let out = cli
            .run(&["exec", &name, "--", "/bin/true"])
            .map_err(anyhow::Error::msg)?;
        if out.code != Some(0) {
            bail!("exec failed: {}", out.describe());
        }
        cli_exec.push(t.elapsed());
    }

    row("RPC round trip (Health.Check)", backend, &mut rpc);
    row(
        "exec /bin/true via the API (Exec + WaitProcess)",
        backend,
        &mut api_exec,
    );
    row(
        "`capsule exec vm -- /bin/true` (whole CLI process)",
        backend,
        &mut cli_exec,
    );
    row(
        "`capsule create` to end of first `capsule exec`",
        backend,
        &mut create_to_exec,
    );
    Ok(())
}

/// Starts /bin/true with no stdio streams and waits for it.
fn exec_true(client: &Client, container: &str) -> Result<()> {
    let null = pb::StdioMode::StdioNull as i32;
    let started = client.call::<Exec>(&pb::ExecRequest {
        container: container.to_string(),
        argv: vec!["/bin/true".into()],
        env: vec!["PATH=/bin:/usr/bin".into()],
        stdin: null,
        stdout: null,
        stderr: null,
        ..Default::default()
    })?;
    let done = client.wait_process(container, started.exec_id)?;
    if done.exit_code != 0 {
        bail!("/bin/true exited {}", done.exit_code);
    }
    Ok(())
}
