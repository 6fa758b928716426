//! virtio-blk (block device, virtio 1.2 section 5.2) backed by a raw image file.
//!
//! One request queue. Requests: IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES. A read-only
//! device offers VIRTIO_BLK_F_RO and answers writes with IOERR. Every malformed request —
//! sectors out of range, a length that is not a whole number of sectors, a header or status
//! buffer that is missing or too short, a buffer outside guest memory — is answered with an
//! IOERR or UNSUPP status; none of them is an error of the VMM.

pub mod disk;
pub mod request;

use std::io;
use std::path::PathBuf;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use self::disk::{Disk, DiskError, SegCursor, SECTOR_SIZE};
use self::request::{ParseError, Request};
use super::single_queue::SingleQueue;
use super::{device_type, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemoryMmap;

pub use self::disk::OpenError;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most segments in one DISCARD or WRITE_ZEROES request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Most sectors in one DISCARD or WRITE_ZEROES segment (4 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 23;
/// Most data in one IN or OUT request. Linux never sends more than a few MiB; a bound keeps
/// one request from occupying the event thread for long.
pub const MAX_REQUEST_BYTES: u64 = 64 << 20;
/// Discard alignment, in sectors (4 KiB: hole punching works on whole host blocks).
const DISCARD_ALIGN_SECTORS: u32 = 8;
/// Size of `struct virtio_blk_discard_write_zeroes`.
const DISCARD_SEG_SIZE: u64 = 16;
/// Size of the configuration space we expose (through `write_zeroes_may_unmap`).
const CONFIG_SIZE: usize = 60;

const NAME: &str = "virtio-blk";

/// How to back a block device.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// The raw image file.
    pub path: PathBuf,
    /// Offer VIRTIO_BLK_F_RO and open the file read-only.
    pub read_only: bool,
    /// Open the file with O_DIRECT (bypasses the host page cache; I/O uses a bounce buffer).
    pub direct: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes); defaults to
    /// `capsule-<inode>` of the image file.
    pub id: Option<String>,
}

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The device id is longer than VIRTIO_BLK_ID_BYTES.
    #[error("block device id {0:?} is longer than 20 bytes")]
    IdTooLong(String),
    /// The activation eventfd could not be created.
    #[error("cannot create the block device's activation event")]
    Event(#[source] io::Error),
}

/// Counters of the device's work, for diagnostics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Requests answered IOERR or UNSUPP, or dropped for lack of a status byte.
    pub failed: u64,
}

/// The block device.
pub struct Block {
    disk: Disk,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
    config: [u8; CONFIG_SIZE],
    avail_features: u64,
    acked_features: u64,
    queue: SingleQueue,
    stats: BlockStats,
}

impl Block {
    /// Opens the image and builds the device. Attach it with the builder's `attach_virtio`,
    /// like the other virtio devices.
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        let disk = Disk::open(&config.path, config.read_only, config.direct)?;
        let id_str = match &config.id {
            Some(id) => id.clone(),
            None => {
                use std::os::unix::fs::MetadataExt;
                let ino = std::fs::metadata(&config.path)
                    .map(|m| m.ino())
                    .unwrap_or(0);
                format!("capsule-{ino:x}")
            }
        };
        if id_str.len() > VIRTIO_BLK_ID_BYTES as usize {
            return Err(BlockError::IdTooLong(id_str));
        }
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        id[..id_str.len()].copy_from_slice(id_str.as_bytes());

        let mut avail_features = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        if config.read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            avail_features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }

        let mut space = [0u8; CONFIG_SIZE];
        let mut put = |offset: usize, bytes: &[u8]| {
            space[offset..offset + bytes.len()].copy_from_slice(bytes)
        };
        put(0, &(disk.size() / SECTOR_SIZE).to_le_bytes()); // capacity
        put(12, &u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
        put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &MAX_DISCARD_SEG.to_le_bytes()); // max_discard_seg
        put(44, &DISCARD_ALIGN_SECTORS.to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_DISCARD_SEG.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap

        Ok(Self {
            disk,
            id,
            config: space,
            avail_features,
            acked_features: 0,
            queue: SingleQueue::new(NAME).map_err(BlockError::Event)?,
            stats: BlockStats::default(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.size() / SECTOR_SIZE
    }

    pub fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// Serves every available request and returns whether any was completed. The event loop
    /// calls this when the driver notifies the queue; benchmarks and tests call it directly.
    pub fn process_queue(&mut self) -> bool {
        let Some(active) = self.queue.active_mut() else {
            return false;
        };
        let mem = &active.mem;
        let mut used_any = false;
        loop {
            let chain = match active.queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    warn!("virtio-blk: cannot read the available ring: {e}");
                    break;
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let used_len = match request::parse(mem, chain) {
                Ok(req) => {
                    let (status, len) = execute(
                        &mut self.disk,
                        &self.id,
                        self.acked_features,
                        &mut self.stats,
                        mem,
                        &req,
                    );
                    if status != VIRTIO_BLK_S_OK {
                        self.stats.failed += 1;
                    }
                    write_status(mem, req.status_addr, status, len)
                }
                Err(ParseError::Malformed(why, status_addr)) => {
                    debug!("virtio-blk: request {head}: {why}");
                    self.stats.failed += 1;
                    write_status(mem, status_addr, VIRTIO_BLK_S_IOERR, 0)
                }
                Err(ParseError::NoStatus) => {
                    debug!("virtio-blk: request {head} has no status byte; returned unanswered");
                    self.stats.failed += 1;
                    0
                }
            };
            if let Err(e) = active.queue.add_used(mem, head, used_len) {
                warn!("virtio-blk: cannot return request {head}: {e}");
                break;
            }
            used_any = true;
        }
        used_any
    }
}

/// Writes the status byte; returns the used length to report (data bytes + the status byte),
/// or 0 when the status could not be written.
fn write_status(mem: &GuestMemoryMmap, addr: GuestAddress, status: u32, data_len: u32) -> u32 {
    match mem.write_obj(status as u8, addr) {
        Ok(()) => data_len.saturating_add(1),
        Err(e) => {
            debug!("virtio-blk: cannot write status at {:#x}: {e}", addr.0);
            0
        }
    }
}

/// Byte offset and length of `len` bytes at `sector`, when they lie within the disk and are a
/// whole number of sectors.
fn checked_range(disk: &Disk, sector: u64, len: u64) -> Option<u64> {
    if len % SECTOR_SIZE != 0 {
        return None;
    }
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    let end = offset.checked_add(len)?;
    (end <= disk.size()).then_some(offset)
}

/// Runs one request; returns its status and the number of data bytes written to the guest.
fn execute(
    disk: &mut Disk,
    id: &[u8],
    features: u64,
    stats: &mut BlockStats,
    mem: &GuestMemoryMmap,
    req: &Request,
) -> (u32, u32) {
    let ioerr = (VIRTIO_BLK_S_IOERR, 0);
    match req.req_type {
        VIRTIO_BLK_T_IN => {
            let len = req.writable_len();
            if len > MAX_REQUEST_BYTES {
                return ioerr;
            }
            let Some(offset) = checked_range(disk, req.sector, len) else {
                debug!(
                    "virtio-blk: read of {len} bytes at sector {} refused",
                    req.sector
                );
                return ioerr;
            };
            match disk.read_to_guest(mem, offset, &req.writable) {
                Ok(()) => {
                    stats.reads += 1;
                    stats.bytes_read += len;
                    (VIRTIO_BLK_S_OK, len as u32)
                }
                Err(e) => {
                    log_disk_error("read", &e);
                    ioerr
                }
            }
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only() {
                debug!("virtio-blk: write to a read-only device refused");
                return ioerr;
            }
            let len = req.readable_len();
            if len > MAX_REQUEST_BYTES {
                return ioerr;
            }
            let Some(offset) = checked_range(disk, req.sector, len) else {
                debug!(
                    "virtio-blk: write of {len} bytes at sector {} refused",
                    req.sector
                );
                return ioerr;
            };
            match disk.write_from_guest(mem, offset, &req.readable) {
                Ok(()) => {
                    stats.writes += 1;
                    stats.bytes_written += len;
                    (VIRTIO_BLK_S_OK, 0)
                }
                Err(e) => {
                    log_disk_error("write", &e);
                    ioerr
                }
            }
        }
        VIRTIO_BLK_T_FLUSH => match disk.flush() {
            Ok(()) => {
                stats.flushes += 1;
                (VIRTIO_BLK_S_OK, 0)
            }
            Err(e) => {
                warn!("virtio-blk: flush failed: {e}");
                ioerr
            }
        },
        VIRTIO_BLK_T_GET_ID => {
            let room = req.writable_len().min(id.len() as u64) as usize;
            if room == 0 {
                return ioerr;
            }
            match SegCursor::new(mem, &req.writable).write_from(&id[..room]) {
                Ok(()) => (VIRTIO_BLK_S_OK, room as u32),
                Err(_) => ioerr,
            }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = req.req_type == VIRTIO_BLK_T_DISCARD;
            let feature = if discard {
                VIRTIO_BLK_F_DISCARD
            } else {
                VIRTIO_BLK_F_WRITE_ZEROES
            };
            if features & (1 << feature) == 0 {
                return (VIRTIO_BLK_S_UNSUPP, 0);
            }
            if disk.read_only() {
                return ioerr;
            }
            match discard_or_zero(disk, mem, req, discard) {
                Ok(()) => {
                    if discard {
                        stats.discards += 1;
                    } else {
                        stats.write_zeroes += 1;
                    }
                    (VIRTIO_BLK_S_OK, 0)
                }
                Err(status) => (status, 0),
            }
        }
        other => {
            debug!("virtio-blk: unsupported request type {other}");
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
    }
}

/// DISCARD and WRITE_ZEROES: a list of `{le64 sector; le32 num_sectors; le32 flags}`. All
/// segments are checked before any is carried out.
fn discard_or_zero(
    disk: &mut Disk,
    mem: &GuestMemoryMmap,
    req: &Request,
    discard: bool,
) -> Result<(), u32> {
    let len = req.readable_len();
    if len == 0
        || len % DISCARD_SEG_SIZE != 0
        || len / DISCARD_SEG_SIZE > u64::from(MAX_DISCARD_SEG)
    {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    let mut raw = vec![0u8; len as usize];
    SegCursor::new(mem, &req.readable)
        .read_into(&mut raw)
        .map_err(|_| VIRTIO_BLK_S_IOERR)?;
    let mut ranges = Vec::with_capacity(raw.len() / DISCARD_SEG_SIZE as usize);
    for seg in raw.chunks_exact(DISCARD_SEG_SIZE as usize) {
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&seg[0..8]);
        let sector = u64::from_le_bytes(sector);
        let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
        let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err(VIRTIO_BLK_S_UNSUPP);
        }
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        if discard && unmap {
            // The unmap flag is defined for WRITE_ZEROES only.
            return Err(VIRTIO_BLK_S_UNSUPP);
        }
        if sectors > MAX_DISCARD_SECTORS {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        let bytes = u64::from(sectors) * SECTOR_SIZE;
        let offset = checked_range(disk, sector, bytes).ok_or(VIRTIO_BLK_S_IOERR)?;
        ranges.push((offset, bytes, unmap));
    }
    for (offset, bytes, unmap) in ranges {
        if bytes == 0 {
            continue;
        }
        let result = if discard {
            disk.discard(offset, bytes)
        } else {
            disk.write_zeroes(offset, bytes, unmap)
        };
        if let Err(e) = result {
            warn!("virtio-blk: discard/write-zeroes at {offset:#x} (+{bytes}) failed: {e}");
            return Err(VIRTIO_BLK_S_IOERR);
        }
    }
    Ok(())
}

fn log_disk_error(what: &str, e: &DiskError) {
    match e {
        // A guest buffer problem is the guest's doing; keep the log quiet.
        DiskError::GuestMemory { .. } => debug!("virtio-blk: {what}: {e}"),
        DiskError::Io(io) => warn!("virtio-blk: {what}: {e}: {io}"),
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.queue.activate(ctx)
    }

    fn is_activated(&self) -> bool {
        self.queue.is_active()
    }

    fn reset(&mut self) -> bool {
        self.queue.reset();
        self.acked_features = 0;
        true
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.queue.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.queue.handle(events, ops) && self.process_queue() {
            if let Some(active) = self.queue.active_mut() {
                active.signal_used(NAME);
            }
        }
    }
}

#[cfg(test)]
mod tests;
