//! T0 tests of virtio-net: the device driven through in-process guest memory with
//! virtio-queue's mock driver, on a real TAP that each test creates in a network namespace of
//! its own (only the test thread enters it; the TAP and the namespace go away with the test).
//! The kernel side of the TAP is watched and fed through an AF_PACKET socket bound to it.
//! Without root or /dev/net/tun, the TAP tests are skipped with the reason.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP,
};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::header::VnetHeader;
use super::*;

const WRITE: u16 = 0x2;
const MEM_SIZE: usize = 0x80_0000;
/// Guest buffers live from here on (the queues sit below).
const BUF_BASE: u64 = 0x10_0000;
const ETHERTYPE: [u8; 2] = [0x88, 0xb5]; // IEEE local experimental: nobody else answers it
const MAC: [u8; 6] = [0x02, 0xca, 0xfe, 0, 0, 1];

// ---- the kernel side: a network namespace, a TAP, a packet socket ----

fn cvt(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

/// The test thread in a fresh network namespace; back in the original one on drop.
struct NetNs {
    original: File,
}

impl NetNs {
    fn enter() -> Result<Self, String> {
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err("/dev/net/tun is missing (modprobe tun)".into());
        }
        let original =
            File::open("/proc/thread-self/ns/net").map_err(|e| format!("no netns file: {e}"))?;
        // SAFETY: unshare takes flags only; CLONE_NEWNET moves just this thread.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) }, "unshare")
            .map_err(|e| format!("cannot create a network namespace (needs root): {e}"))?;
        // IPv6 would send router solicitations on the TAP as soon as it is up.
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        Ok(Self { original })
    }
}

impl std::ops::Drop for NetNs {
    fn drop(&mut self) {
        // SAFETY: setns with a namespace fd we own; only this thread moves.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = cvt(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
        "socket",
    )?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A persistent TAP created by the test, up, with a large MTU; deleted on drop.
struct TestTap {
    name: String,
    index: libc::c_int,
}

impl TestTap {
    fn create() -> io::Result<Self> {
        Self::create_owned(None)
    }

    /// With `owner`, only that uid (or CAP_NET_ADMIN) may attach.
    fn create_owned(owner: Option<libc::uid_t>) -> io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ctnt{}{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self::set_persist(&name, true, owner)?;
        let sock = ctl_socket()?;
        let mut req = super::tap::ifreq(&name, 0);
        req.ifr_ifru.ifru_mtu = 9000;
        // SAFETY: SIOCSIFMTU reads one ifreq, which `req` is.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &req) };
        cvt(rc, "SIOCSIFMTU")?;
        req.ifr_ifru.ifru_flags = (libc::IFF_UP) as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads one ifreq, which `req` is.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
        cvt(rc, "SIOCSIFFLAGS")?;
        let cname = std::ffi::CString::new(name.clone()).unwrap();
        // SAFETY: a valid C string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) } as libc::c_int;
        Ok(Self { name, index })
    }

    fn set_persist(name: &str, on: bool, owner: Option<libc::uid_t>) -> io::Result<()> {
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let req = super::tap::ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI);
        // SAFETY: TUNSETIFF reads one ifreq; TUNSETPERSIST and TUNSETOWNER take an int by value.
        unsafe {
            cvt(
                libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &req),
                "TUNSETIFF",
            )?;
            cvt(
                libc::ioctl(
                    tun.as_raw_fd(),
                    libc::TUNSETPERSIST,
                    libc::c_ulong::from(on),
                ),
                "TUNSETPERSIST",
            )?;
            if let Some(uid) = owner {
                let arg = libc::c_ulong::from(uid);
                cvt(
                    libc::ioctl(tun.as_raw_fd(), libc::TUNSETOWNER, arg),
                    "TUNSETOWNER",
                )?;
            }
        }
        Ok(())
    }
}

impl std::ops::Drop for TestTap {
    fn drop(&mut self) {
        let _ = Self::set_persist(&self.name, false, None);
    }
}

/// An AF_PACKET socket on the TAP's kernel side, with or without virtio-net headers.
struct Wire {
    fd: OwnedFd,
    vnet: bool,
}

impl Wire {
    fn new(tap: &TestTap, vnet: bool) -> io::Result<Self> {
        let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
        // SAFETY: plain socket call; the fd is owned right away.
        let fd = cvt(
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) },
            "packet socket",
        )?;
        // SAFETY: `fd` is fresh and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let set = |opt: libc::c_int, what: &str| {
            let one: libc::c_int = 1;
            // SAFETY: the option reads one int from `one`.
            cvt(
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_PACKET,
                        opt,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                },
                what,
            )
        };
        // Straight to the TAP: until the kernel's link watch has seen the carrier come up
        // (the device attaching), the TAP's qdisc silently drops what it is given.
        set(libc::PACKET_QDISC_BYPASS, "PACKET_QDISC_BYPASS")?;
        if vnet {
            set(libc::PACKET_VNET_HDR, "PACKET_VNET_HDR")?;
        }
        // SAFETY: sockaddr_ll is plain data; zeroes are valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = tap.index;
        // SAFETY: binds to a sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        cvt(rc, "bind")?;
        Ok(Self { fd, vnet })
    }

    /// Sends `frame` out of the TAP's kernel side (so the device can read it).
    fn inject(&self, hdr: Option<VnetHeader>, frame: &[u8]) {
        let mut buf = Vec::new();
        if self.vnet {
            buf.extend_from_slice(&hdr.unwrap_or_default().to_bytes()[..10]);
        }
        buf.extend_from_slice(frame);
        // SAFETY: sends `buf.len()` bytes from `buf`.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        assert_eq!(
            n,
            buf.len() as isize,
            "inject: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame that entered the kernel from the TAP (what the device wrote), with the
    /// header fields when the socket has them; None after 2 s without one.
    fn recv_incoming(&self) -> Option<(VnetHeader, Vec<u8>)> {
        let mut buf = vec![0u8; 70000];
        loop {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 2000) } <= 0 {
                return None;
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: receives into `buf` and `from`, both of the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            assert!(n >= 0, "recv: {}", io::Error::last_os_error());
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let data = &buf[..n as usize];
            if !self.vnet {
                return Some((VnetHeader::default(), data.to_vec()));
            }
            let mut h = [0u8; HDR_LEN];
            h[..10].copy_from_slice(&data[..10]);
            return Some((VnetHeader::from_bytes(&h), data[10..].to_vec()));
        }
    }
}

/// Waits until the device's TAP has a frame to read.
fn wait_readable(fd: &impl AsRawFd) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1, "no frame reached the TAP within 5 s");
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x09]);
    f.extend_from_slice(&ETHERTYPE);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

/// An Ethernet + IPv4 + TCP frame with `payload` bytes, valid enough for the kernel's GSO
/// checks, and the header asking for TSO with segments of `mss`.
fn tcp4_gso(payload: usize, mss: u16) -> (VnetHeader, Vec<u8>) {
    let mut f = vec![
        0x02, 0xca, 0xfe, 0, 0, 1, 0x02, 0, 0, 0, 0, 0x09, 0x08, 0x00,
    ];
    let tot = (20 + 20 + payload) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&4000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH|ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| i as u8));
    let hdr = VnetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        hdr_len: 54,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    (hdr, f)
}

// ---- the guest side: memory, two mock queues, the device ----

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One mock queue and the driver's bookkeeping. The mock lays its used ring out over the
/// upper half of the avail ring's entries, so a test posts fewer than 128 chains per queue.
struct DriverQueue<'a> {
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    next_desc: u16,
    seen_used: u16,
}

impl<'a> DriverQueue<'a> {
    fn new(mem: &'a GuestMemoryMmap, at: u64) -> Self {
        Self {
            vq: MockSplitQueue::create(mem, GuestAddress(at), QUEUE_SIZE),
            next_desc: 0,
            seen_used: 0,
        }
    }

    /// Posts one chain (its descriptors chained in order).
    fn post(&mut self, descs: &[RawDescriptor]) {
        let n = descs.len() as u16;
        assert!(
            self.next_desc + n <= QUEUE_SIZE,
            "test posts too many descriptors"
        );
        let chained: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let d = Descriptor::from(*d);
                let last = i + 1 == descs.len();
                let flags = if last { d.flags() & !1 } else { d.flags() | 1 };
                let next = if last {
                    0
                } else {
                    self.next_desc + i as u16 + 1
                };
                RawDescriptor::from(Descriptor::new(d.addr().0, d.len(), flags, next))
            })
            .collect();
        self.vq.add_desc_chains(&chained, self.next_desc).unwrap();
        self.next_desc += n;
    }

    /// Used entries since the last call, as (head, len).
    fn take_used(&mut self) -> Vec<(u16, u32)> {
        let idx = self.vq.used().idx().load();
        let mut out = Vec::new();
        while self.seen_used != idx {
            let e = self
                .vq
                .used()
                .ring()
                .ref_at(usize::from(self.seen_used % QUEUE_SIZE))
                .unwrap()
                .load();
            out.push((e.id() as u16, e.len()));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        out
    }
}

struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    rx: DriverQueue<'a>,
    tx: DriverQueue<'a>,
    dev: Net,
    irq: Arc<IrqTrigger>,
    next_buf: u64,
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemoryMmap, tap: Tap, features: u64) -> Self {
        let mut dev = Net::with_tap(tap, MAC).unwrap();
        let rx = DriverQueue::new(mem, 0);
        let tx = DriverQueue::new(mem, 0x8000);
        dev.ack_features(features);
        let irq = Arc::new(IrqTrigger::new().unwrap());
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![rx.vq.create_queue().unwrap(), tx.vq.create_queue().unwrap()],
            queue_evts: (0..2)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
            irq: irq.clone(),
        })
        .unwrap();
        Self {
            mem,
            rx,
            tx,
            dev,
            irq,
            next_buf: BUF_BASE,
        }
    }

    /// Guest memory for a buffer of `len` bytes.
    fn alloc(&mut self, len: usize) -> u64 {
        let at = self.next_buf;
        self.next_buf += (len as u64 + 0xfff) & !0xfff;
        assert!(self.next_buf <= MEM_SIZE as u64);
        at
    }

    /// Puts header + frame in guest memory and posts them as one transmit chain of two
    /// descriptors (the header split over two more when `split_header`).
    fn post_tx(&mut self, hdr: VnetHeader, frame: &[u8], split_header: bool) {
        let h = self.alloc(HDR_LEN);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(h))
            .unwrap();
        let f = self.alloc(frame.len());
        self.mem.write_slice(frame, GuestAddress(f)).unwrap();
        if split_header {
            self.tx.post(&[
                desc(h, 5, 0),
                desc(h + 5, 7, 0),
                desc(f, frame.len() as u32, 0),
            ]);
        } else {
            self.tx
                .post(&[desc(h, HDR_LEN as u32, 0), desc(f, frame.len() as u32, 0)]);
        }
    }

    /// Posts `count` receive chains of one `len`-byte buffer each; returns their addresses.
    fn post_rx(&mut self, count: usize, len: u32) -> Vec<u64> {
        (0..count)
            .map(|_| {
                let at = self.alloc(len as usize);
                self.rx.post(&[desc(at, len, WRITE)]);
                at
            })
            .collect()
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }
}

/// The features a Linux guest accepts from this device.
const LINUX_FEATURES: u64 = AVAIL_FEATURES;

/// Runs `test` in its own network namespace with a fresh TAP, or skips with the reason.
fn with_tap(name: &str, test: impl FnOnce(&TestTap)) {
    let ns = match NetNs::enter() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipped {name}: {why}");
            return;
        }
    };
    let tap = TestTap::create().expect("create the test TAP");
    test(&tap);
    drop(tap);
    drop(ns);
}

fn open(tap: &TestTap) -> Tap {
    Tap::open(&tap.name, HDR_LEN).expect("attach to the test TAP")
}

// ---- tests without a TAP ----

#[test]
fn config_space_has_the_mac_and_link_up() {
    let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let tap = Tap::from_socket_for_tests(File::from(OwnedFd::from(a)), "stand-in");
    let dev = Net::with_tap(tap, MAC).unwrap();
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(&b[..6], &MAC);
    assert_eq!(
        u16::from_le_bytes([b[6], b[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(dev.device_type(), device_type::NET);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE; 2]);
}

#[test]
fn tap_offload_follows_the_guest_receive_features() {
    let f = |bits: &[u32]| bits.iter().fold(0u64, |acc, b| acc | 1 << b);
    assert_eq!(tap_offload(0), 0);
    // TSO without checksum offload is not a thing in virtio or tun.
    assert_eq!(tap_offload(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
    assert_eq!(tap_offload(f(&[VIRTIO_NET_F_GUEST_CSUM])), libc::TUN_F_CSUM);
    assert_eq!(
        tap_offload(AVAIL_FEATURES),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    );
}

#[test]
fn attaching_without_permission_names_the_tap_and_the_remedy() {
    let ns = match NetNs::enter() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipped attaching_without_permission_names_the_tap_and_the_remedy: {why}");
            return;
        }
    };
    // A TAP that belongs to another user; a thread without CAP_NET_ADMIN may not attach.
    let tap = TestTap::create_owned(Some(4_000_000)).expect("create the test TAP");
    let name = tap.name.clone();
    let err = std::thread::spawn(move || {
        #[repr(C)]
        struct CapHeader {
            version: u32,
            pid: libc::c_int,
        }
        let header = CapHeader {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let data = [0u32; 6]; // effective, permitted, inheritable x 2: none
                              // SAFETY: capset reads the header and two data structs; capabilities are per thread,
                              // so only this short-lived thread loses them.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
        assert_eq!(rc, 0, "capset: {}", io::Error::last_os_error());
        Tap::open(&name, HDR_LEN).unwrap_err()
    })
    .join()
    .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, TapError::Permission { .. }), "{err:?}");
    assert!(
        msg.contains(&tap.name) && msg.contains("CAP_NET_ADMIN"),
        "{msg}"
    );
    drop(tap);
    drop(ns);
}

// ---- transmit ----

#[test]
fn tx_frame_reaches_the_kernel_side_of_the_tap() {
    with_tap("tx_frame_reaches_the_kernel_side_of_the_tap", |tap| {
        let wire = Wire::new(tap, false).unwrap();
        let mem = memory();
        let mut h = Harness::new(&mem, open(tap), LINUX_FEATURES);
        let f1 = frame(60, 1);
        let f2 = frame(1514, 2);
        h.post_tx(VnetHeader::default(), &f1, false);
        h.post_tx(VnetHeader::default(), &f2, true);
        assert!(h.dev.process_tx());
        assert_eq!(h.tx.take_used(), vec![(0, 0), (2, 0)]);
        assert_eq!(wire.recv_incoming().unwrap().1, f1);
        assert_eq!(wire.recv_incoming().unwrap().1, f2);
        let c = h.dev.counters();
        assert_eq!((c.tx_packets, c.tx_bytes, c.dropped()), (2, 1574, 0));
    });
}

#[test]
fn tx_gso_header_reaches_the_kernel() {
    with_tap("tx_gso_header_reaches_the_kernel", |tap| {
        let wire = Wire::new(tap, true).unwrap();
        let mem = memory();
        let mut h = Harness::new(&mem, open(tap), LINUX_FEATURES);
        let (hdr, f) = tcp4_gso(3000, 1000);
        h.post_tx(hdr, &f, false);
        assert!(h.dev.process_tx());
        let (got, data) = wire.recv_incoming().expect("the GSO frame");
        assert_eq!(data, f, "one unsegmented frame");
        assert_eq!(u32::from(got.gso_type), VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(got.gso_size, 1000);
        assert_eq!(h.dev.counters().tx_packets, 1);
    });
}

#[test]
fn malformed_tx_chains_are_dropped_and_counted() {
    with_tap("malformed_tx_chains_are_dropped_and_counted", |tap| {
        let wire = Wire::new(tap, false).unwrap();
        let mem = memory();
        // Without HOST_TSO4 and CSUM, a TSO header is refused.
        let features = LINUX_FEATURES
            & !(1 << VIRTIO_NET_F_HOST_TSO4 | 1 << VIRTIO_NET_F_HOST_TSO6 | 1 << VIRTIO_NET_F_CSUM);
        let mut h = Harness::new(&mem, open(tap), features);
        let good = frame(100, 3);
        let hdr_at = h.alloc(HDR_LEN);
        let frame_at = h.alloc(good.len());
        mem.write_slice(&[0u8; HDR_LEN], GuestAddress(hdr_at))
            .unwrap();
        mem.write_slice(&good, GuestAddress(frame_at)).unwrap();
        let big = h.alloc(MAX_FRAME_LEN + 1);
        let ok_hdr = desc(hdr_at, HDR_LEN as u32, 0);
        let ok_frame = desc(frame_at, good.len() as u32, 0);
        let bad_hdr = |h: &mut Harness, v: VnetHeader| {
            let at = h.alloc(HDR_LEN);
            mem.write_slice(&v.to_bytes(), GuestAddress(at)).unwrap();
            desc(at, HDR_LEN as u32, 0)
        };
        let (tso, _) = tcp4_gso(3000, 1000);
        let cases: Vec<(Vec<RawDescriptor>, &str)> = vec![
            (
                vec![ok_hdr, desc(frame_at, 100, WRITE)],
                "write-only buffer",
            ),
            (
                vec![ok_hdr, desc(MEM_SIZE as u64 - 50, 100, 0)],
                "outside memory",
            ),
            (
                vec![ok_hdr, desc(u64::MAX - 10, 100, 0)],
                "address overflow",
            ),
            (
                std::iter::once(ok_hdr)
                    .chain((0..MAX_CHAIN_DESCS).map(|i| desc(frame_at + i as u64, 1, 0)))
                    .collect(),
                "too many descriptors",
            ),
            (
                vec![ok_hdr, desc(big, MAX_FRAME_LEN as u32 + 1, 0)],
                "frame over the limit",
            ),
            (vec![desc(hdr_at, 8, 0)], "header shorter than 12 bytes"),
            (vec![ok_hdr, desc(frame_at, 10, 0)], "runt frame"),
            (vec![bad_hdr(&mut h, tso), ok_frame], "TSO not accepted"),
            (
                vec![
                    bad_hdr(
                        &mut h,
                        VnetHeader {
                            gso_type: VIRTIO_NET_HDR_GSO_UDP as u8,
                            ..VnetHeader::default()
                        },
                    ),
                    ok_frame,
                ],
                "UDP GSO",
            ),
            (
                vec![
                    bad_hdr(
                        &mut h,
                        VnetHeader {
                            flags: 0x4,
                            ..VnetHeader::default()
                        },
                    ),
                    ok_frame,
                ],
                "unknown flag",
            ),
        ];
        let mut expect = NetCounters::default();
        for (descs, what) in &cases {
            h.tx.post(descs);
            h.tx.post(&[ok_hdr, ok_frame]);
            assert!(h.dev.process_tx(), "{what}");
            assert_eq!(h.tx.take_used().len(), 2, "{what}: both chains returned");
            let got = wire
                .recv_incoming()
                .unwrap_or_else(|| panic!("{what}: no frame"));
            assert_eq!(got.1, good, "{what}: only the good frame went out");
            expect.tx_packets += 1;
            expect.tx_bytes += good.len() as u64;
            match *what {
                "frame over the limit" => expect.tx_too_large += 1,
                "header shorter than 12 bytes" | "runt frame" => expect.tx_short += 1,
                "TSO not accepted" | "UDP GSO" | "unknown flag" => expect.tx_bad_header += 1,
                _ => expect.tx_bad_chain += 1,
            }
            assert_eq!(h.dev.counters(), expect, "{what}");
        }
        assert!(
            wire.recv_incoming().is_none(),
            "nothing else reached the TAP"
        );
    });
}

#[test]
fn tx_waits_for_room_when_the_tap_is_full() {
    // A datagram socket pair stands in for the TAP: unlike a TAP, it fills up.
    let (ours, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let size: libc::c_int = 16 << 10;
    // SAFETY: SO_SNDBUF reads one int from `size`.
    let rc = unsafe {
        libc::setsockopt(
            ours.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let tap = Tap::from_socket_for_tests(File::from(OwnedFd::from(ours)), "stand-in");
    let mem = memory();
    let mut h = Harness::new(&mem, tap, LINUX_FEATURES);
    let total = 100;
    for i in 0..total {
        h.post_tx(VnetHeader::default(), &frame(1000, i as u8), false);
    }
    assert!(h.dev.process_tx());
    let sent = h.tx.take_used().len();
    assert!(
        sent < total,
        "the socket pair holds fewer than {total} frames"
    );
    assert!(h.dev.tx_waiting_for_tap());
    assert!(h.dev.counters().tx_tap_full >= 1);
    // The chain that found the TAP full is still in the queue: freeing room sends it.
    let mut received = Vec::new();
    let mut buf = vec![0u8; 2048];
    peer.set_nonblocking(true).unwrap();
    let mut returned = sent;
    for _ in 0..10_000 {
        if received.len() == total {
            break;
        }
        while let Ok(n) = peer.recv(&mut buf) {
            received.push(buf[..n].to_vec());
        }
        h.dev.process_tx();
        returned += h.tx.take_used().len();
    }
    assert_eq!(returned, total);
    for (i, f) in received.iter().enumerate() {
        assert_eq!(
            &f[HDR_LEN..],
            &frame(1000, i as u8)[..],
            "frame {i} in order"
        );
    }
    let c = h.dev.counters();
    assert_eq!((c.tx_packets, c.dropped()), (total as u64, 0));
}

#[test]
fn event_loop_waits_for_the_tap_to_drain_without_spinning() {
    let (ours, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let size: libc::c_int = 16 << 10;
    // SAFETY: SO_SNDBUF reads one int from `size`.
    let rc = unsafe {
        libc::setsockopt(
            ours.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let tap = Tap::from_socket_for_tests(File::from(OwnedFd::from(ours)), "stand-in");
    let mem = memory();
    let mut h = Harness::new(&mem, tap, LINUX_FEATURES);
    let total = 60;
    for i in 0..total {
        h.post_tx(VnetHeader::default(), &frame(1000, i as u8), false);
    }
    let Harness { dev, mut tx, .. } = h;
    let tx_evt = dev.active.as_ref().unwrap().queue_evts[TX]
        .try_clone()
        .unwrap();
    let dev = Arc::new(Mutex::new(dev));
    let mut events = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    events.add_subscriber(dev.clone());
    // Activation sends what fits, then the device waits for room: no event until then.
    assert_eq!(events.run_with_timeout(1000).unwrap(), 1);
    assert!(dev.lock().unwrap().tx_waiting_for_tap());
    let mut returned = tx.take_used().len();
    assert!(returned < total);
    // A guest notification while the TAP is full sends nothing more, and does not spin.
    tx_evt.write(1).unwrap();
    assert_eq!(events.run_with_timeout(1000).unwrap(), 1);
    assert!(tx.take_used().is_empty());
    for _ in 0..3 {
        assert_eq!(events.run_with_timeout(0).unwrap(), 0, "no busy loop");
    }
    // Room on the TAP wakes the device up by itself.
    let mut buf = vec![0u8; 2048];
    let mut received = 0;
    for _ in 0..50 {
        while peer.recv(&mut buf).is_ok() {
            received += 1;
        }
        if received == total {
            break;
        }
        events.run_with_timeout(200).unwrap();
        returned += tx.take_used().len();
    }
    assert_eq!((received, returned), (total, total));
    assert!(!dev.lock().unwrap().tx_waiting_for_tap());
    assert_eq!(dev.lock().unwrap().counters().tx_packets, total as u64);
}

// ---- receive ----

#[test]
fn rx_frame_fills_one_buffer() {
    with_tap("rx_frame_fills_one_buffer", |tap| {
        let wire = Wire::new(tap, false).unwrap();
        let mem = memory();
        let mut h = Harness::new(&mem, open(tap), LINUX_FEATURES);
        let bufs = h.post_rx(2, 2048);
        let f = frame(200, 4);
        wire.inject(None, &f);
        wait_readable(&h.dev.tap);
        assert!(h.dev.process_rx());
        assert_eq!(h.rx.take_used(), vec![(0, (HDR_LEN + f.len()) as u32)]);
        let got = h.read(bufs[0], HDR_LEN + f.len());
        let mut hb = [0u8; HDR_LEN];
        hb.copy_from_slice(&got[..HDR_LEN]);
        assert_eq!(VnetHeader::from_bytes(&hb).num_buffers, 1);
        assert_eq!(&got[HDR_LEN..], &f[..]);
        let c = h.dev.counters();
        assert_eq!((c.rx_packets, c.rx_bytes), (1, 200));
        assert_eq!(h.irq.status() & 1, 0, "process_rx itself does not signal");
        h.dev.signal(true, false);
        assert_eq!(
            h.irq.status() & 1,
            1,
            "the guest is interrupted for used buffers"
        );
    });
}

#[test]
fn rx_frame_spans_mergeable_buffers_and_waits_for_more() {
    with_tap(
        "rx_frame_spans_mergeable_buffers_and_waits_for_more",
        |tap| {
            let wire = Wire::new(tap, false).unwrap();
            let mem = memory();
            let mut h = Harness::new(&mem, open(tap), LINUX_FEATURES);
            let mut bufs = h.post_rx(2, 1024);
            let f = frame(3000, 5);
            wire.inject(None, &f);
            wait_readable(&h.dev.tap);
            // Two buffers are not enough: nothing is used, the frame waits, the TAP is not watched.
            assert!(!h.dev.process_rx());
            assert!(h.dev.rx_waiting_for_buffers());
            assert!(h.rx.take_used().is_empty());
            bufs.extend(h.post_rx(2, 1024));
            assert!(h.dev.process_rx());
            let used = h.rx.take_used();
            assert_eq!(
                used,
                vec![(0, 1024), (1, 1024), (2, (HDR_LEN + 3000 - 2048) as u32)]
            );
            let mut got = Vec::new();
            for (i, &(_, len)) in used.iter().enumerate() {
                got.extend(h.read(bufs[i], len as usize));
            }
            let mut hb = [0u8; HDR_LEN];
            hb.copy_from_slice(&got[..HDR_LEN]);
            assert_eq!(VnetHeader::from_bytes(&hb).num_buffers, 3);
            assert_eq!(&got[HDR_LEN..], &f[..]);
            // The fourth buffer is still the guest's.
            let f2 = frame(64, 6);
            wire.inject(None, &f2);
            wait_readable(&h.dev.tap);
            assert!(h.dev.process_rx());
            assert_eq!(h.rx.take_used(), vec![(3, (HDR_LEN + 64) as u32)]);
            assert_eq!(h.dev.counters().rx_packets, 2);
            assert_eq!(
                h.dev.counters().rx_direct,
                0,
                "too little room: the host buffer"
            );
        },
    );
}

#[test]
fn rx_reads_straight_into_guest_buffers_with_room_for_any_frame() {
    with_tap(
        "rx_reads_straight_into_guest_buffers_with_room_for_any_frame",
        |tap| {
            let wire = Wire::new(tap, false).unwrap();
            let mem = memory();
            // Checksum offload not accepted: the kernel's flags must not reach the guest.
            let features = LINUX_FEATURES
                & !(1 << VIRTIO_NET_F_GUEST_CSUM
                    | 1 << VIRTIO_NET_F_GUEST_TSO4
                    | 1 << VIRTIO_NET_F_GUEST_TSO6);
            let mut h = Harness::new(&mem, open(tap), features);
            // 21 x 4 KiB: room for the largest frame even after the first two frames, so
            // no host copy.
            let bufs = h.post_rx(21, 4096);
            for at in &bufs {
                mem.write_slice(&[0xee; 16], GuestAddress(*at)).unwrap();
            }
            let (f1, f2, f3) = (frame(3000, 10), frame(9000, 11), frame(60, 12));
            for f in [&f1, &f2, &f3] {
                wire.inject(None, f);
            }
            wait_readable(&h.dev.tap);
            assert!(h.dev.process_rx());
            let used = h.rx.take_used();
            assert_eq!(
                used,
                vec![
                    (0, 3012),
                    (1, 4096),
                    (2, 4096),
                    (3, (HDR_LEN + 9000 - 8192) as u32),
                    (4, 72)
                ],
                "each frame takes the chains it fills; the others go back to the ring"
            );
            let header = |at: u64| {
                let mut hb = [0u8; HDR_LEN];
                hb.copy_from_slice(&h.read(at, HDR_LEN));
                VnetHeader::from_bytes(&hb)
            };
            assert_eq!(header(bufs[0]).num_buffers, 1);
            assert_eq!(header(bufs[1]).num_buffers, 3);
            assert_eq!(header(bufs[4]).num_buffers, 1);
            assert_eq!(header(bufs[1]).flags, 0);
            assert_eq!(h.read(bufs[0] + HDR_LEN as u64, 3000), f1);
            let mut got = h.read(bufs[1] + HDR_LEN as u64, 4096 - HDR_LEN);
            got.extend(h.read(bufs[2], 4096));
            got.extend(h.read(bufs[3], 9000 + HDR_LEN - 8192));
            assert_eq!(got, f2);
            let c = h.dev.counters();
            assert_eq!((c.rx_packets, c.rx_bytes, c.dropped()), (3, 12060, 0));
            assert_eq!(c.rx_direct, 3, "no frame went through the host buffer");
        },
    );
}

#[test]
fn rx_chains_held_between_frames_go_back_when_room_runs_short() {
    with_tap(
        "rx_chains_held_between_frames_go_back_when_room_runs_short",
        |tap| {
            let wire = Wire::new(tap, false).unwrap();
            let mem = memory();
            let mut h = Harness::new(&mem, open(tap), LINUX_FEATURES);
            // 18 x 4 KiB: room for a 64 KiB frame for the first two frames only.
            let bufs = h.post_rx(18, 4096);
            let frames: Vec<Vec<u8>> = (0..18).map(|i| frame(64, 20 + i)).collect();
            for f in &frames {
                wire.inject(None, f);
            }
            wait_readable(&h.dev.tap);
            assert!(h.dev.process_rx());
            // Every frame lands in the next chain in ring order, whichever path took it: the
            // held chains went back to the ring when the direct path ran short.
            let used = h.rx.take_used();
            let expect: Vec<(u16, u32)> = (0..18).map(|i| (i, (HDR_LEN + 64) as u32)).collect();
            assert_eq!(used, expect);
            for (i, f) in frames.iter().enumerate() {
                assert_eq!(&h.read(bufs[i] + HDR_LEN as u64, 64), f, "frame {i}");
            }
            let c = h.dev.counters();
            assert_eq!((c.rx_packets, c.rx_direct, c.dropped()), (18, 2, 0));
            assert!(h.dev.rx_waiting_for_buffers());
            assert!(h.dev.reset());
        },
    );
}

#[test]
fn rx_gso_frame_keeps_its_offload_header() {
    with_tap("rx_gso_frame_keeps_its_offload_header", |tap| {
        let wire = Wire::new(tap, true).unwrap();
        let mem = memory();
        let mut h = Harness::new(&mem, open(tap), LINUX_FEATURES);
        let bufs = h.post_rx(8, 4096);
        let (hdr, f) = tcp4_gso(8000, 1400);
        wire.inject(Some(hdr), &f);
        wait_readable(&h.dev.tap);
        assert!(h.dev.process_rx());
        let used = h.rx.take_used();
        assert_eq!(
            used.len(),
            2,
            "one 8 KiB frame over two 4 KiB buffers: {used:?}"
        );
        let mut got = h.read(bufs[0], used[0].1 as usize);
        got.extend(h.read(bufs[1], used[1].1 as usize));
        let mut hb = [0u8; HDR_LEN];
        hb.copy_from_slice(&got[..HDR_LEN]);
        let g = VnetHeader::from_bytes(&hb);
        assert_eq!(u32::from(g.gso_type), VIRTIO_NET_HDR_GSO_TCPV4, "{g:?}");
        assert_eq!(g.gso_size, 1400);
        assert_eq!(g.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 1);
        assert_eq!((g.csum_start, g.csum_offset, g.num_buffers), (34, 16, 2));
        assert_eq!(got.len() - HDR_LEN, f.len());
    });
}

#[test]
fn malformed_rx_chains_are_dropped_and_counted() {
    with_tap("malformed_rx_chains_are_dropped_and_counted", |tap| {
        let wire = Wire::new(tap, false).unwrap();
        let mem = memory();
        let mut h = Harness::new(
            &mem,
            open(tap),
            LINUX_FEATURES & !(1 << VIRTIO_NET_F_MRG_RXBUF),
        );
        let buf = h.alloc(2048);
        let cases: Vec<(Vec<RawDescriptor>, &str)> = vec![
            (vec![desc(buf, 2048, 0)], "read-only buffer"),
            (
                vec![desc(MEM_SIZE as u64 - 100, 2048, WRITE)],
                "outside memory",
            ),
            (
                (0..=MAX_CHAIN_DESCS)
                    .map(|i| desc(buf + 16 * i as u64, 16, WRITE))
                    .collect(),
                "too many descriptors",
            ),
            (vec![desc(buf, 0, WRITE)], "no room at all"),
            (
                vec![desc(buf, 100, WRITE)],
                "too small without mergeable buffers",
            ),
        ];
        let mut expect = NetCounters::default();
        for (i, (descs, what)) in cases.iter().enumerate() {
            h.rx.post(descs);
            let good_at = h.post_rx(1, 2048)[0];
            let f = frame(300, i as u8);
            wire.inject(None, &f);
            wire.inject(None, &f);
            wait_readable(&h.dev.tap);
            assert!(h.dev.process_rx(), "{what}");
            let used = h.rx.take_used();
            assert_eq!(used.len(), 2, "{what}: {used:?}");
            assert_eq!(used[0].1, 0, "{what}: the bad chain comes back empty");
            assert_eq!(used[1].1, (HDR_LEN + 300) as u32, "{what}");
            assert_eq!(h.read(good_at + HDR_LEN as u64, 300), f, "{what}");
            match *what {
                "too small without mergeable buffers" => expect.rx_no_room += 1,
                _ => expect.rx_bad_chain += 1,
            }
            expect.rx_packets += 1;
            expect.rx_bytes += 300;
            assert_eq!(h.dev.counters(), expect, "{what}");
        }
    });
}

#[test]
fn event_loop_stops_watching_the_tap_without_buffers() {
    with_tap("event_loop_stops_watching_the_tap_without_buffers", |tap| {
        let wire = Wire::new(tap, false).unwrap();
        let mem = memory();
        let h = Harness::new(&mem, open(tap), LINUX_FEATURES);
        let Harness {
            dev, mut rx, irq, ..
        } = h;
        let dev = Arc::new(Mutex::new(dev));
        let mut events = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
        events.add_subscriber(dev.clone());
        // Activation (already done) is picked up by the loop; the guest has no buffers yet.
        assert_eq!(events.run_with_timeout(1000).unwrap(), 1);
        assert!(dev.lock().unwrap().rx_waiting_for_buffers());
        wire.inject(None, &frame(100, 7));
        wait_readable(&dev.lock().unwrap().tap);
        // The TAP is readable, but without buffers the device does not watch it.
        for _ in 0..3 {
            assert_eq!(events.run_with_timeout(0).unwrap(), 0, "no busy loop");
        }
        // The guest posts a buffer and notifies the queue: the frame is delivered.
        rx.post(&[desc(0x10_0000, 2048, WRITE)]);
        rx.post(&[desc(0x20_0000, 2048, WRITE)]);
        let evt = {
            let d = dev.lock().unwrap();
            d.active.as_ref().unwrap().queue_evts[RX]
                .try_clone()
                .unwrap()
        };
        evt.write(1).unwrap();
        assert!(events.run_with_timeout(1000).unwrap() >= 1);
        assert_eq!(rx.take_used(), vec![(0, (HDR_LEN + 100) as u32)]);
        assert_eq!(irq.status() & 1, 1);
        // One buffer is left, so the TAP is watched again: the next frame arrives by itself.
        assert!(!dev.lock().unwrap().rx_waiting_for_buffers());
        wire.inject(None, &frame(80, 8));
        assert_eq!(events.run_with_timeout(5000).unwrap(), 1);
        assert_eq!(rx.take_used(), vec![(1, (HDR_LEN + 80) as u32)]);
        assert_eq!(dev.lock().unwrap().counters().rx_packets, 2);
        // No buffers now: silence again, however many frames wait.
        assert!(dev.lock().unwrap().rx_waiting_for_buffers());
        wire.inject(None, &frame(80, 9));
        assert_eq!(events.run_with_timeout(0).unwrap(), 0);
    });
}

#[test]
fn a_reset_device_can_be_activated_again() {
    let (ours, _peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let tap = Tap::from_socket_for_tests(File::from(OwnedFd::from(ours)), "stand-in");
    let mem = memory();
    let mut h = Harness::new(&mem, tap, LINUX_FEATURES);
    assert!(h.dev.is_activated());
    assert!(h.dev.reset());
    assert!(!h.dev.is_activated());
    assert!(!h.dev.process_tx() && !h.dev.process_rx());
}
