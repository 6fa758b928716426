//! The host terminal for `capsule exec -t`: raw mode, window size and size changes.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use capsule_protocol::pb::TtySize;

const STDIN: RawFd = 0;
const STDOUT: RawFd = 1;

/// The size of the terminal on stdout, if stdout is a terminal.
pub fn terminal_size() -> Option<TtySize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into `ws`, which is valid and writable.
    let rc = unsafe { libc::ioctl(STDOUT, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some(TtySize {
        rows: u32::from(ws.ws_row),
        cols: u32::from(ws.ws_col),
    })
}

/// Puts the stdin terminal in raw mode until dropped (no-op when stdin is not a terminal).
pub struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    pub fn enter() -> Self {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut term: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `term` is valid and writable.
        if unsafe { libc::tcgetattr(STDIN, &mut term) } != 0 {
            return Self { saved: None };
        }
        let saved = term;
        // SAFETY: cfmakeraw only edits the struct we own.
        unsafe { libc::cfmakeraw(&mut term) };
        // SAFETY: `term` is a valid termios for stdin.
        unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &term) };
        Self { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the attributes read from the same terminal.
            unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, saved) };
        }
    }
}

/// Write end of the pipe the SIGWINCH handler writes to (-1: none).
static WINCH_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_winch(_: libc::c_int) {
    let fd = WINCH_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write() is async-signal-safe; the byte is valid for the call.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

/// Calls a function with the new size whenever the terminal is resized.
pub struct WinchWatcher;

impl WinchWatcher {
    pub fn start(mut on_resize: impl FnMut(TtySize) + Send + 'static) -> Option<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        WINCH_PIPE.store(fds[1], Ordering::Relaxed);
        // SAFETY: `on_winch` only performs async-signal-safe work.
        unsafe { libc::signal(libc::SIGWINCH, on_winch as *const () as libc::sighandler_t) };
        let read_fd = fds[0];
        std::thread::spawn(move || {
            let mut byte = 0u8;
            // SAFETY: reads one byte into `byte` from the pipe this thread owns.
            while unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) } == 1 {
                if let Some(size) = terminal_size() {
                    on_resize(size);
                }
            }
        });
        Some(Self)
    }
}
