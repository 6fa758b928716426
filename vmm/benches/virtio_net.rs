//! virtio-net host-path benchmark: packets/s and Gbit/s through the device (a minimal driver
//! posting chains in in-process guest memory, the device moving them to and from a real
//! TAP), against a plain read/write loop on the same TAP, in the same run.
//!
//! - tx (guest → TAP): the driver posts batches of frames; the device writes them to the TAP,
//!   whose kernel side drops them (nobody handles their ethertype). Bound: `write()` of the
//!   same frames, with the same virtio-net header, on the same TAP.
//! - rx (TAP → guest): a sender thread puts frames on the TAP's kernel side through an
//!   AF_PACKET socket (qdisc bypassed, batches of `sendmmsg`); the device reads them into
//!   4 KiB mergeable guest buffers the driver keeps posting. Bound: `read()` of the same
//!   frames from the same TAP into one buffer, with the same sender. Measured twice: with
//!   page-aligned guest buffers against a page-aligned read buffer, and with buffers 64 bytes
//!   apart against a read buffer 64 bytes past a page boundary (see `RX_PAD`).
//!
//! Needs root (a network namespace of its own, where it creates its TAP; both go away at the
//! end). Usage: cargo bench -p capsule-vmm --bench virtio_net -- [--seconds S] [--runs N]
//! [--dir tx|rx] [--size 64|65535]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use capsule_vmm::devices::virtio::net::{Net, NetConfig, AVAIL_FEATURES};
use capsule_vmm::devices::virtio::{ActivateContext, IrqTrigger, VirtioDevice};
use capsule_vmm::memory::GuestMemoryMmap;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const QUEUE: u16 = 256;
const HDR: usize = 12;
/// Transmit chains posted per batch.
const TX_DEPTH: u16 = 64;
/// Receive buffer size (mergeable buffers, like a Linux guest with a large MTU).
const RX_BUF: u32 = 4096;
/// 64 bytes, and the largest frame the TAP passes without GSO (MTU 65521 + Ethernet header).
const SIZES: [usize; 2] = [64, 65535];
const SEND_BATCH: usize = 32;
/// Offset between the driver's receive buffers beyond their size, in the "offset" layout.
/// Page-aligned buffers make the host kernel's copy from page-aligned socket buffers slow on
/// this machine's CPU (4 KiB aliasing: 2-3x, whoever reads, see RESULTS.md), so rx is
/// measured both ways, each against a raw read into a buffer with the same alignment.
const RX_PAD: u64 = 64;

/// Where the driver puts each split queue: (descriptor table, avail ring, used ring).
const RXQ: (u64, u64, u64) = (0x0, 0x1000, 0x2000);
const TXQ: (u64, u64, u64) = (0x4000, 0x5000, 0x6000);
const TX_DATA: u64 = 0x10_0000;
const RX_DATA: u64 = 0x200_0000;
const MEM: usize = 0x400_0000;

fn cvt(rc: libc::c_int, what: &str) -> libc::c_int {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
    rc
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; zeroes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req
}

/// Creates (or, with `persist` false, deletes) the persistent TAP `name`.
fn tap_persist(name: &str, persist: bool) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("/dev/net/tun");
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads one ifreq; TUNSETPERSIST takes an int by value.
    unsafe {
        cvt(
            libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &req),
            "TUNSETIFF",
        );
        cvt(
            libc::ioctl(
                f.as_raw_fd(),
                libc::TUNSETPERSIST,
                libc::c_ulong::from(persist),
            ),
            "TUNSETPERSIST",
        );
    }
}

/// MTU 65521, tun's largest (so 64 KiB - 1 frames pass without GSO), and up.
fn tap_up(name: &str) -> libc::c_int {
    // SAFETY: plain socket call.
    let sock = cvt(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    );
    // SAFETY: `sock` is fresh and ours.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_mtu = 65521;
    // SAFETY: SIOCSIFMTU and SIOCSIFFLAGS read one ifreq, which `req` is.
    unsafe {
        cvt(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &req), "MTU");
        req.ifr_ifru.ifru_flags = libc::IFF_UP as libc::c_short;
        cvt(
            libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req),
            "up",
        );
    }
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid C string.
    unsafe { libc::if_nametoindex(cname.as_ptr()) as libc::c_int }
}

/// The raw baseline's own attachment to the TAP, with the same flags as the device's.
fn raw_tap(name: &str) -> OwnedFd {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("/dev/net/tun");
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    let size: libc::c_int = HDR as libc::c_int;
    // SAFETY: TUNSETIFF reads one ifreq; TUNSETVNETHDRSZ reads one int.
    unsafe {
        cvt(
            libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, &req),
            "TUNSETIFF",
        );
        cvt(
            libc::ioctl(f.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size),
            "hdr size",
        );
    }
    OwnedFd::from(f)
}

fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x09, 0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| i as u8));
    f
}

fn poll_in(fd: libc::c_int, ms: libc::c_int) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Puts frames of `len` bytes on the TAP's kernel side until stopped.
fn start_sender(
    ifindex: libc::c_int,
    len: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket call.
        let fd = cvt(
            unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    proto.into(),
                )
            },
            "packet socket",
        );
        // SAFETY: `fd` is fresh and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: reads one int; binds a sockaddr_ll of its size.
        unsafe {
            cvt(
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_QDISC_BYPASS,
                    (&one as *const libc::c_int).cast(),
                    4,
                ),
                "bypass",
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex;
            cvt(
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                ),
                "bind",
            );
        }
        let f = frame(len);
        let mut iov = libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        };
        // SAFETY: mmsghdr is plain data; zeroes are valid.
        let mut msgs: Vec<libc::mmsghdr> = (0..SEND_BATCH)
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        for m in &mut msgs {
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: every message points to `iov`, which points to `f`; both outlive the
            // call.
            unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), SEND_BATCH as u32, 0) };
        }
    })
}

fn queue(at: (u64, u64, u64), mem: &GuestMemoryMmap) -> Queue {
    let mut q = Queue::new(QUEUE).unwrap();
    q.set_size(QUEUE);
    q.set_desc_table_address(Some(at.0 as u32), Some(0));
    q.set_avail_ring_address(Some(at.1 as u32), Some(0));
    q.set_used_ring_address(Some(at.2 as u32), Some(0));
    q.set_ready(true);
    for addr in [at.1, at.1 + 2, at.2, at.2 + 2] {
        mem.write_obj(0u16, GuestAddress(addr)).unwrap();
    }
    q
}

/// The driver side of one split queue.
struct Ring<'a> {
    mem: &'a GuestMemoryMmap,
    at: (u64, u64, u64),
    avail: u16,
    used_seen: u16,
}

impl<'a> Ring<'a> {
    fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16) {
        let d = RawDescriptor::from(Descriptor::new(addr, len, flags, 0));
        self.mem
            .write_obj(d, GuestAddress(self.at.0 + 16 * u64::from(index)))
            .unwrap();
    }

    fn push(&mut self, head: u16) {
        let slot = u64::from(self.avail % QUEUE);
        self.mem
            .write_obj(head.to_le(), GuestAddress(self.at.1 + 4 + 2 * slot))
            .unwrap();
        self.avail = self.avail.wrapping_add(1);
    }

    fn publish(&self) {
        self.mem
            .write_obj(self.avail.to_le(), GuestAddress(self.at.1 + 2))
            .unwrap();
    }

    /// Heads used since the last call.
    fn take_used(&mut self, out: &mut Vec<u16>) {
        out.clear();
        let idx: u16 = self.mem.read_obj(GuestAddress(self.at.2 + 2)).unwrap();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % QUEUE);
            let id: u32 = self
                .mem
                .read_obj(GuestAddress(self.at.2 + 4 + 8 * slot))
                .unwrap();
            out.push(id as u16);
            self.used_seen = self.used_seen.wrapping_add(1);
        }
    }
}

fn device<'a>(mem: &'a GuestMemoryMmap, tap: &str) -> (Net, Ring<'a>, Ring<'a>) {
    let mut dev = Net::new(&NetConfig {
        tap: tap.into(),
        mac: [2, 0, 0, 0, 0, 1],
    })
    .expect("attach the device to the TAP");
    dev.ack_features(AVAIL_FEATURES);
    dev.activate(ActivateContext {
        mem: mem.clone(),
        queues: vec![queue(RXQ, mem), queue(TXQ, mem)],
        queue_evts: (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect(),
        irq: Arc::new(IrqTrigger::new().unwrap()),
    })
    .unwrap();
    let ring = |at| Ring {
        mem,
        at,
        avail: 0,
        used_seen: 0,
    };
    (dev, ring(RXQ), ring(TXQ))
}

#[derive(Clone, Copy)]
struct Rate {
    pps: f64,
    gbps: f64,
}

fn rate(frames: u64, len: usize, secs: f64) -> Rate {
    Rate {
        pps: frames as f64 / secs,
        gbps: frames as f64 * len as f64 * 8.0 / secs / 1e9,
    }
}

fn tx_device(mem: &GuestMemoryMmap, tap: &str, len: usize, seconds: f64) -> Rate {
    let (mut dev, _rx, mut tx) = device(mem, tap);
    let f = frame(len);
    let stride = (HDR + len).next_multiple_of(4096) as u64;
    for i in 0..TX_DEPTH {
        let at = TX_DATA + u64::from(i) * stride;
        mem.write_slice(&[0u8; HDR], GuestAddress(at)).unwrap();
        mem.write_slice(&f, GuestAddress(at + HDR as u64)).unwrap();
        tx.set_desc(i, at, (HDR + len) as u32, 0);
    }
    let mut used = Vec::new();
    let start = Instant::now();
    let mut frames = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for i in 0..TX_DEPTH {
            tx.push(i);
        }
        tx.publish();
        let mut done = 0;
        while done < usize::from(TX_DEPTH) {
            dev.process_tx();
            tx.take_used(&mut used);
            done += used.len();
        }
        frames += u64::from(TX_DEPTH);
    }
    let secs = start.elapsed().as_secs_f64();
    let c = dev.counters();
    assert_eq!(
        (c.tx_packets, c.dropped()),
        (frames, 0),
        "tx: every frame sent"
    );
    rate(frames, len, secs)
}

fn tx_raw(tap: &str, len: usize, seconds: f64) -> Rate {
    let fd = raw_tap(tap);
    let mut buf = vec![0u8; HDR];
    buf.extend(frame(len));
    let start = Instant::now();
    let mut frames = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..TX_DEPTH {
            // SAFETY: writes `buf.len()` bytes from `buf`.
            let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            assert_eq!(
                n,
                buf.len() as isize,
                "raw write: {}",
                std::io::Error::last_os_error()
            );
        }
        frames += u64::from(TX_DEPTH);
    }
    rate(frames, len, start.elapsed().as_secs_f64())
}

/// `pad` bytes between consecutive 4 KiB receive buffers (0: page-aligned buffers).
fn rx_device(
    mem: &GuestMemoryMmap,
    tap: &str,
    ifindex: libc::c_int,
    len: usize,
    seconds: f64,
    pad: u64,
) -> Rate {
    let (mut dev, mut rx, _tx) = device(mem, tap);
    let stride = u64::from(RX_BUF) + pad;
    for i in 0..QUEUE {
        rx.set_desc(i, RX_DATA + u64::from(i) * stride, RX_BUF, 0x2);
        rx.push(i);
    }
    rx.publish();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = start_sender(ifindex, len, stop.clone());
    let mut used = Vec::new();
    // Warm-up: the first frame.
    while dev.counters().rx_packets == 0 {
        poll_in(dev.tap().as_raw_fd(), 100);
        dev.process_rx();
        rx.take_used(&mut used);
        for &h in &used {
            rx.push(h);
        }
        rx.publish();
    }
    let first = dev.counters().rx_packets;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        if !dev.process_rx() {
            poll_in(dev.tap().as_raw_fd(), 100);
        }
        rx.take_used(&mut used);
        for &h in &used {
            rx.push(h);
        }
        rx.publish();
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let c = dev.counters();
    assert_eq!(c.dropped(), 0, "rx: no frame dropped by the device");
    rate(c.rx_packets - first, len, secs)
}

/// Reads into one buffer that is page-aligned, or `RX_PAD` bytes past a page boundary.
fn rx_raw(tap: &str, ifindex: libc::c_int, len: usize, seconds: f64, aligned: bool) -> Rate {
    let fd = raw_tap(tap);
    // SAFETY: sets O_NONBLOCK on our own fd.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let stop = Arc::new(AtomicBool::new(false));
    let sender = start_sender(ifindex, len, stop.clone());
    let size = HDR + 65550;
    let mut buf = vec![0u8; size + 8192];
    let start_at = buf.as_ptr().align_offset(4096) + if aligned { 0 } else { RX_PAD as usize };
    let mut read = || {
        let b = &mut buf[start_at..start_at + size];
        // SAFETY: reads at most `b.len()` bytes into `b`.
        unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) }
    };
    while read() <= 0 {
        poll_in(fd.as_raw_fd(), 100);
    }
    let start = Instant::now();
    let mut frames = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let n = read();
        if n > 0 {
            assert_eq!(n as usize, HDR + len);
            frames += 1;
        } else {
            poll_in(fd.as_raw_fd(), 100);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    rate(frames, len, secs)
}

fn median(mut v: Vec<Rate>) -> Rate {
    v.sort_by(|a, b| a.pps.total_cmp(&b.pps));
    v[v.len() / 2]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let mut seconds = 2.0;
    let mut runs = 3;
    let mut only_dir: Option<String> = None;
    let mut only_size: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().expect("--seconds S").parse().expect("S"),
            "--runs" => runs = args.next().expect("--runs N").parse().expect("N"),
            "--dir" => only_dir = Some(args.next().expect("--dir tx|rx")),
            "--size" => only_size = Some(args.next().expect("--size N").parse().expect("N")),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    // SAFETY: unshare takes flags only; the whole (so far single-threaded) process moves.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        println!(
            "virtio-net bench skipped: cannot create a network namespace ({}); run as root",
            std::io::Error::last_os_error()
        );
        return;
    }
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    let tap = format!("ctnb{}", std::process::id());
    tap_persist(&tap, true);
    let ifindex = tap_up(&tap);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    println!(
        "virtio-net bench: TAP {tap} (MTU 65521) in a network namespace of its own, {seconds} s \
         per figure, median of {runs} runs; load average before: {}",
        loadavg()
    );
    println!(
        "{:<26} {:>7} {:<14} {:>12} {:>9} {:>8}",
        "dir", "frame", "path", "packets/s", "Gbit/s", "device/raw"
    );
    let wanted = |dir: &str| only_dir.as_deref().is_none_or(|d| d == dir);
    for len in SIZES
        .into_iter()
        .filter(|l| only_size.is_none_or(|s| s == *l))
    {
        if wanted("tx") {
            let dev: Vec<Rate> = (0..runs)
                .map(|_| tx_device(&mem, &tap, len, seconds))
                .collect();
            let raw: Vec<Rate> = (0..runs).map(|_| tx_raw(&tap, len, seconds)).collect();
            report("tx", len, median(dev), median(raw));
        }
        if !wanted("rx") {
            continue;
        }
        for (layout, pad, aligned) in [("page-aligned", 0, true), ("offset", RX_PAD, false)] {
            let dev: Vec<Rate> = (0..runs)
                .map(|_| rx_device(&mem, &tap, ifindex, len, seconds, pad))
                .collect();
            let raw: Vec<Rate> = (0..runs)
                .map(|_| rx_raw(&tap, ifindex, len, seconds, aligned))
                .collect();
            report(
                &format!("rx, {layout} buffers"),
                len,
                median(dev),
                median(raw),
            );
        }
    }
    println!("load average after: {}", loadavg());
    tap_persist(&tap, false);
}

fn report(dir: &str, len: usize, dev: Rate, raw: Rate) {
    for (who, r) in [("device", dev), ("raw TAP loop", raw)] {
        let ratio = if who == "device" {
            format!("{:.0} %", dev.pps / raw.pps * 100.0)
        } else {
            String::new()
        };
        println!(
            "{dir:<26} {len:>7} {who:<14} {:>12.0} {:>9.2} {:>8}",
            r.pps, r.gbps, ratio
        );
    }
}
