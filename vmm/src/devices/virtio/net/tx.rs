//! Transmit: one descriptor chain is one frame from the guest, its virtio-net header first.
//! The chain is checked whole before anything is sent; the header is copied out of guest
//! memory once, checked, and written from that copy (the guest cannot change it afterwards);
//! the frame itself goes from guest memory to the TAP in one `writev`.

use std::io;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::counters::{DropReason, LogLimiter};
use super::header::{VnetHeader, ETH_HLEN, HDR_LEN};
use super::tap::Tap;
use super::{MAX_CHAIN_DESCS, MAX_FRAME_LEN};
use crate::memory::GuestMemoryMmap;

/// What became of one transmit chain.
#[derive(Debug, PartialEq, Eq)]
pub enum TxOutcome {
    /// The frame (this many bytes, without the header) is on the TAP.
    Sent(usize),
    /// The TAP is full; the chain must be offered again later.
    TapFull,
    Dropped(DropReason),
}

/// Sends the frame of `chain` to `tap`.
pub fn send(
    tap: &Tap,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    features: u64,
    log: &mut LogLimiter,
) -> TxOutcome {
    let mut segs = [(GuestAddress(0), 0u32); MAX_CHAIN_DESCS];
    let mut count = 0usize;
    let mut total = 0usize;
    for desc in chain {
        if count == MAX_CHAIN_DESCS || desc.is_write_only() {
            return TxOutcome::Dropped(DropReason::TxBadChain);
        }
        let len = desc.len();
        if len > 0 && !mem.check_range(desc.addr(), len as usize) {
            return TxOutcome::Dropped(DropReason::TxBadChain);
        }
        let Some(sum) = total.checked_add(len as usize) else {
            return TxOutcome::Dropped(DropReason::TxBadChain);
        };
        total = sum;
        if total > HDR_LEN + MAX_FRAME_LEN {
            return TxOutcome::Dropped(DropReason::TxTooLarge);
        }
        segs[count] = (desc.addr(), len);
        count += 1;
    }
    let segs = &segs[..count];
    if total < HDR_LEN + ETH_HLEN {
        return TxOutcome::Dropped(DropReason::TxShort);
    }
    let frame_len = total - HDR_LEN;

    // The header may be split across descriptors.
    let mut hdr = [0u8; HDR_LEN];
    let mut have = 0usize;
    let mut first_data = (0usize, 0u32); // (segment, offset) where the frame starts
    for (i, &(addr, len)) in segs.iter().enumerate() {
        let n = (HDR_LEN - have).min(len as usize);
        if mem.read_slice(&mut hdr[have..have + n], addr).is_err() {
            return TxOutcome::Dropped(DropReason::TxBadChain);
        }
        have += n;
        if have == HDR_LEN {
            first_data = (i, n as u32);
            break;
        }
    }
    let header = VnetHeader::from_bytes(&hdr);
    if let Err(e) = header.check_tx(features, frame_len) {
        log.warn(tap.name(), || format!("transmit header refused: {e}"));
        return TxOutcome::Dropped(DropReason::TxBadHeader);
    }

    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(count + 2);
    let mut guards = Vec::with_capacity(count + 2);
    iovs.push(libc::iovec {
        iov_base: hdr.as_ptr() as *mut libc::c_void,
        iov_len: HDR_LEN,
    });
    let (start, offset) = first_data;
    for (i, &(addr, len)) in segs.iter().enumerate().skip(start) {
        let skip = if i == start { offset } else { 0 };
        let (Some(addr), Some(len)) = (addr.checked_add(u64::from(skip)), len.checked_sub(skip))
        else {
            return TxOutcome::Dropped(DropReason::TxBadChain);
        };
        for slice in mem.get_slices(addr, len as usize) {
            let Ok(slice) = slice else {
                return TxOutcome::Dropped(DropReason::TxBadChain);
            };
            let guard = slice.ptr_guard();
            iovs.push(libc::iovec {
                iov_base: guard.as_ptr() as *mut libc::c_void,
                iov_len: slice.len(),
            });
            guards.push(guard);
        }
    }
    // SAFETY: the first iovec points to `hdr`, alive on this stack frame; the others point
    // into guest memory slices that `guards` keeps mapped, each with its slice's length.
    let written = unsafe { tap.writev(&iovs) };
    drop(guards);
    match written {
        Ok(_) => TxOutcome::Sent(frame_len),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => TxOutcome::TapFull,
        Err(e) => {
            log.warn(tap.name(), || {
                format!("the TAP refused a {frame_len}-byte frame: {e} (is the interface up?)")
            });
            TxOutcome::Dropped(DropReason::TxTapError)
        }
    }
}
