//! Receive: a frame read from the TAP (virtio-net header first) is scattered over as many of
//! the guest's receive chains as it needs. With VIRTIO_NET_F_MRG_RXBUF that may be several,
//! and the header's `num_buffers` says how many; without it the frame must fit one chain.
//!
//! Two ways in:
//! - direct ([`read_direct`]): when the guest's posted buffers have room for the largest
//!   frame (the usual case: a Linux guest keeps 256 mergeable buffers posted), the frame is
//!   read from the TAP straight into them with one `readv`; the chains it did not fill stay
//!   held for the next frame ([`DirectScratch`]). No host copy.
//! - through the host buffer ([`deliver`]): otherwise (few or small buffers, or a chain the
//!   device refuses), the frame is read into a host buffer and then scattered; when the guest
//!   has not posted enough buffers yet, nothing is returned: the queue is rewound and the
//!   frame waits in the host buffer until the guest adds buffers.

use std::io;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
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
    /// The posted buffers are too few, too small or refused: use [`deliver`]. The chains
    /// the direct path held are back in the ring.
    Fallback,
    /// The TAP had nothing (WouldBlock) or failed; the held chains stay held.
    Tap(io::Error),
}

/// A receive chain the direct path took from the ring but has not filled yet.
#[derive(Debug)]
struct Held {
    head: u16,
    room: usize,
    /// The chain's buffers in guest memory, in order.
    segs: Vec<(GuestAddress, u32)>,
    /// The same buffers as host addresses and lengths, ready for `readv`.
    host: Vec<(usize, usize)>,
}

/// The chains the direct path holds between frames, so that a small frame does not take and
/// give back enough chains for the largest one every time. They are always the last chains
/// taken from the ring, in order, so giving them back is rewinding the ring by their count.
/// The host addresses stay valid while the device keeps the guest memory it was activated
/// with; [`DirectScratch::forget`] must run when it lets go of it (reset).
#[derive(Debug, Default)]
pub struct DirectScratch {
    held: std::collections::VecDeque<Held>,
    room: usize,
}

impl DirectScratch {
    /// Gives the held chains back to the ring.
    pub fn release(&mut self, queue: &mut Queue) {
        let n = self.held.len() as u16;
        queue.set_next_avail(queue.next_avail().wrapping_sub(n));
        self.forget();
    }

    pub fn holds_chains(&self) -> bool {
        !self.held.is_empty()
    }

    /// Drops the held chains without touching the ring (after a device reset).
    pub fn forget(&mut self) {
        self.held.clear();
        self.room = 0;
    }

    /// Takes chains until the held ones have room for the largest frame; false when the ring
    /// runs dry first or a chain is refused (the refused chain goes back to the ring too).
    fn top_up(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue, mergeable: bool) -> bool {
        let need = HDR_LEN + MAX_FRAME_LEN;
        while self.room < need {
            if self.held.len() >= usize::from(queue.size()) || (!mergeable && !self.held.is_empty())
            {
                return false;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return false;
            };
            let mut held = Held {
                head: chain.head_index(),
                room: 0,
                segs: Vec::new(),
                host: Vec::new(),
            };
            let mut ok = true;
            for (count, desc) in chain.enumerate() {
                let (addr, len) = (desc.addr(), desc.len());
                if count == MAX_CHAIN_DESCS
                    || !desc.is_write_only()
                    || (len > 0 && !mem.check_range(addr, len as usize))
                {
                    ok = false;
                    break;
                }
                for slice in mem.get_slices(addr, len as usize) {
                    let Ok(slice) = slice else {
                        ok = false;
                        break;
                    };
                    let guard = slice.ptr_guard_mut();
                    held.host.push((guard.as_ptr() as usize, slice.len()));
                }
                held.room += len as usize;
                held.segs.push((addr, len));
            }
            if !ok || held.room == 0 {
                queue.go_to_previous_position();
                return false;
            }
            self.room += held.room;
            self.held.push_back(held);
        }
        true
    }
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
    if !scratch.top_up(mem, queue, mergeable) {
        scratch.release(queue);
        return Direct::Fallback;
    }
    let iovs: Vec<libc::iovec> = scratch
        .held
        .iter()
        .flat_map(|h| h.host.iter())
        .map(|&(ptr, len)| libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    // SAFETY: every iovec is a guest memory slice of a chain the guest gave the device for
    // writing, taken from the guest memory the device holds (the mapping outlives the held
    // chains: they are forgotten when the device lets go of the memory).
    let n = match unsafe { tap.readv(&iovs) } {
        Ok(n) if n >= HDR_LEN => n,
        Ok(n) => return Direct::Tap(io::Error::other(format!("{n}-byte read"))),
        Err(e) => return Direct::Tap(e),
    };
    // The frame filled the first held chains in order; the rest stay held.
    let mut used = 0usize;
    let mut left = n;
    for h in &scratch.held {
        if left == 0 {
            break;
        }
        left -= h.room.min(left);
        used += 1;
    }
    // The header starts the first chain's buffers, possibly split over its descriptors.
    let count = (used as u16).to_le_bytes();
    let all = [
        (NUM_BUFFERS_OFFSET, count[0]),
        (NUM_BUFFERS_OFFSET + 1, count[1]),
        (0, 0), // flags
    ];
    let patches = if guest_csum { &all[..2] } else { &all[..] };
    let segs = scratch.held.iter().flat_map(|h| h.segs.iter());
    for &(pos, byte) in patches {
        let mut at = pos;
        for &(addr, len) in segs.clone() {
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
    for h in scratch.held.drain(..used) {
        let len = h.room.min(left);
        left -= len;
        scratch.room -= h.room;
        let _ = queue.add_used(mem, h.head, len as u32);
    }
    Direct::Delivered(n)
}
