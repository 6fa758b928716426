//! The hybrid-vsock convention, written once for every side that speaks it.
//!
//! A VM's vsock device is reached from the host through one Unix socket (`vsock.sock`, the
//! "hybrid" socket of Firecracker): a host client connects, sends `CONNECT <port>\n` and, once
//! the guest accepts, reads `OK <host port>\n`; every byte after that newline belongs to the
//! guest connection. Guest-initiated connections to host port P go to a listener at
//! `<uds>_<P>` ([`forward_path`]).
//!
//! Sides: the VMM's vsock device (`capsule-vsock`) parses [`parse_connect_line`] and answers
//! [`ok_line`]; the host client (`capsule-protocol`, re-exported as `capsule_protocol::hybrid`) sends
//! [`connect_line`] and checks [`parse_ok_line`]; the agent's test transport (`capsule-agent
//! serve --unix`) plays the VMM's part. This crate depends on nothing so the VMM can use it
//! without the agent API.

use std::path::{Path, PathBuf};

/// Longest handshake line (`CONNECT <port>` or `OK <port>`) accepted, newline included.
pub const MAX_LINE: usize = 32;

/// Why a handshake line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// The line does not start with the CONNECT keyword.
    #[error("handshake line is not `CONNECT <port>`")]
    NotConnect,
    /// The answer does not start with the OK keyword.
    #[error("answer {0:?} is not `OK <port>`")]
    NotOk(String),
    /// The port is not a decimal u32.
    #[error("bad port in handshake line")]
    BadPort,
    /// No newline within [`MAX_LINE`] bytes.
    #[error("handshake line longer than {MAX_LINE} bytes")]
    TooLong,
}

/// The line a host client sends to reach guest port `port`.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// The answer once the guest accepted; `host_port` is the host end's port.
pub fn ok_line(host_port: u32) -> String {
    format!("OK {host_port}\n")
}

/// Parses `CONNECT <port>` (keyword case-insensitive, one or more spaces, optional `\r`) from a
/// line without its newline.
pub fn parse_connect_line(line: &[u8]) -> Result<u32, HandshakeError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (keyword, rest) = line.split_at(line.len().min(7));
    if !keyword.eq_ignore_ascii_case(b"CONNECT") {
        return Err(HandshakeError::NotConnect);
    }
    let port = match rest.iter().position(|&b| b != b' ') {
        Some(start) if start > 0 => &rest[start..],
        None if !rest.is_empty() => &[],
        _ => return Err(HandshakeError::NotConnect),
    };
    parse_port(port)
}

/// Parses an `OK <port>` answer without its newline; returns the host end's port.
pub fn parse_ok_line(line: &[u8]) -> Result<u32, HandshakeError> {
    let not_ok = || HandshakeError::NotOk(String::from_utf8_lossy(line).into_owned());
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(port) = line.strip_prefix(b"OK ") else {
        return Err(not_ok());
    };
    parse_port(port).map_err(|_| not_ok())
}

fn parse_port(digits: &[u8]) -> Result<u32, HandshakeError> {
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HandshakeError::BadPort);
    }
    let mut value: u64 = 0;
    for &d in digits {
        value = value * 10 + u64::from(d - b'0');
    }
    u32::try_from(value).map_err(|_| HandshakeError::BadPort)
}

/// The path of the host listener for guest-initiated connections to `port`: `<uds>_<port>`.
pub fn forward_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    s.into()
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
            Err(HandshakeError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT"),
            Err(HandshakeError::NotConnect)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT1"),
            Err(HandshakeError::NotConnect)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT "),
            Err(HandshakeError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT -1"),
            Err(HandshakeError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT 1 2"),
            Err(HandshakeError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"HELLO 1"),
            Err(HandshakeError::NotConnect)
        );
        assert_eq!(parse_connect_line(b""), Err(HandshakeError::NotConnect));
    }

    #[test]
    fn lines_round_trip() {
        let c = connect_line(1024);
        assert_eq!(parse_connect_line(c.trim_end().as_bytes()), Ok(1024));
        let ok = ok_line(77);
        assert_eq!(parse_ok_line(ok.trim_end().as_bytes()), Ok(77));
        assert!(connect_line(u32::MAX).len() <= MAX_LINE);
    }

    #[test]
    fn ok_lines() {
        assert_eq!(parse_ok_line(b"OK 5\r"), Ok(5));
        assert!(matches!(
            parse_ok_line(b"NO 5"),
            Err(HandshakeError::NotOk(_))
        ));
        assert!(matches!(
            parse_ok_line(b"OK x"),
            Err(HandshakeError::NotOk(_))
        ));
    }

    #[test]
    fn forward_path_appends_port() {
        assert_eq!(
            forward_path(Path::new("/run/v.sock"), 52),
            Path::new("/run/v.sock_52")
        );
    }
}
