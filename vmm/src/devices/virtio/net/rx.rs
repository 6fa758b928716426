//! Receive: a frame read from the TAP (virtio-net header first) is scattered over as many of
//! the guest's receive chains as it needs. With VIRTIO_NET_F_MRG_RXBUF that may be several,
//! and the header's `num_buffers` says how many; without it the frame must fit one chain.
//!
//! Two ways in:
//! - direct ([`read_direct`]): when the guest's posted buffers have room for the largest
//!   frame (the usual case: a Linux guest keeps 256 mergeable buffers posted), the frame is
//!   read from the TAP straight into them with one `readv`; the chains it did not fill are
//!   given back to the ring. No host copy.
//! - through the host buffer ([`deliver`]): otherwise (few or small buffers, or a chain the
//!   device refuses), the frame is read into a host buffer and then scattered; when the guest
//!   has not posted enough buffers yet, nothing is returned: the queue is rewound and the
//!   frame waits in the host buffer until the guest adds buffers.

use std::io;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::counters::DropReason;
use super::header::{HDR_LEN, NUM_BUFFERS_OFFSET};
use super::tap::Tap;
use super::{MAX_CHAIN_DESCS, MAX_FRAME_LEN};
use crate::memory::GuestMemoryMmap;

/// What became of one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// In the guest, over this many buffers.
    Delivered(u16),
    /// Not enough buffers posted; the frame is kept.
    NoBuffers,
    /// The frame is gone; chains it had taken were returned empty.
    Dropped(DropReason),
}

/// Whether the driver has posted buffers the device has not taken yet.
pub fn has_buffers(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    queue
        .avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|idx| idx.0 != queue.next_avail())
}

/// Where the two bytes of `num_buffers` landed in guest memory.
type NumBuffersAt = [Option<GuestAddress>; 2];

/// Copies the start of `data` into `chain`, which must be all device-writable, inside guest
/// memory and at most [`MAX_CHAIN_DESCS`] long; returns the bytes written. `frame_offset` is
/// where `data` starts in the frame, to note where `num_buffers` goes.
fn fill_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    data: &[u8],
    frame_offset: usize,
    num_buffers_at: &mut NumBuffersAt,
) -> Result<usize, DropReason> {
    let mut segs = [(GuestAddress(0), 0u32); MAX_CHAIN_DESCS];
    let mut count = 0usize;
    let mut room = 0usize;
    for desc in chain {
        if count == MAX_CHAIN_DESCS || !desc.is_write_only() {
            return Err(DropReason::RxBadChain);
        }
        let len = desc.len();
        if len > 0 && !mem.check_range(desc.addr(), len as usize) {
            return Err(DropReason::RxBadChain);
        }
        room = room
            .checked_add(len as usize)
            .ok_or(DropReason::RxBadChain)?;
        segs[count] = (desc.addr(), len);
        count += 1;
    }
    if room == 0 {
        return Err(DropReason::RxBadChain);
    }
    let mut done = 0usize;
    for &(addr, len) in &segs[..count] {
        if done == data.len() {
            break;
        }
        let n = (len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], addr)
            .map_err(|_| DropReason::RxBadChain)?;
        for (i, at) in num_buffers_at.iter_mut().enumerate() {
            let pos = NUM_BUFFERS_OFFSET + i;
            let start = frame_offset + done;
            if (start..start + n).contains(&pos) {
                *at = addr.checked_add((pos - start) as u64);
            }
        }
        done += n;
    }
    Ok(done)
}

/// Places `frame` (header included) in the guest's receive buffers and returns them used.
/// `used` is scratch space for the chains the frame takes.
pub fn deliver(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &[u8],
    mergeable: bool,
    used: &mut Vec<(u16, u32)>,
) -> RxOutcome {
    used.clear();
    let start = queue.next_avail();
    let mut num_buffers_at: NumBuffersAt = [None; 2];
    let mut placed = 0usize;
    let mut failure = None;
    while placed < frame.len() {
        if used.len() >= usize::from(queue.size()) || (!mergeable && !used.is_empty()) {
            failure = Some(DropReason::RxNoRoom);
            break;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            queue.set_next_avail(start);
            return RxOutcome::NoBuffers;
        };
        let head = chain.head_index();
        match fill_chain(mem, chain, &frame[placed..], placed, &mut num_buffers_at) {
            Ok(n) => {
                used.push((head, n as u32));
                placed += n;
            }
            Err(why) => {
                used.push((head, 0));
                failure = Some(why);
                break;
            }
        }
    }
    if let Some(why) = failure {
        // Every chain this frame took goes back empty (the driver drops them as too short).
        for &(head, _) in used.iter() {
            let _ = queue.add_used(mem, head, 0);
        }
        return RxOutcome::Dropped(why);
    }
    let count = used.len() as u16;
    for (at, byte) in num_buffers_at.iter().zip(count.to_le_bytes()) {
        if let Some(at) = at {
            let _ = mem.write_obj(byte, *at);
        }
    }
    for &(head, len) in used.iter() {
        let _ = queue.add_used(mem, head, len);
    }
    RxOutcome::Delivered(count)
}

/// What the direct path did.
#[derive(Debug)]
pub enum Direct {
    /// A frame of this many bytes (header included) went straight into the guest.
    Delivered(usize),
    /// The posted buffers are too few, too small or refused: use [`deliver`].
    Fallback,
    /// The TAP had nothing (WouldBlock) or failed; nothing was taken from the queue.
    Tap(io::Error),
}

/// Scratch space of the direct path, kept between frames.
#[derive(Debug, Default)]
pub struct DirectScratch {
    /// Guest buffers, chain after chain.
    segs: Vec<(GuestAddress, u32)>,
    /// Per chain: head index and room.
    chains: Vec<(u16, usize)>,
}

/// Takes chains until they have room for the largest frame; None (queue rewound) when they
/// do not, or when one of them is refused.
fn collect(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    mergeable: bool,
    scratch: &mut DirectScratch,
) -> Option<()> {
    scratch.segs.clear();
    scratch.chains.clear();
    let need = HDR_LEN + MAX_FRAME_LEN;
    let mut room = 0usize;
    while room < need {
        if scratch.chains.len() >= usize::from(queue.size())
            || (!mergeable && !scratch.chains.is_empty())
        {
            return None;
        }
        let chain = queue.pop_descriptor_chain(mem)?;
        let head = chain.head_index();
        let mut chain_room = 0usize;
        for (count, desc) in chain.enumerate() {
            let len = desc.len();
            if count == MAX_CHAIN_DESCS
                || !desc.is_write_only()
                || (len > 0 && !mem.check_range(desc.addr(), len as usize))
            {
                return None;
            }
            chain_room += len as usize;
            scratch.segs.push((desc.addr(), len));
        }
        if chain_room == 0 {
            return None;
        }
        scratch.chains.push((head, chain_room));
        room += chain_room;
    }
    Some(())
}

/// Reads the next frame from `tap` straight into the guest's buffers when they have room for
/// any frame. `guest_csum` false clears the header's flags (the guest did not accept
/// checksum offload, so it gets no DATA_VALID).
pub fn read_direct(
    tap: &Tap,
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    mergeable: bool,
    guest_csum: bool,
    scratch: &mut DirectScratch,
) -> Direct {
    let start = queue.next_avail();
    if collect(mem, queue, mergeable, scratch).is_none() {
        queue.set_next_avail(start);
        return Direct::Fallback;
    }
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(scratch.segs.len() + 2);
    let mut guards = Vec::with_capacity(scratch.segs.len() + 2);
    for &(addr, len) in &scratch.segs {
        for slice in mem.get_slices(addr, len as usize) {
            let Ok(slice) = slice else {
                queue.set_next_avail(start);
                return Direct::Fallback;
            };
            let guard = slice.ptr_guard_mut();
            iovs.push(libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: slice.len(),
            });
            guards.push(guard);
        }
    }
    // SAFETY: every iovec points into a guest memory slice that `guards` keeps mapped, with
    // that slice's length; the guest gave these buffers to the device for writing.
    let read = unsafe { tap.readv(&iovs) };
    drop(guards);
    let n = match read {
        Ok(n) if n >= HDR_LEN => n,
        Ok(n) => {
            queue.set_next_avail(start);
            return Direct::Tap(io::Error::other(format!("{n}-byte read")));
        }
        Err(e) => {
            queue.set_next_avail(start);
            return Direct::Tap(e);
        }
    };
    // The frame filled the first chains in order; the rest go back to the ring.
    let mut left = n;
    let mut used = 0usize;
    for &(_, room) in &scratch.chains {
        if left == 0 {
            break;
        }
        left -= room.min(left);
        used += 1;
    }
    queue.set_next_avail(start.wrapping_add(used as u16));
    // The header starts the first chain's buffers, possibly split over its descriptors.
    let count = (used as u16).to_le_bytes();
    let all = [
        (NUM_BUFFERS_OFFSET, count[0]),
        (NUM_BUFFERS_OFFSET + 1, count[1]),
        (0, 0), // flags
    ];
    let patches = if guest_csum { &all[..2] } else { &all[..] };
    for &(pos, byte) in patches {
        let mut at = pos;
        for &(addr, len) in &scratch.segs {
            if at < len as usize {
                if let Some(a) = addr.checked_add(at as u64) {
                    let _ = mem.write_obj(byte, a);
                }
                break;
            }
            at -= len as usize;
        }
    }
    let mut left = n;
    for &(head, room) in &scratch.chains[..used] {
        let len = room.min(left);
        left -= len;
        let _ = queue.add_used(mem, head, len as u32);
    }
    Direct::Delivered(n)
}
