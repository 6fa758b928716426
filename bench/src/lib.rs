//! What the benchmark harnesses share: a VMM process killed when the measurement ends, and a
//! console watcher that times the first byte and a marker line.

use std::io::Read;
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

/// Kills the VMM when the measurement is done or fails.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a VMM's console on its own thread. Sends once: the times (by `clock`) of the first
/// byte and of the end of `marker`, or, if the console ends first, what it printed.
pub fn watch_for_marker(
    mut console: impl Read + Send + 'static,
    marker: &[u8],
    clock: impl Fn() -> Duration + Send + 'static,
) -> mpsc::Receiver<Result<(Duration, Duration), String>> {
    let (tx, rx) = mpsc::channel();
    let marker = marker.to_vec();
    std::thread::spawn(move || {
        let (mut seen, mut buf, mut first) = (Vec::new(), [0u8; 4096], None);
        loop {
            match console.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Err(String::from_utf8_lossy(&seen).into_owned()));
                    return;
                }
                Ok(n) => {
                    let first = *first.get_or_insert_with(&clock);
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(marker.len()).any(|w| w == marker) {
                        let _ = tx.send(Ok((first, clock())));
                        return;
                    }
                }
            }
        }
    });
    rx
}
