//! virtio-blk host-path benchmark: sequential read/write MB/s and random 4 KiB IOPS through the
//! device (a minimal driver posting requests in in-process guest memory, the device serving them
//! from a raw file), against the same access pattern on the raw file itself, in the same run,
//! on the same disk. Buffered and O_DIRECT.
//!
//! Usage: cargo bench -p capsule-vmm --bench virtio_blk -- [--dir DIR] [--size-mib N]
//!        [--seconds S]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsule_vmm::devices::virtio::block::{Block, BlockConfig};
use capsule_vmm::devices::virtio::{ActivateContext, IrqTrigger, VirtioDevice};
use capsule_vmm::memory::GuestMemoryMmap;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const QUEUE: u16 = 256;
/// Requests posted per batch (each uses 3 descriptors).
const DEPTH: u16 = 32;
const SEQ_BLOCK: u32 = 128 * 1024;
const RAND_BLOCK: u32 = 4096;
const HDR_BASE: u64 = 0x10_0000;
const STATUS_BASE: u64 = 0x20_0000;
const DATA_BASE: u64 = 0x100_0000;
const MEM: usize = 0x200_0000 + DEPTH as usize * SEQ_BLOCK as usize;

struct Args {
    dir: PathBuf,
    size_mib: u64,
    seconds: f64,
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: std::env::temp_dir(),
        size_mib: 1024,
        seconds: 3.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => args.dir = it.next().expect("--dir DIR").into(),
            "--size-mib" => args.size_mib = it.next().expect("--size-mib N").parse().expect("N"),
            "--seconds" => args.seconds = it.next().expect("--seconds S").parse().expect("S"),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// Where the driver puts the split queue in guest memory. (virtio-queue's `MockSplitQueue`
/// places its used ring `len` bytes, not `2 * len`, after the avail ring's entries, so for a
/// queue of more than a few entries the two overlap; this driver lays the queue out itself.)
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;

/// A tiny driver: posts batches of requests on the queue and lets the device serve them.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    dev: Block,
    avail: u16,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap, config: &BlockConfig) -> Self {
        let mut dev = Block::new(config).expect("block device");
        let mut queue = Queue::new(QUEUE).unwrap();
        queue.set_size(QUEUE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        for addr in [AVAIL_RING, AVAIL_RING + 2, USED_RING, USED_RING + 2] {
            mem.write_obj(0u16, GuestAddress(addr)).unwrap();
        }
        dev.ack_features(dev.avail_features());
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![queue],
            queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            irq: Arc::new(IrqTrigger::new().unwrap()),
        })
        .unwrap();
        Self { mem, dev, avail: 0 }
    }

    /// Posts one request per sector in `sectors`, then serves them; checks every status.
    fn batch(&mut self, req_type: u32, sectors: &[u64], len: u32) {
        let write = req_type == 1;
        for (i, &sector) in sectors.iter().enumerate() {
            let i16 = i as u16;
            let hdr = HDR_BASE + u64::from(i16) * 16;
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&req_type.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
            let base = i16 * 3;
            let data_flags = if write { 0x1 } else { 0x1 | 0x2 };
            let descs = [
                Descriptor::new(hdr, 16, 0x1, base + 1),
                Descriptor::new(
                    DATA_BASE + u64::from(i16) * u64::from(SEQ_BLOCK),
                    len,
                    data_flags,
                    base + 2,
                ),
                Descriptor::new(STATUS_BASE + u64::from(i16), 1, 0x2, 0),
            ];
            for (j, d) in descs.iter().enumerate() {
                let at = DESC_TABLE + 16 * u64::from(base + j as u16);
                self.mem
                    .write_obj(RawDescriptor::from(*d), GuestAddress(at))
                    .unwrap();
            }
            let slot = u64::from(self.avail % QUEUE);
            self.mem
                .write_obj(base.to_le(), GuestAddress(AVAIL_RING + 4 + 2 * slot))
                .unwrap();
            self.avail = self.avail.wrapping_add(1);
        }
        self.mem
            .write_obj(self.avail.to_le(), GuestAddress(AVAIL_RING + 2))
            .unwrap();
        assert!(self.dev.process_queue());
        let used: u16 = self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
        assert_eq!(used, self.avail, "every request is returned");
        for i in 0..sectors.len() as u64 {
            let status: u8 = self.mem.read_obj(GuestAddress(STATUS_BASE + i)).unwrap();
            assert_eq!(
                status, 0,
                "request type {req_type} at sector {} failed",
                sectors[i as usize]
            );
        }
    }
}

struct Figures {
    mib_s: f64,
    iops: f64,
}

/// Writes back the image's dirty pages first, so one figure's writeback does not slow the next.
fn run_for(image: &Path, seconds: f64, mut step: impl FnMut() -> u64) -> Figures {
    File::open(image)
        .and_then(|f| f.sync_all())
        .expect("sync image");
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut ops = 0u64;
    while start.elapsed() < Duration::from_secs_f64(seconds) {
        bytes += step();
        ops += u64::from(DEPTH);
    }
    let secs = start.elapsed().as_secs_f64();
    Figures {
        mib_s: bytes as f64 / secs / (1024.0 * 1024.0),
        iops: ops as f64 / secs,
    }
}

/// A cheap deterministic random sequence (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// An aligned buffer for O_DIRECT on the raw file.
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0x5au8; len + 4096];
    let off = v.as_ptr().align_offset(4096);
    (v, off)
}

fn open_raw(path: &Path, direct: bool) -> File {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).expect("open image")
}

/// Prints the device's warnings (a failed request is a bench failure; its cause is logged).
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn main() {
    let _ = log::set_logger(&StderrLog);
    log::set_max_level(log::LevelFilter::Warn);
    let args = parse_args();
    let path = args
        .dir
        .join(format!("capsule-blk-bench-{}.img", std::process::id()));
    let size = args.size_mib << 20;
    {
        let f = File::create(&path).expect("create image");
        // Allocate real blocks so reads measure the disk, not holes.
        let chunk = vec![0xa5u8; 1 << 20];
        for i in 0..args.size_mib {
            f.write_all_at(&chunk, i << 20).unwrap();
        }
        f.sync_all().unwrap();
    }
    println!(
        "virtio-blk bench: image {} ({} MiB), {} s per figure, queue depth {DEPTH}, \
         sequential {} KiB, random {} KiB",
        path.display(),
        args.size_mib,
        args.seconds,
        SEQ_BLOCK / 1024,
        RAND_BLOCK / 1024
    );
    println!(
        "{:<8} {:<22} {:>12} {:>12} {:>12} {:>12}",
        "mode", "path", "seq wr MiB/s", "seq rd MiB/s", "rand rd IOPS", "rand wr IOPS"
    );
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    mem.write_slice(
        &vec![0x3cu8; DEPTH as usize * SEQ_BLOCK as usize],
        GuestAddress(DATA_BASE),
    )
    .unwrap();
    let seq_sectors_total = size / 512;
    let seq_step = u64::from(SEQ_BLOCK / 512);
    let rand_blocks = size / u64::from(RAND_BLOCK);
    for direct in [false, true] {
        let mode = if direct { "O_DIRECT" } else { "buffered" };
        // Through the device.
        let config = BlockConfig {
            path: path.clone(),
            read_only: false,
            direct,
            id: None,
        };
        let mut drv = Driver::new(&mem, &config);
        let mut pos = 0u64;
        let mut seq = |drv: &mut Driver, req_type: u32| {
            let sectors: Vec<u64> = (0..u64::from(DEPTH))
                .map(|i| (pos + i * seq_step) % seq_sectors_total)
                .collect();
            pos = (pos + u64::from(DEPTH) * seq_step) % seq_sectors_total;
            drv.batch(req_type, &sectors, SEQ_BLOCK);
            u64::from(DEPTH) * u64::from(SEQ_BLOCK)
        };
        let dw = run_for(&path, args.seconds, || seq(&mut drv, 1));
        drv.batch(4, &[0], 0); // flush
        let dr = run_for(&path, args.seconds, || seq(&mut drv, 0));
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut rand = |drv: &mut Driver, req_type: u32| {
            let sectors: Vec<u64> = (0..DEPTH)
                .map(|_| (rng.next() % rand_blocks) * u64::from(RAND_BLOCK / 512))
                .collect();
            drv.batch(req_type, &sectors, RAND_BLOCK);
            u64::from(DEPTH) * u64::from(RAND_BLOCK)
        };
        let drr = run_for(&path, args.seconds, || rand(&mut drv, 0));
        let drw = run_for(&path, args.seconds, || rand(&mut drv, 1));
        drop(drv);

        // The raw file, same pattern.
        let f = open_raw(&path, direct);
        let (mut buf, off) = aligned(SEQ_BLOCK as usize);
        let mut pos = 0u64;
        let mut raw_seq = |write: bool| {
            for _ in 0..DEPTH {
                let b = &mut buf[off..off + SEQ_BLOCK as usize];
                if write {
                    f.write_all_at(b, pos).unwrap();
                } else {
                    f.read_exact_at(b, pos).unwrap();
                }
                pos = (pos + u64::from(SEQ_BLOCK)) % size;
            }
            u64::from(DEPTH) * u64::from(SEQ_BLOCK)
        };
        let rw = run_for(&path, args.seconds, || raw_seq(true));
        f.sync_data().unwrap();
        let rr = run_for(&path, args.seconds, || raw_seq(false));
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let (mut buf, off) = aligned(RAND_BLOCK as usize);
        let mut raw_rand = |write: bool| {
            for _ in 0..DEPTH {
                let at = (rng.next() % rand_blocks) * u64::from(RAND_BLOCK);
                let b = &mut buf[off..off + RAND_BLOCK as usize];
                if write {
                    f.write_all_at(b, at).unwrap();
                } else {
                    f.read_exact_at(b, at).unwrap();
                }
            }
            u64::from(DEPTH) * u64::from(RAND_BLOCK)
        };
        let rrr = run_for(&path, args.seconds, || raw_rand(false));
        let rrw = run_for(&path, args.seconds, || raw_rand(true));

        let row = |who: &str, w: &Figures, r: &Figures, rr: &Figures, rw: &Figures| {
            println!(
                "{mode:<8} {who:<22} {:>12.0} {:>12.0} {:>12.0} {:>12.0}",
                w.mib_s, r.mib_s, rr.iops, rw.iops
            );
        };
        row("virtio-blk device", &dw, &dr, &drr, &drw);
        row("raw file (pread/pwrite)", &rw, &rr, &rrr, &rrw);
    }
    let _ = std::fs::remove_file(&path);
}
