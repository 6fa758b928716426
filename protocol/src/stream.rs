//! The header that opens every raw byte stream: exec stdio and connect-mode socket bridges on
//! the guest's stream port, accepted connections of listen-mode bridges on a host port.
//!
//! Layout (16 bytes): `"CAPS"`, version u8 (1), kind u8, two reserved zero bytes, id u64 BE.
//! On the stream port the agent answers with a 4-byte u32 BE errno (0: attached; the stream's
//! bytes follow) before any data; on a non-zero answer it closes the connection.

use std::io::{self, Read, Write};

/// Magic bytes of a stream header.
pub const STREAM_MAGIC: [u8; 4] = *b"CAPS";
/// Version of the stream header layout.
pub const STREAM_VERSION: u8 = 1;
/// Length of a stream header.
pub const STREAM_HEADER_LEN: usize = 16;
/// Length of the agent's answer to a stream header.
pub const STREAM_ACK_LEN: usize = 4;

/// What a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// Host → process stdin (id: exec id). Host half-close (or CloseStdin) closes stdin.
    Stdin = 1,
    /// Process stdout → host (id: exec id). EOF when every writer has closed it.
    Stdout = 2,
    /// Process stderr → host (id: exec id).
    Stderr = 3,
    /// Both directions of a pseudo-terminal (id: exec id of a `tty` exec).
    Tty = 4,
    /// Connect-mode socket bridge (id: bridge id from ConnectSocket).
    Socket = 5,
    /// One connection accepted by a listen-mode bridge, guest → host (id: listener id).
    Accepted = 6,
}

impl StreamKind {
    /// The kind of a wire value.
    pub fn from_u8(v: u8) -> Option<StreamKind> {
        Some(match v {
            1 => StreamKind::Stdin,
            2 => StreamKind::Stdout,
            3 => StreamKind::Stderr,
            4 => StreamKind::Tty,
            5 => StreamKind::Socket,
            6 => StreamKind::Accepted,
            _ => return None,
        })
    }
}

/// Why a stream header is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamHeaderError {
    #[error("stream header does not start with \"CAPS\"")]
    BadMagic,
    #[error("stream header version {0} is not supported (want {STREAM_VERSION})")]
    BadVersion(u8),
    #[error("unknown stream kind {0}")]
    BadKind(u8),
    #[error("reserved stream header bytes are not zero")]
    Reserved,
}

/// A decoded stream header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    pub kind: StreamKind,
    pub id: u64,
}

impl StreamHeader {
    pub fn new(kind: StreamKind, id: u64) -> Self {
        StreamHeader { kind, id }
    }

    pub fn encode(&self) -> [u8; STREAM_HEADER_LEN] {
        let mut b = [0u8; STREAM_HEADER_LEN];
        b[0..4].copy_from_slice(&STREAM_MAGIC);
        b[4] = STREAM_VERSION;
        b[5] = self.kind as u8;
        b[8..16].copy_from_slice(&self.id.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; STREAM_HEADER_LEN]) -> Result<Self, StreamHeaderError> {
        if b[0..4] != STREAM_MAGIC {
            return Err(StreamHeaderError::BadMagic);
        }
        if b[4] != STREAM_VERSION {
            return Err(StreamHeaderError::BadVersion(b[4]));
        }
        let kind = StreamKind::from_u8(b[5]).ok_or(StreamHeaderError::BadKind(b[5]))?;
        if b[6] != 0 || b[7] != 0 {
            return Err(StreamHeaderError::Reserved);
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..16]);
        Ok(StreamHeader {
            kind,
            id: u64::from_be_bytes(id),
        })
    }
}

/// Host side of the stream port: sends `header` and reads the agent's answer. `Ok(())` means
/// the stream is attached; an agent refusal comes back as an `io::Error` carrying the errno.
pub fn attach<S: Read + Write>(stream: &mut S, header: StreamHeader) -> io::Result<()> {
    stream.write_all(&header.encode())?;
    stream.flush()?;
    let mut ack = [0u8; STREAM_ACK_LEN];
    stream.read_exact(&mut ack)?;
    match i32::from_be_bytes(ack) {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Reads a stream header (blocking), e.g. on the host listener of a listen-mode bridge.
pub fn read_header(r: &mut impl Read) -> io::Result<StreamHeader> {
    let mut b = [0u8; STREAM_HEADER_LEN];
    r.read_exact(&mut b)?;
    StreamHeader::decode(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        for kind in 1..=6 {
            let kind = StreamKind::from_u8(kind).unwrap();
            let h = StreamHeader::new(kind, 0x0102_0304_0506_0708);
            assert_eq!(StreamHeader::decode(&h.encode()), Ok(h));
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = StreamHeader::new(StreamKind::Stdout, 9).encode();
        let mut b = good;
        b[0] = b'X';
        assert_eq!(StreamHeader::decode(&b), Err(StreamHeaderError::BadMagic));
        let mut b = good;
        b[4] = 2;
        assert_eq!(
            StreamHeader::decode(&b),
            Err(StreamHeaderError::BadVersion(2))
        );
        let mut b = good;
        b[5] = 0;
        assert_eq!(StreamHeader::decode(&b), Err(StreamHeaderError::BadKind(0)));
        let mut b = good;
        b[7] = 1;
        assert_eq!(StreamHeader::decode(&b), Err(StreamHeaderError::Reserved));
    }

    #[test]
    fn attach_reports_the_agents_errno() {
        struct Fake {
            out: Vec<u8>,
            ack: std::io::Cursor<Vec<u8>>,
        }
        impl Read for Fake {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.ack.read(b)
            }
        }
        impl Write for Fake {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.out.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let h = StreamHeader::new(StreamKind::Stdin, 4);
        let mut f = Fake {
            out: vec![],
            ack: std::io::Cursor::new(2i32.to_be_bytes().to_vec()),
        };
        let err = attach(&mut f, h).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(2));
        assert_eq!(f.out, h.encode());
        let mut f = Fake {
            out: vec![],
            ack: std::io::Cursor::new(vec![0, 0, 0, 0]),
        };
        attach(&mut f, h).unwrap();
    }
}
