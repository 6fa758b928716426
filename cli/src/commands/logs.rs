//! `capsule logs`: print a VM's guest console (and, with --vmm, its supervisor's log).

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use capsule_host::state::Phase;
use clap::Args;

#[derive(Args, Debug)]
pub struct LogsArgs {
    name: String,
    /// Keep printing new output until the VM ends.
    #[arg(short, long)]
    follow: bool,
    /// Print the VMM supervisor's log instead of the guest console.
    #[arg(long)]
    vmm: bool,
}

pub fn run(args: LogsArgs) -> ExitCode {
    match logs(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail(&e),
    }
}

fn logs(args: &LogsArgs) -> Result<()> {
    let vm = super::common::open_vm(&args.name)?;
    let path = if args.vmm {
        vm.state().supervisor_log_path()
    } else {
        vm.state().console_path()
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        let running = matches!(
            vm.status().map(|s| s.phase),
            Ok(Phase::Starting | Phase::Running)
        );
        if !args.follow || !running {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
        // A truncated file starts over.
        let pos = file.stream_position()?;
        if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(pos) < pos {
            file.seek(SeekFrom::Start(0))?;
        }
    }
}
