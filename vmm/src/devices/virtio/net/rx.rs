//! Receive: a frame read from the TAP (virtio-net header first) is scattered over as many of
//! the guest's receive chains as it needs. With VIRTIO_NET_F_MRG_RXBUF that may be several,
//! and the header's `num_buffers` says how many; without it the frame must fit one chain.
//!
//! When the guest has not posted enough buffers yet, nothing is returned: the queue is
//! rewound and the frame waits in the host buffer until the guest adds buffers.

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::counters::DropReason;
use super::header::NUM_BUFFERS_OFFSET;
use super::MAX_CHAIN_DESCS;
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
