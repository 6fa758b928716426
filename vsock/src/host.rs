//! Host-side Unix socket helpers of the hybrid backend: a connect that never blocks and sends
//! that never raise SIGPIPE. The handshake itself (`CONNECT <port>` / `OK <port>`, `<uds>_<port>`)
//! is `capsule-hybrid-vsock`'s, re-exported here for the device core.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// The hybrid-vsock handshake and the `<uds>_<port>` rule, from their one home.
pub use capsule_hybrid_vsock::{
    forward_path, ok_line, parse_connect_line, MAX_LINE as MAX_CONNECT_LINE,
};

/// Why a host socket could not be reached.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// The path does not fit a `sockaddr_un`.
    #[error("socket path too long for a Unix socket address")]
    PathTooLong,
}

/// Connects a non-blocking stream socket to `path` without ever waiting: a listener whose
/// backlog is full fails with `WouldBlock` instead of stalling the caller.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            HostError::PathTooLong,
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created socket that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// One non-blocking `send(2)` of `len` bytes at `ptr`, with MSG_NOSIGNAL so a closed peer is an
/// EPIPE error rather than a signal.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes for the duration of the call.
unsafe fn send_raw(stream: &UnixStream, ptr: *const u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees `ptr` is readable for `len` bytes; the kernel copies them.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            ptr.cast(),
            len,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One non-blocking send of `buf` (see [`send_raw`]).
pub fn send_bytes(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call.
    unsafe { send_raw(stream, buf.as_ptr(), buf.len()) }
}

/// [`send_bytes`] straight from guest memory.
pub fn send_volatile<B: BitmapSlice>(
    stream: &UnixStream,
    buf: &VolatileSlice<'_, B>,
) -> io::Result<usize> {
    let guard = buf.ptr_guard();
    // SAFETY: the guard keeps `buf.len()` bytes at `guard.as_ptr()` mapped and readable for the
    // call; the kernel copies from them, so concurrent guest writes can only change the data sent.
    unsafe { send_raw(stream, guard.as_ptr(), buf.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonblocking_connect_reports_missing_listener() {
        let err = connect_nonblocking(Path::new("/nonexistent/capsule-vsock-test")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let long = "x".repeat(200);
        assert_eq!(
            connect_nonblocking(Path::new(&long)).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
