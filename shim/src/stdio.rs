//! A process's stdio between the guest and containerd's FIFOs: containerd names up to three
//! FIFOs per process (with a terminal, stdout carries the terminal's output and stdin its
//! input). Output is copied until the guest closes its end; a process's exit is reported only
//! after its output has reached the FIFOs, so that `ctr run` prints everything.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use capsule_host::exec::Streams;

/// The FIFO paths containerd gave for one process (empty: none).
#[derive(Debug, Clone, Default)]
pub struct Fifos {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The copying of one process's streams.
pub struct Copying {
    outputs: Vec<JoinHandle<()>>,
    /// The write half of the guest's stdin, for CloseIO.
    stdin: Arc<Mutex<Option<UnixStream>>>,
}

impl Copying {
    /// Waits until every output stream is copied and its FIFO closed.
    pub fn finish(self) {
        for h in self.outputs {
            let _ = h.join();
        }
    }

    /// A handle that closes the process's stdin.
    pub fn stdin_closer(&self) -> StdinCloser {
        StdinCloser(self.stdin.clone())
    }
}

/// Closes a process's stdin (CloseIO), once.
#[derive(Clone, Default)]
pub struct StdinCloser(Arc<Mutex<Option<UnixStream>>>);

impl StdinCloser {
    pub fn close(&self) {
        if let Some(s) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = s.shutdown(Shutdown::Write);
        }
    }
}

fn open_writer(path: &str) -> Option<File> {
    OpenOptions::new().write(true).open(path).ok()
}

/// Copies `from` into the FIFO at `path` (dropping the bytes if there is none, so the guest
/// never blocks on a full pipe), then closes both.
fn output(mut from: UnixStream, path: String) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut to = (!path.is_empty()).then(|| open_writer(&path)).flatten();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(f) = to.as_mut() {
                        if f.write_all(&buf[..n]).is_err() {
                            to = None;
                        }
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    })
}

/// Copies the FIFO at `path` into the guest's stdin until the FIFO's writer closes it; not
/// joined (a process may end while its input is still open).
fn input(path: String, to: Arc<Mutex<Option<UnixStream>>>) {
    std::thread::spawn(move || {
        // Blocks until containerd's client opens the FIFO for writing.
        let Ok(mut from) = File::open(&path) else {
            return;
        };
        let Some(mut sink) = to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|s| s.try_clone().ok())
        else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        StdinCloser(to).close();
    });
}

/// Starts copying between `streams` and the FIFOs.
pub fn connect(streams: Streams, fifos: &Fifos) -> Copying {
    let stdin = Arc::new(Mutex::new(None));
    let mut outputs = Vec::new();
    let input_stream = match streams {
        Streams::Tty(tty) => {
            let reader = tty.try_clone().ok();
            if let Some(r) = reader {
                outputs.push(output(r, fifos.stdout.clone()));
            }
            Some(tty)
        }
        Streams::Pipes {
            stdin: guest_stdin,
            stdout,
            stderr,
        } => {
            outputs.push(output(stdout, fifos.stdout.clone()));
            outputs.push(output(stderr, fifos.stderr.clone()));
            guest_stdin
        }
    };
    if let Some(s) = input_stream {
        *stdin.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
        if !fifos.stdin.is_empty() {
            input(fifos.stdin.clone(), stdin.clone());
        }
    }
    Copying { outputs, stdin }
}
