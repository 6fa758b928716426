//! Throughput of the vsock device's host path: the device core driven by the mock driver over
//! in-process guest memory, host side a real Unix socket served by a reader/writer thread (the
//! host peer). Reports bytes/s each way, the device thread's CPU time per MiB and how busy the
//! peer was, next to two bounds measured in the same run:
//!
//! - memcpy bandwidth of this machine (64 MiB buffers, one thread): the physical bound the
//!   target is stated against;
//! - the same peer talking to a plain socket instead of the device ("socket only": the other
//!   end sends from one hot 64 KiB buffer or reads into a 16 MiB ring, as the device does with
//!   guest buffers): what a Unix socket moves on this machine with no virtio work at all.
//!
//! The mock guest does no data work: its tx buffers are filled once, its rx buffers are not
//! read. It posts `VSOCK_BENCH_RX_POSTED` rx buffers (default 256, the whole queue) of
//! `VSOCK_BENCH_RX_BUF` bytes (default 65536). The device thread and the peer are pinned to
//! CPUs 0 and 1 (`VSOCK_BENCH_PIN=0` lets the scheduler place them; it sometimes puts both on
//! one CPU, which halves the result). The peer copies with write/read; `VSOCK_BENCH_PEER=splice`
//! makes it write with vmsplice + splice instead, so that the device alone bounds host → guest.
//!
//! Run: `bench/vsock.sh` (or `cargo bench -p capsule-vsock --features test-utils --bench
//! throughput`). `VSOCK_BENCH_MIB` sets the volume per run (default 512), `VSOCK_BENCH_RUNS`
//! the runs per direction (default 5; the median is reported), `VSOCK_BENCH_DIR=h2g|g2h` one
//! direction only.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use capsule_vsock::mock::{MockDriver, Q};
use capsule_vsock::proto::{op, Header, HDR_LEN, HOST_CID, TYPE_STREAM};
use capsule_vsock::{VsockConfig, VsockCore};

const GUEST_CID: u64 = 3;
const QUEUE: u16 = 256;
const PKT: usize = 64 * 1024;
const GUEST_BUF: u32 = 1 << 20;
const PEER_BUF: usize = 1 << 20;

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Pins the calling thread to CPU `cpu` unless `VSOCK_BENCH_PIN=0`.
fn pin_to(cpu: usize) {
    if std::env::var("VSOCK_BENCH_PIN").as_deref() == Ok("0") {
        return;
    }
    // SAFETY: the set is a plain bitmask owned by this frame; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Waits until the core's host sockets have events, as the VMM's event loop would, instead of
/// spinning (which would charge idle polling to the device).
fn wait_backend(core: &VsockCore) {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: core.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes only the one pollfd passed.
    unsafe { libc::poll(&mut pfd, 1, 100) };
}

fn memcpy_bandwidth() -> f64 {
    let src = vec![0x5au8; 64 << 20];
    let mut dst = vec![0u8; 64 << 20];
    dst.copy_from_slice(&src); // fault the pages in
    let rounds = 16;
    let t = Instant::now();
    for i in 0..rounds {
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst[i]);
    }
    (rounds * src.len()) as f64 / t.elapsed().as_secs_f64()
}

fn hdr(op: u16, host_port: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: host_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: GUEST_BUF,
        fwd_cnt,
        ..Header::default()
    }
}

/// A pipe for the splicing peer: (read end, write end).
fn peer_pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array; checked before use.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned by nobody else.
    let (r, w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: fcntl on a descriptor we own; a smaller pipe only means more calls.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PEER_BUF as libc::c_int) };
    (r, w)
}

/// Writes `buf` into `stream` without copying it: vmsplice into a pipe, splice into the socket.
/// (The buffer never changes, so it may be referenced while in flight.)
fn splice_write(stream: &UnixStream, pipe: &(std::fs::File, std::fs::File), buf: &[u8]) -> usize {
    let iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the iovec describes `buf`, which outlives the call and is never written.
    let taken = unsafe { libc::vmsplice(pipe.1.as_raw_fd(), &iov, 1, 0) };
    assert!(taken > 0, "vmsplice: {}", std::io::Error::last_os_error());
    let mut moved = 0;
    while moved < taken as usize {
        // SAFETY: splice between descriptors we own; no memory is passed.
        let n = unsafe {
            libc::splice(
                pipe.0.as_raw_fd(),
                std::ptr::null_mut(),
                stream.as_raw_fd(),
                std::ptr::null_mut(),
                taken as usize - moved,
                0,
            )
        };
        assert!(n > 0, "splice: {}", std::io::Error::last_os_error());
        moved += n as usize;
    }
    moved
}

/// The host peer: writes or reads `total` bytes in 1 MiB calls on CPU 1; returns its CPU time.
fn spawn_peer(mut stream: UnixStream, total: usize, writes: bool) -> std::thread::JoinHandle<f64> {
    let splicing = peer_splices();
    std::thread::spawn(move || {
        pin_to(1);
        let c0 = thread_cpu();
        let mut buf = vec![0xa5u8; PEER_BUF];
        let pipe = splicing.then(peer_pipe);
        let mut left = total;
        while left > 0 {
            let n = if let (true, Some(pipe)) = (writes, &pipe) {
                splice_write(&stream, pipe, &buf[..left.min(buf.len())])
            } else if writes {
                let n = left.min(buf.len());
                stream.write_all(&buf[..n]).unwrap();
                n
            } else {
                stream.read(&mut buf).unwrap()
            };
            assert!(n > 0, "connection closed early");
            left -= n;
        }
        thread_cpu() - c0
    })
}

struct Setup {
    core: VsockCore,
    drv: MockDriver,
    host_port: u32,
    /// The device's `buf_alloc`, from its REQUEST: the guest's initial credit.
    device_buf: u32,
    _dir: std::path::PathBuf,
}

/// A device with one established host-initiated connection; returns the host client.
fn setup() -> (Setup, UnixStream) {
    let dir = std::env::temp_dir().join(format!("capsule-vsock-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let core = VsockCore::new(VsockConfig::new(GUEST_CID, &uds)).unwrap();
    let (rx_posted, rx_buf) = rx_layout();
    let mut drv = MockDriver::new(QUEUE, (rx_buf + HDR_LEN) as u32).unwrap();
    drv.post_rx(rx_posted);
    let mut s = Setup {
        core,
        drv,
        host_port: 0,
        device_buf: 0,
        _dir: dir,
    };
    let mut client = UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 1234\n").unwrap();
    let mut req = None;
    while req.is_none() {
        s.core.process_backend();
        s.core.process_rx(&s.drv.mem, &mut s.drv.rxq);
        req = s
            .drv
            .take_rx()
            .into_iter()
            .find(|(h, _)| h.op == op::REQUEST);
    }
    s.drv.post_rx(1);
    let req = req.unwrap().0;
    s.host_port = req.src_port;
    s.device_buf = req.buf_alloc;
    s.drv
        .send(&hdr(op::RESPONSE, s.host_port, 0), &[], false)
        .unwrap();
    s.core.process_tx(&s.drv.mem, &mut s.drv.txq);
    s.drv.take_used(Q::Tx);
    let mut ok = [0u8; 64];
    let mut n = 0;
    while !ok[..n].contains(&b'\n') {
        n += client.read(&mut ok[n..]).unwrap();
    }
    (s, client)
}

/// Seconds, device-side CPU seconds and peer CPU seconds of one run.
type Timing = (f64, f64, f64);

/// Host → guest: the peer writes `total` bytes into the client socket; the device thread moves
/// them into rx buffers, the mock guest returns them and its credit.
fn host_to_guest(total: usize) -> Timing {
    let (mut s, client) = setup();
    pin_to(0);
    let peer = spawn_peer(client, total, true);
    let (t0, c0) = (Instant::now(), thread_cpu());
    let mut got = 0usize;
    let mut fwd: u32 = 0;
    let mut since_update = 0usize;
    while got < total {
        if s.core.process_backend() == 0 && !s.core.has_rx_work() {
            wait_backend(&s.core);
            continue;
        }
        s.core.process_rx(&s.drv.mem, &mut s.drv.rxq);
        let used = s.drv.take_used(Q::Rx);
        for u in &used {
            let len = (u.len as usize).saturating_sub(HDR_LEN);
            got += len;
            fwd = fwd.wrapping_add(len as u32);
            since_update += len;
        }
        s.drv.post_rx(used.len());
        if since_update >= (GUEST_BUF / 2) as usize {
            s.drv
                .send(&hdr(op::CREDIT_UPDATE, s.host_port, fwd), &[], false)
                .unwrap();
            s.core.process_tx(&s.drv.mem, &mut s.drv.txq);
            s.drv.take_used(Q::Tx);
            since_update = 0;
        }
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), thread_cpu() - c0);
    (secs, cpu, peer.join().unwrap())
}

/// Guest → host: the mock guest sends 64 KiB packets within its credit; the peer reads the
/// client socket.
fn guest_to_host(total: usize) -> Timing {
    let (mut s, client) = setup();
    pin_to(0);
    let peer = spawn_peer(client, total, false);
    // The guest's data is already in its buffers: producing it is guest work, not device work.
    s.drv.fill_tx_buffers(0x3c).unwrap();
    let (mut peer_buf, mut peer_fwd) = (s.device_buf, 0u32);
    let mut sent = 0usize;
    let mut tx_cnt: u32 = 0;
    let (t0, c0) = (Instant::now(), thread_cpu());
    while sent < total {
        let credit = peer_buf.saturating_sub(tx_cnt.wrapping_sub(peer_fwd)) as usize;
        let n = credit.min(PKT).min(total - sent);
        let room = s.drv.tx.free_descriptors() >= 2;
        if n == 0 || !room {
            // Out of credit or of tx buffers until the host reads: wait like the VMM would.
            wait_backend(&s.core);
        } else {
            let h = Header {
                len: n as u32,
                ..hdr(op::RW, s.host_port, 0)
            };
            s.drv.send_in_place(&h, n as u32).unwrap();
            sent += n;
            tx_cnt = tx_cnt.wrapping_add(n as u32);
        }
        s.core.process_backend();
        s.core.process_tx(&s.drv.mem, &mut s.drv.txq);
        s.drv.take_used(Q::Tx);
        s.core.process_rx(&s.drv.mem, &mut s.drv.rxq);
        let used = s.drv.take_used(Q::Rx);
        for u in &used {
            if let Some((h, _)) = s.drv.read_packet(u) {
                peer_buf = h.buf_alloc;
                peer_fwd = h.fwd_cnt;
            }
        }
        s.drv.post_rx(used.len());
    }
    // Until the host has taken everything.
    while !peer.is_finished() {
        if s.core.process_backend() == 0 {
            wait_backend(&s.core);
        }
        s.core.process_tx(&s.drv.mem, &mut s.drv.txq);
        s.drv.take_used(Q::Tx);
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), thread_cpu() - c0);
    (secs, cpu, peer.join().unwrap())
}

/// The same peer against a plain socket end on CPU 0: it sends 64 KiB writes from one buffer
/// (guest → host) or reads 64 KiB at a time into a 16 MiB ring (host → guest).
fn socket_only(total: usize, to_host: bool) -> Timing {
    let (mut end, peer_end) = UnixStream::pair().unwrap();
    pin_to(0);
    let peer = spawn_peer(peer_end, total, !to_host);
    let mut ring = vec![0x3cu8; if to_host { PKT } else { 16 << 20 }];
    let (t0, c0) = (Instant::now(), thread_cpu());
    let (mut done, mut off) = (0, 0);
    while done < total {
        if to_host {
            let n = PKT.min(total - done);
            end.write_all(&ring[..n]).unwrap();
            done += n;
        } else {
            if off + PKT > ring.len() {
                off = 0;
            }
            done += end.read(&mut ring[off..off + PKT]).unwrap();
            off += PKT;
        }
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), thread_cpu() - c0);
    (secs, cpu, peer.join().unwrap())
}

/// One run of one path.
struct Sample {
    memcpy: f64,
    bps: f64,
    cpu_us_per_mib: f64,
    peer_busy: f64,
}

impl Sample {
    fn new(memcpy: f64, total: usize, (secs, cpu, peer_cpu): Timing) -> Self {
        Self {
            memcpy,
            bps: total as f64 / secs,
            cpu_us_per_mib: cpu * 1e6 / (total >> 20) as f64,
            peer_busy: peer_cpu / secs,
        }
    }

    fn ratio(&self) -> f64 {
        self.bps / self.memcpy
    }

    fn line(&self) -> String {
        format!(
            "{:.2} GiB/s = {:.1}% of memcpy ({:.2} GiB/s), {:.0} us CPU/MiB on CPU 0, peer {:.0}% busy",
            gib(self.bps),
            100.0 * self.ratio(),
            gib(self.memcpy),
            self.cpu_us_per_mib,
            100.0 * self.peer_busy
        )
    }
}

fn gib(b: f64) -> f64 {
    b / (1u64 << 30) as f64
}

/// How many rx buffers the mock guest posts, and their payload size.
fn rx_layout() -> (usize, usize) {
    (
        env_usize("VSOCK_BENCH_RX_POSTED", usize::from(QUEUE)),
        env_usize("VSOCK_BENCH_RX_BUF", PKT).min(PKT),
    )
}

/// Whether the peer writes with vmsplice + splice (`VSOCK_BENCH_PEER=splice`).
fn peer_splices() -> bool {
    std::env::var("VSOCK_BENCH_PEER").as_deref() == Ok("splice")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // nothing for the libtest lister
    }
    let mib = env_usize("VSOCK_BENCH_MIB", 512);
    let runs = env_usize("VSOCK_BENCH_RUNS", 5);
    let total = mib << 20;
    let only = std::env::var("VSOCK_BENCH_DIR").ok();
    println!("machine: {} CPUs, {}", num_cpus(), cpu_model());
    println!("{runs} runs per path of {mib} MiB each; memcpy measured before every run");
    println!(
        "guest posts {} rx buffers of {} bytes; peer {}",
        rx_layout().0,
        rx_layout().1,
        if peer_splices() {
            "writes with vmsplice + splice"
        } else {
            "copies (write/read)"
        }
    );
    type Path = (&'static str, &'static str, fn(usize) -> Timing);
    let paths: [Path; 4] = [
        ("h2g", "host -> guest, device", host_to_guest),
        ("h2g", "host -> guest, socket only", |t| {
            socket_only(t, false)
        }),
        ("g2h", "guest -> host, device", guest_to_host),
        ("g2h", "guest -> host, socket only", |t| {
            socket_only(t, true)
        }),
    ];
    let mut results: Vec<(&str, Vec<Sample>)> = Vec::new();
    for (dir, name, run) in paths {
        if only.as_deref().is_some_and(|d| d != dir) {
            continue;
        }
        let mut samples = Vec::new();
        for _ in 0..runs {
            let memcpy = memcpy_bandwidth();
            let sample = Sample::new(memcpy, total, run(total));
            println!("  {name}: {}", sample.line());
            samples.push(sample);
        }
        samples.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
        results.push((name, samples));
    }
    println!("medians (by ratio to memcpy):");
    for (name, samples) in &results {
        let (lo, hi) = (&samples[0], &samples[samples.len() - 1]);
        println!(
            "{name}: {}; range {:.1}%..{:.1}%",
            samples[samples.len() / 2].line(),
            100.0 * lo.ratio(),
            100.0 * hi.ratio()
        );
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
