//! A mock virtio-vsock driver over in-process guest memory, for tests, the fuzz target and the
//! benchmark: it lays out rx, tx and event split queues, hands the device its `Queue`s, and
//! plays the guest side of each queue (descriptor allocation, avail ring with wrap-around, used
//! ring collection).

use std::collections::HashMap;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::proto::{Header, HDR_LEN};

/// Guest memory of the mock: 64 MiB from address 0.
pub const MEM_SIZE: usize = 64 << 20;
/// Where rx buffers live: after the rings, before the tx buffers.
const RX_AREA: (u64, u64) = (0x10_0000, 0x200_0000);

/// Errors of the mock driver (these are test-setup failures, not device behaviour).
#[derive(Debug, thiserror::Error)]
pub enum MockDriverError {
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("queue: {0}")]
    Queue(String),
    #[error("no free descriptors")]
    Full,
}

/// The driver's view of one split queue.
#[derive(Debug)]
pub struct DriverQueue {
    start: GuestAddress,
    size: u16,
    desc_addr: u64,
    avail_addr: u64,
    used_addr: u64,
    buf_base: u64,
    buf_size: u32,
    free: Vec<u16>,
    /// Driver-side avail index and last used index seen.
    avail_idx: u16,
    used_seen: u16,
    chains: HashMap<u16, Vec<u16>>,
    /// Buffer address of each in-flight chain's head descriptor.
    heads: HashMap<u16, u64>,
}

impl DriverQueue {
    fn new(start: u64, size: u16, buf_base: u64, buf_size: u32) -> Self {
        Self {
            start: GuestAddress(start),
            size,
            desc_addr: 0,
            avail_addr: 0,
            used_addr: 0,
            buf_base,
            buf_size,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            used_seen: 0,
            chains: HashMap::new(),
            heads: HashMap::new(),
        }
    }

    /// Address of descriptor `i`'s buffer.
    pub fn buf_addr(&self, i: u16) -> u64 {
        self.buf_base + u64::from(i) * u64::from(self.buf_size)
    }

    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    pub fn in_flight(&self) -> usize {
        self.chains.len()
    }
}

fn store_desc(
    mem: &GuestMemoryMmap,
    dq: &DriverQueue,
    index: u16,
    d: Descriptor,
) -> Result<(), MockDriverError> {
    let raw = RawDescriptor::from(d);
    mem.write_obj(raw, GuestAddress(dq.desc_addr + 16 * u64::from(index)))
        .map_err(|e| MockDriverError::Memory(e.to_string()))
}

/// Puts the chain headed by `idx[0]` into the avail ring and publishes it.
fn publish(
    mem: &GuestMemoryMmap,
    dq: &mut DriverQueue,
    idx: Vec<u16>,
) -> Result<u16, MockDriverError> {
    let head = idx[0];
    let slot = u64::from(dq.avail_idx % dq.size);
    let err = |e: vm_memory::GuestMemoryError| MockDriverError::Memory(e.to_string());
    mem.write_obj(head.to_le(), GuestAddress(dq.avail_addr + 4 + 2 * slot))
        .map_err(err)?;
    dq.avail_idx = dq.avail_idx.wrapping_add(1);
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    mem.write_obj(dq.avail_idx.to_le(), GuestAddress(dq.avail_addr + 2))
        .map_err(err)?;
    dq.chains.insert(head, idx);
    Ok(head)
}

/// One used-ring entry: the chain's head and the length the device reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub head: u16,
    pub len: u32,
    /// Buffer address of the chain's head descriptor.
    pub addr: u64,
}

/// The mock guest: memory, the three queues (driver and device views).
pub struct MockDriver {
    pub mem: GuestMemoryMmap,
    pub rx: DriverQueue,
    pub tx: DriverQueue,
    pub ev: DriverQueue,
    /// The device-side queues, as the transport would hand them over.
    pub rxq: Queue,
    pub txq: Queue,
    pub evq: Queue,
}

/// Which queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q {
    Rx,
    Tx,
    Ev,
}

impl MockDriver {
    /// Queues of `size` entries; rx buffers of `rx_buf` bytes (header included), tx buffers of
    /// 64 KiB + header.
    pub fn new(size: u16, rx_buf: u32) -> Result<Self, MockDriverError> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .map_err(|e| MockDriverError::Memory(e.to_string()))?;
        let tx_buf = 64 * 1024 + HDR_LEN as u32;
        let rx = DriverQueue::new(0x1_0000, size, 0x10_0000, rx_buf);
        let tx = DriverQueue::new(0x4_0000, size, 0x200_0000, tx_buf);
        let ev = DriverQueue::new(0x7_0000, size, 0x8_0000, 8);
        let size_end = 0x200_0000 + u64::from(size) * u64::from(tx_buf);
        if size_end > MEM_SIZE as u64 || u64::from(size) * u64::from(rx_buf) > 0x1f0_0000 {
            return Err(MockDriverError::Memory("queue buffers do not fit".into()));
        }
        // The rings are laid out here rather than by `virtio_queue::mock::MockSplitQueue`:
        // in virtio-queue 0.18 its avail ring's `end()` counts entries instead of bytes, so for
        // queues of more than a few entries its used ring overlaps the avail ring; and every
        // new view of it re-zeroes the ring indices.
        let make = |q: &mut DriverQueue| -> Result<Queue, MockDriverError> {
            let n = u64::from(q.size);
            q.desc_addr = q.start.0;
            q.avail_addr = q.desc_addr + 16 * n;
            q.used_addr = (q.avail_addr + 6 + 2 * n).next_multiple_of(4);
            let zero = vec![0u8; (q.used_addr + 6 + 8 * n - q.desc_addr) as usize];
            mem.write_slice(&zero, q.start)
                .map_err(|e| MockDriverError::Memory(e.to_string()))?;
            let err = |e: virtio_queue::Error| MockDriverError::Queue(e.to_string());
            let mut queue = Queue::new(q.size).map_err(err)?;
            queue.set_size(q.size);
            let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            let (lo, hi) = split(q.desc_addr);
            queue.set_desc_table_address(lo, hi);
            let (lo, hi) = split(q.avail_addr);
            queue.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(q.used_addr);
            queue.set_used_ring_address(lo, hi);
            queue.set_ready(true);
            if !queue.is_valid(&mem) {
                return Err(MockDriverError::Queue("queue layout not valid".into()));
            }
            Ok(queue)
        };
        let (mut rx, mut tx, mut ev) = (rx, tx, ev);
        let rxq = make(&mut rx)?;
        let txq = make(&mut tx)?;
        let evq = make(&mut ev)?;
        Ok(Self {
            mem,
            rx,
            tx,
            ev,
            rxq,
            txq,
            evq,
        })
    }

    fn dq(&mut self, q: Q) -> &mut DriverQueue {
        match q {
            Q::Rx => &mut self.rx,
            Q::Tx => &mut self.tx,
            Q::Ev => &mut self.ev,
        }
    }

    /// Moves both views of queue `q` to index `idx` (to test u16 wrap-around of the rings).
    pub fn set_ring_index(&mut self, q: Q, idx: u16) {
        let dq = self.dq(q);
        dq.avail_idx = idx;
        dq.used_seen = idx;
        let (avail, used) = (dq.avail_addr, dq.used_addr);
        let _ = self.mem.write_obj(idx.to_le(), GuestAddress(avail + 2));
        let _ = self.mem.write_obj(idx.to_le(), GuestAddress(used + 2));
        let devq = match q {
            Q::Rx => &mut self.rxq,
            Q::Tx => &mut self.txq,
            Q::Ev => &mut self.evq,
        };
        devq.set_next_avail(idx);
        devq.set_next_used(idx);
    }

    /// Publishes a chain of raw descriptors `(addr, len, writable)`; descriptor indices are
    /// allocated by the mock and linked with NEXT. Returns the head index.
    pub fn push_chain(&mut self, q: Q, descs: &[(u64, u32, bool)]) -> Result<u16, MockDriverError> {
        let mem = self.mem.clone();
        let dq = self.dq(q);
        if descs.is_empty() || dq.free.len() < descs.len() {
            return Err(MockDriverError::Full);
        }
        let idx: Vec<u16> = (0..descs.len()).filter_map(|_| dq.free.pop()).collect();
        for (k, &(addr, len, writable)) in descs.iter().enumerate() {
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = idx.get(k + 1).copied().unwrap_or(0);
            if k + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = Descriptor::new(addr, len, flags, next);
            store_desc(&mem, dq, idx[k], d)?;
        }
        dq.heads.insert(idx[0], descs[0].0);
        publish(&mem, dq, idx)
    }

    /// Publishes a chain whose descriptors are written verbatim (`next` fields included), for
    /// malformed-chain tests. Returns the head index, which is `descs[0]`'s slot.
    pub fn push_raw(&mut self, q: Q, descs: &[Descriptor]) -> Result<u16, MockDriverError> {
        let mem = self.mem.clone();
        let dq = self.dq(q);
        if descs.is_empty() || descs.len() > dq.free.len() {
            return Err(MockDriverError::Full);
        }
        let idx: Vec<u16> = (0..descs.len()).filter_map(|_| dq.free.pop()).collect();
        for (k, d) in descs.iter().enumerate() {
            store_desc(&mem, dq, idx[k], *d)?;
        }
        dq.heads.insert(idx[0], descs[0].addr().0);
        publish(&mem, dq, idx)
    }

    /// Descriptor indices the next `push_*` would use, in order (for building raw chains whose
    /// `next` fields point at real slots).
    pub fn next_indices(&self, q: Q, n: usize) -> Vec<u16> {
        let dq = match q {
            Q::Rx => &self.rx,
            Q::Tx => &self.tx,
            Q::Ev => &self.ev,
        };
        dq.free.iter().rev().take(n).copied().collect()
    }

    /// Collects the used-ring entries the device added since the last call, and frees their
    /// descriptors.
    pub fn take_used(&mut self, q: Q) -> Vec<Used> {
        let mem = self.mem.clone();
        let dq = self.dq(q);
        let used_idx = u16::from_le(mem.read_obj(GuestAddress(dq.used_addr + 2)).unwrap_or(0));
        let mut out = Vec::new();
        while dq.used_seen != used_idx {
            let slot = u64::from(dq.used_seen % dq.size);
            let elem = GuestAddress(dq.used_addr + 4 + 8 * slot);
            let (Ok(id), Ok(len)) = (
                mem.read_obj::<u32>(elem),
                mem.read_obj::<u32>(GuestAddress(elem.0 + 4)),
            ) else {
                break;
            };
            let head = u32::from_le(id) as u16;
            if let Some(idx) = dq.chains.remove(&head) {
                dq.free.extend(idx);
            }
            let addr = dq.heads.remove(&head).unwrap_or(0);
            out.push(Used {
                head,
                len: u32::from_le(len),
                addr,
            });
            dq.used_seen = dq.used_seen.wrapping_add(1);
        }
        out
    }

    /// Sends one packet on the tx queue: header and data in two descriptors, or in one when
    /// `single` (as Linux 6.2+ may do). `hdr.len` is written as given.
    pub fn send(
        &mut self,
        hdr: &Header,
        data: &[u8],
        single: bool,
    ) -> Result<u16, MockDriverError> {
        let idx = self.next_indices(Q::Tx, if data.is_empty() || single { 1 } else { 2 });
        if idx.is_empty() {
            return Err(MockDriverError::Full);
        }
        let a0 = self.tx.buf_addr(idx[0]);
        self.write(a0, &hdr.to_bytes())?;
        if data.is_empty() {
            return self.push_chain(Q::Tx, &[(a0, HDR_LEN as u32, false)]);
        }
        if single {
            self.write(a0 + HDR_LEN as u64, data)?;
            let len = (HDR_LEN + data.len()) as u32;
            return self.push_chain(Q::Tx, &[(a0, len, false)]);
        }
        let a1 = self.tx.buf_addr(*idx.get(1).ok_or(MockDriverError::Full)?);
        self.write(a1, data)?;
        self.push_chain(
            Q::Tx,
            &[(a0, HDR_LEN as u32, false), (a1, data.len() as u32, false)],
        )
    }

    /// Sends one packet of `len` payload bytes in two descriptors without writing the payload:
    /// whatever the data buffer holds is sent (see [`MockDriver::fill_tx_buffers`]). For the
    /// benchmark, so that the mock guest producing data does not count as device work.
    pub fn send_in_place(&mut self, hdr: &Header, len: u32) -> Result<u16, MockDriverError> {
        let idx = self.next_indices(Q::Tx, 2);
        if idx.len() < 2 || len > self.tx.buf_size {
            return Err(MockDriverError::Full);
        }
        let (a0, a1) = (self.tx.buf_addr(idx[0]), self.tx.buf_addr(idx[1]));
        self.write(a0, &hdr.to_bytes())?;
        self.push_chain(Q::Tx, &[(a0, HDR_LEN as u32, false), (a1, len, false)])
    }

    /// Fills every tx buffer with `byte`.
    pub fn fill_tx_buffers(&mut self, byte: u8) -> Result<(), MockDriverError> {
        let buf = vec![byte; self.tx.buf_size as usize];
        for i in 0..self.tx.size {
            self.write(self.tx.buf_addr(i), &buf)?;
        }
        Ok(())
    }

    /// Posts up to `n` rx buffers (one write-only descriptor each); returns how many.
    pub fn post_rx(&mut self, n: usize) -> usize {
        let mut posted = 0;
        while posted < n {
            let Some(&i) = self.rx.free.last() else {
                break;
            };
            let addr = self.rx.buf_addr(i);
            let len = self.rx.buf_size;
            if self.push_chain(Q::Rx, &[(addr, len, true)]).is_err() {
                break;
            }
            posted += 1;
        }
        posted
    }

    /// Reads the packets the device placed into rx buffers since the last call. A buffer the
    /// device returned unused (length below a header) reads as a default header.
    pub fn take_rx(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.take_used(Q::Rx);
        used.iter()
            .map(|u| self.read_packet(u).unwrap_or_default())
            .collect()
    }

    /// The packet in a used rx buffer, or `None` when the device returned it unused.
    pub fn read_packet(&self, u: &Used) -> Option<(Header, Vec<u8>)> {
        let mut hb = [0u8; HDR_LEN];
        if (u.len as usize) < HDR_LEN {
            return None;
        }
        self.mem.read_slice(&mut hb, GuestAddress(u.addr)).ok()?;
        let hdr = Header::from_bytes(&hb);
        let n = (u.len as usize - HDR_LEN).min(hdr.len as usize);
        let mut data = vec![0u8; n];
        let _ = self
            .mem
            .read_slice(&mut data, GuestAddress(u.addr + HDR_LEN as u64));
        Some((hdr, data))
    }

    /// Whether `[addr, addr + len)` lies in the rx buffer area (away from the rings).
    pub fn in_rx_area(&self, addr: u64, len: u64) -> bool {
        addr >= RX_AREA.0 && addr.checked_add(len).is_some_and(|end| end <= RX_AREA.1)
    }

    /// Writes bytes into guest memory.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), MockDriverError> {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|e| MockDriverError::Memory(e.to_string()))
    }
}
