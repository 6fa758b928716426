//! Parsing a virtio-blk request out of a descriptor chain (virtio 1.2 section 5.2.6).
//!
//! A request is a 16-byte header (type, reserved, sector) in device-readable buffers, then the
//! data (device-readable for writes, discard and write-zeroes; device-writable for reads and
//! GET_ID), then one status byte: the last byte of the device-writable part. Everything here
//! comes from the guest, so every length, address and count is checked; the device must not
//! rely on how the driver splits the request into descriptors.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::disk::Segment;
use crate::memory::GuestMemoryMmap;

/// Size of `struct virtio_blk_outhdr`.
pub const HEADER_SIZE: u32 = 16;

/// A request whose status byte can be reported.
#[derive(Debug)]
pub struct Request {
    pub req_type: u32,
    pub sector: u64,
    /// Device-readable bytes after the header.
    pub readable: Vec<Segment>,
    /// Device-writable bytes before the status byte.
    pub writable: Vec<Segment>,
    pub status_addr: GuestAddress,
}

impl Request {
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// What is wrong with a descriptor chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No device-writable byte at the end of the chain: the status cannot be reported, so the
    /// request is returned with nothing written.
    #[error("no device-writable status byte at the end of the chain")]
    NoStatus,
    /// The status byte is known; the request is answered with IOERR.
    #[error("malformed request: {0}")]
    Malformed(&'static str, GuestAddress),
}

/// Splits `chain` into header, data and status. Descriptors that lie outside guest memory make
/// the request malformed before any I/O is done.
pub fn parse(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<Request, ParseError> {
    let mut descs: Vec<(GuestAddress, u32, bool)> = Vec::new();
    for desc in chain {
        descs.push((desc.addr(), desc.len(), desc.is_write_only()));
    }

    let status_addr = match descs.last() {
        Some(&(addr, len, true)) if len > 0 => addr
            .checked_add(u64::from(len) - 1)
            .filter(|a| mem.check_address(*a).is_some())
            .ok_or(ParseError::NoStatus)?,
        _ => return Err(ParseError::NoStatus),
    };
    let malformed = |why| ParseError::Malformed(why, status_addr);

    let first_writable = descs.iter().position(|d| d.2).unwrap_or(descs.len());
    if descs[first_writable..].iter().any(|d| !d.2) {
        return Err(malformed(
            "device-readable buffer after a device-writable one",
        ));
    }
    for &(addr, len, _) in &descs {
        if len > 0 && !mem.check_range(addr, len as usize) {
            return Err(malformed("buffer outside guest memory"));
        }
    }

    // The header may be split across device-readable descriptors.
    let mut header = [0u8; HEADER_SIZE as usize];
    let mut have = 0usize;
    let mut readable = Vec::new();
    for &(addr, len, _) in &descs[..first_writable] {
        let mut addr = addr;
        let mut len = len;
        if have < header.len() {
            let n = (header.len() - have).min(len as usize);
            mem.read_slice(&mut header[have..have + n], addr)
                .map_err(|_| malformed("header outside guest memory"))?;
            have += n;
            len -= n as u32;
            addr = addr
                .checked_add(n as u64)
                .ok_or(malformed("header outside guest memory"))?;
        }
        if len > 0 {
            readable.push(Segment { addr, len });
        }
    }
    if have < header.len() {
        return Err(malformed("request header shorter than 16 bytes"));
    }

    let mut writable: Vec<Segment> = descs[first_writable..]
        .iter()
        .map(|&(addr, len, _)| Segment { addr, len })
        .collect();
    // The last writable byte is the status.
    if let Some(last) = writable.last_mut() {
        last.len -= 1;
    }
    writable.retain(|s| s.len > 0);

    let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);
    Ok(Request {
        req_type,
        sector,
        readable,
        writable,
        status_addr,
    })
}
