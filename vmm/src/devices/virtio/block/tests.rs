//! T0 tests of virtio-blk, driven through in-process guest memory with virtio-queue's mock
//! driver.

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::*;
use crate::devices::virtio::IrqTrigger;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

const WRITE: u16 = 0x2;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const DATA2: u64 = 0x8_0000;
const STATUS: u64 = 0xf_0000;
const MEM_SIZE: usize = 0x10_0000;
const DISK_SECTORS: u64 = 64;

/// A temporary image file, removed on drop.
struct TempImage(PathBuf);

impl TempImage {
    /// A disk of `sectors` sectors where byte `i` of sector `s` is `(s * 7 + i) as u8`.
    fn patterned(sectors: u64) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "capsule-blk-test-{}-{}.img",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = File::create(&path).unwrap();
        f.write_all(&pattern(0, sectors * 512)).unwrap();
        TempImage(path)
    }

    fn bytes(&self) -> Vec<u8> {
        fs::read(&self.0).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn pattern(offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|b| ((b / 512) * 7 + b % 512) as u8)
        .collect()
}

fn header(req_type: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    dev: Block,
    served: u16,
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemoryMmap, image: &TempImage, read_only: bool, direct: bool) -> Self {
        let config = BlockConfig {
            path: image.0.clone(),
            read_only,
            direct,
            id: Some("capsule-test-disk".into()),
        };
        Self::with_device(mem, Block::new(&config).unwrap())
    }

    fn with_device(mem: &'a GuestMemoryMmap, mut dev: Block) -> Self {
        // 256 entries: the mock lays its used ring out only `len` bytes after the avail ring
        // entries, so with a small queue the two overlap after a few requests.
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        dev.ack_features(dev.avail_features());
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![vq.create_queue().unwrap()],
            queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            irq: Arc::new(IrqTrigger::new().unwrap()),
        })
        .unwrap();
        Self {
            mem,
            vq,
            dev,
            served: 0,
        }
    }

    /// Submits one chain, lets the device serve it, returns (status byte, used length).
    fn submit(&mut self, descs: &[RawDescriptor]) -> (u8, u32) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.vq.build_desc_chain(descs).unwrap();
        assert!(self.dev.process_queue(), "the request must be returned");
        let used = self
            .vq
            .used()
            .ring()
            .ref_at(self.served as usize)
            .unwrap()
            .load();
        self.served += 1;
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (status, used.len())
    }

    fn put(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    /// A request with the header alone in its descriptor, then `data`, then a 1-byte status.
    fn simple(&mut self, req_type: u32, sector: u64, data: &[RawDescriptor]) -> (u8, u32) {
        self.put(HDR, &header(req_type, sector));
        let mut descs = vec![desc(HDR, 16, 0)];
        descs.extend_from_slice(data);
        descs.push(desc(STATUS, 1, WRITE));
        self.submit(&descs)
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn reads_sectors_into_scattered_buffers() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    let (status, used) = h.simple(
        VIRTIO_BLK_T_IN,
        3,
        &[desc(DATA, 512, WRITE), desc(DATA2, 1024, WRITE)],
    );
    assert_eq!(status, OK);
    assert_eq!(used, 1536 + 1);
    assert_eq!(h.get(DATA, 512), pattern(3 * 512, 512));
    assert_eq!(h.get(DATA2, 1024), pattern(4 * 512, 1024));
    assert_eq!(h.dev.stats().bytes_read, 1536);
}

#[test]
fn writes_sectors_to_the_file() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    h.put(DATA, &[0xab; 512]);
    h.put(DATA2, &[0xcd; 512]);
    let (status, used) = h.simple(
        VIRTIO_BLK_T_OUT,
        10,
        &[desc(DATA, 512, 0), desc(DATA2, 512, 0)],
    );
    assert_eq!((status, used), (OK, 1));
    let bytes = image.bytes();
    assert_eq!(&bytes[10 * 512..11 * 512], &[0xab; 512]);
    assert_eq!(&bytes[11 * 512..12 * 512], &[0xcd; 512]);
    assert_eq!(&bytes[..10 * 512], &pattern(0, 10 * 512)[..]);
    assert_eq!(&bytes[12 * 512..], &pattern(12 * 512, 52 * 512)[..]);
}

#[test]
fn header_and_data_may_share_a_descriptor() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    // Header split across two descriptors, the second one also carrying the data.
    h.put(HDR, &header(VIRTIO_BLK_T_OUT, 5)[..6]);
    let mut second = header(VIRTIO_BLK_T_OUT, 5)[6..].to_vec();
    second.extend_from_slice(&[0x5a; 512]);
    h.put(DATA, &second);
    let (status, _) = h.submit(&[
        desc(HDR, 6, 0),
        desc(DATA, second.len() as u32, 0),
        desc(STATUS, 1, WRITE),
    ]);
    assert_eq!(status, OK);
    assert_eq!(&image.bytes()[5 * 512..6 * 512], &[0x5a; 512]);
}

#[test]
fn flush_reaches_the_file() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    h.put(DATA, &[0x11; 1024]);
    assert_eq!(h.simple(VIRTIO_BLK_T_OUT, 0, &[desc(DATA, 1024, 0)]).0, OK);
    assert_eq!(h.simple(VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    assert_eq!(h.dev.stats().flushes, 1);
    // Another handle (not the device's) sees the data.
    assert_eq!(&image.bytes()[..1024], &[0x11; 1024]);
}

#[test]
fn get_id_returns_the_serial() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    let (status, used) = h.simple(VIRTIO_BLK_T_GET_ID, 0, &[desc(DATA, 20, WRITE)]);
    assert_eq!((status, used), (OK, 21));
    let mut want = b"capsule-test-disk".to_vec();
    want.resize(20, 0);
    assert_eq!(h.get(DATA, 20), want);

    // A short buffer gets a truncated id; no buffer at all is an error.
    h.put(DATA2, &[0xee; 8]);
    let (status, used) = h.simple(VIRTIO_BLK_T_GET_ID, 0, &[desc(DATA2, 5, WRITE)]);
    assert_eq!((status, used), (OK, 6));
    assert_eq!(h.get(DATA2, 8), b"capsu\xee\xee\xee");
    assert_eq!(h.simple(VIRTIO_BLK_T_GET_ID, 0, &[]).0, IOERR);
}

#[test]
fn default_id_fits_and_config_reports_capacity() {
    let image = TempImage::patterned(DISK_SECTORS);
    let config = BlockConfig {
        path: image.0.clone(),
        read_only: false,
        direct: false,
        id: None,
    };
    let dev = Block::new(&config).unwrap();
    assert_eq!(dev.capacity(), DISK_SECTORS);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    let mut word = [0u8; 4];
    dev.read_config(40, &mut word);
    assert_eq!(u32::from_le_bytes(word), MAX_DISCARD_SEG);
    let long = BlockConfig {
        id: Some("x".repeat(21)),
        ..config
    };
    assert!(matches!(Block::new(&long), Err(BlockError::IdTooLong(_))));
}

fn discard_seg(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    s
}

#[test]
fn write_zeroes_zeroes_only_the_range() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    let mut segs = discard_seg(8, 8, 0).to_vec();
    segs.extend_from_slice(&discard_seg(40, 3, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP));
    h.put(DATA, &segs);
    let (status, used) = h.simple(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[desc(DATA, 32, 0)]);
    assert_eq!((status, used), (OK, 1));
    let bytes = image.bytes();
    assert_eq!(bytes.len() as u64, DISK_SECTORS * 512, "size is kept");
    assert!(bytes[8 * 512..16 * 512].iter().all(|&b| b == 0));
    assert!(bytes[40 * 512..43 * 512].iter().all(|&b| b == 0));
    assert_eq!(&bytes[..8 * 512], &pattern(0, 8 * 512)[..]);
    assert_eq!(&bytes[16 * 512..40 * 512], &pattern(16 * 512, 24 * 512)[..]);
    assert_eq!(&bytes[43 * 512..], &pattern(43 * 512, 21 * 512)[..]);
    assert_eq!(h.dev.stats().write_zeroes, 1);
}

#[test]
fn discard_is_accepted_and_checked() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    h.put(DATA, &discard_seg(0, 16, 0));
    assert_eq!(
        h.simple(VIRTIO_BLK_T_DISCARD, 0, &[desc(DATA, 16, 0)]),
        (OK, 1)
    );
    assert_eq!(h.dev.stats().discards, 1);
    assert_eq!(image.bytes().len() as u64, DISK_SECTORS * 512);

    // Range past the end.
    h.put(DATA, &discard_seg(DISK_SECTORS - 1, 2, 0));
    assert_eq!(
        h.simple(VIRTIO_BLK_T_DISCARD, 0, &[desc(DATA, 16, 0)]).0,
        IOERR
    );
    // Unmap flag on a discard, and a reserved flag: unsupported.
    h.put(DATA, &discard_seg(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP));
    assert_eq!(
        h.simple(VIRTIO_BLK_T_DISCARD, 0, &[desc(DATA, 16, 0)]).0,
        UNSUPP
    );
    h.put(DATA, &discard_seg(0, 1, 0x4));
    assert_eq!(
        h.simple(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[desc(DATA, 16, 0)])
            .0,
        UNSUPP
    );
    // A segment list that is not a whole number of segments, or too long.
    assert_eq!(
        h.simple(VIRTIO_BLK_T_DISCARD, 0, &[desc(DATA, 12, 0)]).0,
        IOERR
    );
    let many: Vec<u8> = (0..=MAX_DISCARD_SEG)
        .flat_map(|i| discard_seg(u64::from(i), 1, 0))
        .collect();
    h.put(DATA, &many);
    assert_eq!(
        h.simple(VIRTIO_BLK_T_DISCARD, 0, &[desc(DATA, many.len() as u32, 0)])
            .0,
        IOERR
    );
    // Too many sectors in one segment.
    h.put(DATA, &discard_seg(0, MAX_DISCARD_SECTORS + 1, 0));
    assert_eq!(
        h.simple(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[desc(DATA, 16, 0)])
            .0,
        IOERR
    );
    assert_eq!(h.dev.stats().failed, 6);
}

#[test]
fn discard_without_the_feature_is_unsupported() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let config = BlockConfig {
        path: image.0.clone(),
        read_only: false,
        direct: false,
        id: None,
    };
    let mut h = Harness::with_device(&mem, Block::new(&config).unwrap());
    h.dev.ack_features(VIRTIO_F_VERSION_1);
    h.put(DATA, &discard_seg(0, 8, 0));
    assert_eq!(
        h.simple(VIRTIO_BLK_T_DISCARD, 0, &[desc(DATA, 16, 0)]).0,
        UNSUPP
    );
    assert_eq!(
        h.simple(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[desc(DATA, 16, 0)])
            .0,
        UNSUPP
    );
    assert_eq!(image.bytes(), pattern(0, DISK_SECTORS * 512));
}

#[test]
fn bad_sector_ranges_are_ioerr() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    h.put(DATA, &[0x77; 1024]);
    for (sector, len) in [
        (DISK_SECTORS, 512u32),   // starts at the end
        (DISK_SECTORS - 1, 1024), // crosses the end
        (u64::MAX, 512),          // sector * 512 overflows
        (u64::MAX / 512, 1024),   // offset + length overflows
        (0, 100),                 // not a whole sector
        (0, 513),                 // not a whole number of sectors
    ] {
        assert_eq!(
            h.simple(VIRTIO_BLK_T_OUT, sector, &[desc(DATA, len, 0)]),
            (IOERR, 1),
            "write of {len} bytes at sector {sector}"
        );
        assert_eq!(
            h.simple(VIRTIO_BLK_T_IN, sector, &[desc(DATA, len, WRITE)]),
            (IOERR, 1),
            "read of {len} bytes at sector {sector}"
        );
    }
    assert_eq!(image.bytes(), pattern(0, DISK_SECTORS * 512));
    assert_eq!(
        h.get(DATA, 1024),
        vec![0x77; 1024],
        "failed reads leave buffers alone"
    );
    // The last sector itself is fine.
    assert_eq!(
        h.simple(VIRTIO_BLK_T_IN, DISK_SECTORS - 1, &[desc(DATA, 512, WRITE)])
            .0,
        OK
    );
}

#[test]
fn too_large_requests_are_ioerr() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 80 << 20)]).unwrap();
    let mut h = Harness::new(&mem, &image, false, false);
    let big = (MAX_REQUEST_BYTES + 512) as u32;
    assert_eq!(
        h.simple(VIRTIO_BLK_T_IN, 0, &[desc(0x10_0000, big, WRITE)])
            .0,
        IOERR
    );
}

#[test]
fn short_and_misordered_descriptors() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    h.put(HDR, &header(VIRTIO_BLK_T_IN, 0));

    // Header shorter than 16 bytes.
    assert_eq!(
        h.submit(&[desc(HDR, 8, 0), desc(STATUS, 1, WRITE)]),
        (IOERR, 1)
    );
    // Header only, no status: nothing can be reported, the chain is returned with length 0.
    assert_eq!(h.submit(&[desc(HDR, 16, 0)]), (0xff, 0));
    // Zero-length status descriptor.
    assert_eq!(
        h.submit(&[desc(HDR, 16, 0), desc(STATUS, 0, WRITE)]),
        (0xff, 0)
    );
    // Device-readable descriptor after a device-writable one.
    assert_eq!(
        h.submit(&[
            desc(HDR, 16, 0),
            desc(DATA, 512, WRITE),
            desc(DATA2, 512, 0),
            desc(STATUS, 1, WRITE),
        ]),
        (IOERR, 1)
    );
    // Header is device-writable: there is no readable header at all.
    assert_eq!(
        h.submit(&[desc(HDR, 16, WRITE), desc(STATUS, 1, WRITE)]),
        (IOERR, 1)
    );
    // A data buffer outside guest memory.
    assert_eq!(
        h.submit(&[
            desc(HDR, 16, 0),
            desc(MEM_SIZE as u64 - 256, 512, WRITE),
            desc(STATUS, 1, WRITE),
        ]),
        (IOERR, 1)
    );
    // A status byte outside guest memory.
    assert_eq!(
        h.submit(&[desc(HDR, 16, 0), desc(u64::MAX - 1, 1, WRITE)]),
        (0xff, 0)
    );
    // The status is the last byte of a longer writable buffer; data comes before it.
    h.put(HDR, &header(VIRTIO_BLK_T_IN, 2));
    let (status, used) = h.submit(&[desc(HDR, 16, 0), desc(STATUS - 512, 513, WRITE)]);
    assert_eq!((status, used), (OK, 513));
    assert_eq!(h.get(STATUS - 512, 512), pattern(1024, 512));
    assert_eq!(h.dev.stats().failed, 7);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    for t in [2u32, 7, 14, 0xffff_ffff] {
        assert_eq!(h.simple(t, 0, &[desc(DATA, 512, WRITE)]), (UNSUPP, 1));
    }
}

#[test]
fn read_only_device_refuses_writes() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, true, false);
    assert!(h.dev.avail_features() & (1 << VIRTIO_BLK_F_RO) != 0);
    assert!(h.dev.avail_features() & (1 << VIRTIO_BLK_F_DISCARD) == 0);
    h.put(DATA, &[0x99; 512]);
    assert_eq!(
        h.simple(VIRTIO_BLK_T_OUT, 0, &[desc(DATA, 512, 0)]),
        (IOERR, 1)
    );
    h.put(DATA2, &discard_seg(0, 1, 0));
    assert_eq!(
        h.simple(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[desc(DATA2, 16, 0)])
            .0,
        UNSUPP
    );
    assert_eq!(h.simple(VIRTIO_BLK_T_FLUSH, 0, &[]).0, OK);
    assert_eq!(
        h.simple(VIRTIO_BLK_T_IN, 1, &[desc(DATA, 512, WRITE)]).0,
        OK
    );
    assert_eq!(h.get(DATA, 512), pattern(512, 512));
    assert_eq!(image.bytes(), pattern(0, DISK_SECTORS * 512));
}

#[test]
fn serves_every_available_request() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    // Three independent chains at once.
    let mut descs = Vec::new();
    for i in 0..3u64 {
        let hdr = HDR + i * 16;
        h.put(hdr, &header(VIRTIO_BLK_T_IN, i));
        descs.push(RawDescriptor::from(Descriptor::new(
            hdr,
            16,
            0x1,
            (descs.len() + 1) as u16,
        )));
        descs.push(RawDescriptor::from(Descriptor::new(
            DATA + i * 512,
            512,
            WRITE | 0x1,
            (descs.len() + 1) as u16,
        )));
        descs.push(desc(STATUS - 16 + i, 1, WRITE));
    }
    h.vq.add_desc_chains(&descs, 0).unwrap();
    assert!(h.dev.process_queue());
    assert_eq!(h.vq.used().idx().load(), 3);
    assert_eq!(h.get(DATA, 1536), pattern(0, 1536));
    assert_eq!(h.get(STATUS - 16, 3), vec![OK; 3]);
    assert!(!h.dev.process_queue(), "nothing left to serve");
}

#[test]
fn missing_or_tiny_images_are_rejected() {
    let missing = BlockConfig {
        path: "/nonexistent/capsule.img".into(),
        read_only: true,
        direct: false,
        id: None,
    };
    assert!(matches!(
        Block::new(&missing),
        Err(BlockError::Open(OpenError::Open { .. }))
    ));
    let tiny = TempImage::patterned(0);
    fs::write(&tiny.0, [0u8; 100]).unwrap();
    let config = BlockConfig {
        path: tiny.0.clone(),
        ..missing
    };
    assert!(matches!(
        Block::new(&config),
        Err(BlockError::Open(OpenError::TooSmall { .. }))
    ));
}

/// O_DIRECT through the bounce buffer, with 512-byte aligned requests that are not 4 KiB
/// aligned (read-modify-write of partial blocks).
#[test]
fn direct_io_handles_unaligned_sectors() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let config = BlockConfig {
        path: image.0.clone(),
        read_only: false,
        direct: true,
        id: None,
    };
    let dev = match Block::new(&config) {
        Ok(dev) => dev,
        Err(BlockError::Open(OpenError::DirectUnsupported { source, .. })) => {
            eprintln!(
                "skipped: the file system under {} has no O_DIRECT: {source}",
                std::env::temp_dir().display()
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut h = Harness::with_device(&mem, dev);
    assert!(h.dev.disk.direct());
    // Write sectors 3..13 (crossing two 4 KiB boundaries, partial at both ends).
    let data: Vec<u8> = (0..10 * 512).map(|i| (i * 13 % 251) as u8).collect();
    h.put(DATA, &data[..1536]);
    h.put(DATA2, &data[1536..]);
    assert_eq!(
        h.simple(
            VIRTIO_BLK_T_OUT,
            3,
            &[
                desc(DATA, 1536, 0),
                desc(DATA2, data.len() as u32 - 1536, 0)
            ]
        )
        .0,
        OK
    );
    let bytes = image.bytes();
    assert_eq!(&bytes[3 * 512..13 * 512], &data[..]);
    assert_eq!(&bytes[..3 * 512], &pattern(0, 3 * 512)[..]);
    assert_eq!(&bytes[13 * 512..], &pattern(13 * 512, 51 * 512)[..]);
    // Read sectors 1..15 back.
    let (status, used) = h.simple(VIRTIO_BLK_T_IN, 1, &[desc(DATA2, 14 * 512, WRITE)]);
    assert_eq!((status, used), (OK, 14 * 512 + 1));
    assert_eq!(h.get(DATA2, 14 * 512), &bytes[512..15 * 512]);
    assert_eq!(
        h.dev.disk.direct_io_count(),
        0,
        "unaligned requests use the bounce buffer"
    );
    // Page-aligned requests go straight to guest memory.
    h.put(DATA, &[0xc3; 8192]);
    assert_eq!(h.simple(VIRTIO_BLK_T_OUT, 16, &[desc(DATA, 8192, 0)]).0, OK);
    assert_eq!(
        h.simple(VIRTIO_BLK_T_IN, 8, &[desc(DATA2, 8192, WRITE)]).0,
        OK
    );
    assert_eq!(h.dev.disk.direct_io_count(), 2);
    let bytes = image.bytes();
    assert_eq!(&bytes[16 * 512..32 * 512], &[0xc3; 8192]);
    assert_eq!(h.get(DATA2, 8192), &bytes[8 * 512..24 * 512]);
    // Size must stay a multiple of 4 KiB for O_DIRECT.
    let odd = TempImage::patterned(9);
    let config = BlockConfig {
        path: odd.0.clone(),
        ..config
    };
    assert!(matches!(
        Block::new(&config),
        Err(BlockError::Open(OpenError::DirectSize { .. }))
    ));
}

#[test]
fn reset_stops_serving() {
    let image = TempImage::patterned(DISK_SECTORS);
    let mem = memory();
    let mut h = Harness::new(&mem, &image, false, false);
    assert!(h.dev.is_activated());
    assert!(h.dev.reset());
    assert!(!h.dev.is_activated());
    h.put(HDR, &header(VIRTIO_BLK_T_IN, 0));
    h.vq.build_desc_chain(&[desc(HDR, 16, 0), desc(STATUS, 1, WRITE)])
        .unwrap();
    assert!(!h.dev.process_queue());
}
