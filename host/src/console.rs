//! The guest console log: everything the guest prints, appended to a file unbuffered, and
//! watched for a Linux kernel panic so a dead VM's status can say why it died.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// What a panicking Linux kernel prints first.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// Longest console line kept for scanning; longer lines are scanned in pieces.
const MAX_LINE: usize = 4096;
/// Longest panic message kept for the status.
const MAX_REASON: usize = 300;

/// Shared view of the first kernel panic seen on the console.
#[derive(Clone, Default, Debug)]
pub struct PanicWatch(Arc<Mutex<Option<String>>>);

impl PanicWatch {
    /// A watch that saw `line` (the panic another process's console log recorded).
    pub fn reported(line: Option<String>) -> Self {
        PanicWatch(Arc::new(Mutex::new(line)))
    }

    /// The first panic line, e.g. "Kernel panic - not syncing: Attempted to kill init!".
    pub fn panic_line(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Appends console output to a file and scans it line by line for a kernel panic.
pub struct ConsoleLog {
    file: File,
    line: Vec<u8>,
    watch: PanicWatch,
}

impl ConsoleLog {
    pub fn new(file: File) -> Self {
        Self {
            file,
            line: Vec::new(),
            watch: PanicWatch::default(),
        }
    }

    pub fn watch(&self) -> PanicWatch {
        self.watch.clone()
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.end_line();
            }
            if b != b'\n' {
                self.line.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        if let Some(at) = self
            .line
            .windows(PANIC_MARKER.len())
            .position(|w| w == PANIC_MARKER)
        {
            let mut slot = self.watch.0.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                let text = String::from_utf8_lossy(&self.line[at..]);
                let text = text.trim_end();
                *slot = Some(text.chars().take(MAX_REASON).collect());
            }
        }
        self.line.clear();
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all(buf)?;
        self.scan(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(tag: &str) -> (ConsoleLog, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("capsule-console-{tag}-{}", std::process::id()));
        (ConsoleLog::new(File::create(&path).unwrap()), path)
    }

    #[test]
    fn records_the_first_panic_line_and_keeps_everything() {
        let (mut console, path) = log("panic");
        let watch = console.watch();
        console
            .write_all(b"[    0.1] booting\n[    1.2] Kernel pan")
            .unwrap();
        assert_eq!(watch.panic_line(), None);
        console
            .write_all(b"ic - not syncing: Attempted to kill init! exitcode=0x00000100\n")
            .unwrap();
        console
            .write_all(b"Kernel panic - not syncing: second\n")
            .unwrap();
        assert_eq!(
            watch.panic_line().unwrap(),
            "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("[    0.1] booting\n"));
        assert!(text.ends_with("second\n"));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn ordinary_output_and_huge_lines_do_not_trip_it() {
        let (mut console, path) = log("plain");
        console.write_all(&vec![b'x'; 3 * MAX_LINE]).unwrap();
        console
            .write_all(b"\npanic=1 on the command line\n")
            .unwrap();
        assert_eq!(console.watch().panic_line(), None);
        std::fs::remove_file(path).unwrap();
    }
}
