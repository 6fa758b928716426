//! Host-side Unix socket helpers of the hybrid backend: the `CONNECT <port>` handshake line,
//! a connect that never blocks, and sends that never raise SIGPIPE.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Longest handshake line accepted from a host client, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

/// Why a host client's handshake line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// The line does not start with the CONNECT keyword.
    #[error("handshake line is not `CONNECT <port>`")]
    NotConnect,
    /// The port is not a decimal u32.
    #[error("bad port in handshake line")]
    BadPort,
    /// No newline within [`MAX_CONNECT_LINE`] bytes.
    #[error("handshake line longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
    /// The path does not fit a `sockaddr_un`.
    #[error("socket path too long for a Unix socket address")]
    PathTooLong,
}

/// Parses `CONNECT <port>` (keyword case-insensitive, one or more spaces, optional `\r`) from a
/// line without its newline.
pub fn parse_connect_line(line: &[u8]) -> Result<u32, HostError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (keyword, rest) = line.split_at(line.len().min(7));
    if !keyword.eq_ignore_ascii_case(b"CONNECT") {
        return Err(HostError::NotConnect);
    }
    let port = match rest.iter().position(|&b| b != b' ') {
        Some(start) if start > 0 => &rest[start..],
        None if !rest.is_empty() => &[],
        _ => return Err(HostError::NotConnect),
    };
    if port.is_empty() || port.len() > 10 || !port.iter().all(u8::is_ascii_digit) {
        return Err(HostError::BadPort);
    }
    let mut value: u64 = 0;
    for &d in port {
        value = value * 10 + u64::from(d - b'0');
    }
    u32::try_from(value).map_err(|_| HostError::BadPort)
}

/// The path of the host listener for guest-initiated connections to `port`: `<uds>_<port>`.
pub fn forward_path(uds: &Path, port: u32) -> std::path::PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    s.into()
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
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1234"), Ok(1234));
        assert_eq!(parse_connect_line(b"connect 52\r"), Ok(52));
        assert_eq!(parse_connect_line(b"Connect   7"), Ok(7));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Ok(u32::MAX));
        assert_eq!(
            parse_connect_line(b"CONNECT 4294967296"),
            Err(HostError::BadPort)
        );
        assert_eq!(parse_connect_line(b"CONNECT"), Err(HostError::NotConnect));
        assert_eq!(parse_connect_line(b"CONNECT1"), Err(HostError::NotConnect));
        assert_eq!(parse_connect_line(b"CONNECT "), Err(HostError::BadPort));
        assert_eq!(parse_connect_line(b"CONNECT -1"), Err(HostError::BadPort));
        assert_eq!(parse_connect_line(b"CONNECT 1 2"), Err(HostError::BadPort));
        assert_eq!(parse_connect_line(b"HELLO 1"), Err(HostError::NotConnect));
        assert_eq!(parse_connect_line(b""), Err(HostError::NotConnect));
    }

    #[test]
    fn forward_path_appends_port() {
        assert_eq!(
            forward_path(Path::new("/run/v.sock"), 52),
            Path::new("/run/v.sock_52")
        );
    }

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
