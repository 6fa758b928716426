//! ttrpc framing: a 10-byte header (payload length u32 BE, stream id u32 BE, type u8, flags u8)
//! followed by `length` bytes of protobuf (`Request` for type 1, `Response` for type 2).
//!
//! Readers check the length against a maximum *before* reading the payload; an oversized frame is
//! skipped in bounded chunks so the connection stays usable and the peer can be told why.

use std::io::{self, Read, Write};

/// Size of the frame header.
pub const HEADER_LEN: usize = 10;

/// Frame type of a request.
pub const TYPE_REQUEST: u8 = 1;
/// Frame type of a response.
pub const TYPE_RESPONSE: u8 = 2;
/// Frame type of a stream data frame (ttrpc streaming; capsule neither sends nor accepts it).
pub const TYPE_DATA: u8 = 3;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub stream_id: u32,
    pub kind: u8,
    pub flags: u8,
}

impl FrameHeader {
    /// Encodes the header in network byte order.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.length.to_be_bytes());
        out[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        out[8] = self.kind;
        out[9] = self.flags;
        out
    }

    /// Decodes a header.
    pub fn decode(buf: &[u8; HEADER_LEN]) -> Self {
        FrameHeader {
            length: u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
            stream_id: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            kind: buf[8],
            flags: buf[9],
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The connection ended inside a frame.
    #[error("connection closed inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    /// The payload is larger than the limit; it has been skipped when `skipped` is true.
    #[error("frame of {length} bytes exceeds the maximum message size of {max} bytes")]
    Oversized {
        header: FrameHeader,
        length: u32,
        max: u32,
        skipped: bool,
    },
    /// Stream id 0 is reserved.
    #[error("frame with stream id 0")]
    ZeroStreamId,
    #[error("frame I/O")]
    Io(#[source] io::Error),
}

/// A whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Vec<u8>,
}

/// Reads exactly `buf.len()` bytes; `Ok(n < len)` only on EOF.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame, refusing payloads longer than `max`. An oversized payload is read and
/// dropped in 8 KiB chunks (never buffered) and reported as [`FrameError::Oversized`] with
/// `skipped: true`, so the caller can answer on that stream id and go on.
pub fn read_frame(r: &mut impl Read, max: u32) -> Result<Frame, FrameError> {
    let mut hdr = [0u8; HEADER_LEN];
    match read_full(r, &mut hdr).map_err(FrameError::Io)? {
        0 => return Err(FrameError::Closed),
        HEADER_LEN => {}
        got => {
            return Err(FrameError::Truncated {
                got,
                want: HEADER_LEN,
            })
        }
    }
    let header = FrameHeader::decode(&hdr);
    if header.length > max {
        let mut left = u64::from(header.length);
        let mut sink = [0u8; 8192];
        while left > 0 {
            let chunk = left.min(sink.len() as u64) as usize;
            let n = read_full(r, &mut sink[..chunk]).map_err(FrameError::Io)?;
            if n < chunk {
                return Err(FrameError::Truncated {
                    got: (u64::from(header.length) - left) as usize + n,
                    want: header.length as usize,
                });
            }
            left -= n as u64;
        }
        return Err(FrameError::Oversized {
            header,
            length: header.length,
            max,
            skipped: true,
        });
    }
    let mut payload = vec![0u8; header.length as usize];
    let got = read_full(r, &mut payload).map_err(FrameError::Io)?;
    if got < payload.len() {
        return Err(FrameError::Truncated {
            got,
            want: payload.len(),
        });
    }
    if header.stream_id == 0 {
        return Err(FrameError::ZeroStreamId);
    }
    Ok(Frame { header, payload })
}

/// Encodes a frame (header + payload) into one buffer, refusing payloads longer than `max`.
pub fn encode_frame(
    stream_id: u32,
    kind: u8,
    flags: u8,
    payload: &[u8],
    max: u32,
) -> Result<Vec<u8>, FrameError> {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let header = FrameHeader {
        length,
        stream_id,
        kind,
        flags,
    };
    if length > max {
        return Err(FrameError::Oversized {
            header,
            length,
            max,
            skipped: false,
        });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Writes one frame with a single `write_all`.
pub fn write_frame(
    w: &mut impl Write,
    stream_id: u32,
    kind: u8,
    payload: &[u8],
    max: u32,
) -> Result<(), FrameError> {
    let buf = encode_frame(stream_id, kind, 0, payload, max)?;
    w.write_all(&buf).map_err(FrameError::Io)?;
    w.flush().map_err(FrameError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_network_order() {
        let h = FrameHeader {
            length: 0x0102_0304,
            stream_id: 0x0506_0708,
            kind: TYPE_RESPONSE,
            flags: 0x80,
        };
        let b = h.encode();
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8, 2, 0x80]);
        assert_eq!(FrameHeader::decode(&b), h);
    }

    #[test]
    fn frame_round_trips() {
        let buf = encode_frame(3, TYPE_REQUEST, 0, b"hello", 1024).unwrap();
        let f = read_frame(&mut &buf[..], 1024).unwrap();
        assert_eq!(f.header.stream_id, 3);
        assert_eq!(f.header.kind, TYPE_REQUEST);
        assert_eq!(f.payload, b"hello");
    }

    #[test]
    fn oversized_frame_is_skipped_and_the_next_one_still_reads() {
        let mut wire = FrameHeader {
            length: 100,
            stream_id: 5,
            kind: TYPE_REQUEST,
            flags: 0,
        }
        .encode()
        .to_vec();
        wire.extend(std::iter::repeat_n(0xAAu8, 100));
        wire.extend(encode_frame(7, TYPE_REQUEST, 0, b"ok", 64).unwrap());
        let mut r = &wire[..];
        match read_frame(&mut r, 64) {
            Err(FrameError::Oversized {
                header,
                length,
                max,
                skipped,
            }) => {
                assert_eq!(header.stream_id, 5);
                assert_eq!((length, max, skipped), (100, 64, true));
            }
            other => panic!("expected Oversized, got {other:?}"),
        }
        let f = read_frame(&mut r, 64).unwrap();
        assert_eq!((f.header.stream_id, &f.payload[..]), (7, &b"ok"[..]));
    }

    #[test]
    fn oversized_header_claiming_4gib_does_not_allocate() {
        // Only the header is present: the reader must fail on truncation while skipping,
        // without allocating 4 GiB first.
        let wire = FrameHeader {
            length: u32::MAX,
            stream_id: 1,
            kind: TYPE_REQUEST,
            flags: 0,
        }
        .encode();
        assert!(matches!(
            read_frame(&mut &wire[..], 4 << 20),
            Err(FrameError::Truncated { got: 0, .. })
        ));
    }

    #[test]
    fn truncated_header_and_payload_are_errors() {
        let buf = encode_frame(1, TYPE_REQUEST, 0, b"abcdef", 64).unwrap();
        assert!(matches!(
            read_frame(&mut &buf[..4], 64),
            Err(FrameError::Truncated { got: 4, want: 10 })
        ));
        assert!(matches!(
            read_frame(&mut &buf[..13], 64),
            Err(FrameError::Truncated { got: 3, want: 6 })
        ));
        assert!(matches!(
            read_frame(&mut &buf[..0], 64),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn stream_id_zero_is_refused() {
        let buf = encode_frame(0, TYPE_REQUEST, 0, b"", 64).unwrap();
        assert!(matches!(
            read_frame(&mut &buf[..], 64),
            Err(FrameError::ZeroStreamId)
        ));
    }

    #[test]
    fn encoder_refuses_oversized_payloads() {
        assert!(matches!(
            encode_frame(1, TYPE_REQUEST, 0, &[0u8; 65], 64),
            Err(FrameError::Oversized { skipped: false, .. })
        ));
    }
}
