//! Throughput of the vsock device's host path: the device core driven by the mock driver over
//! in-process guest memory, host side a real Unix socket served by a reader/writer thread.
//! Reports bytes/s each way and the device thread's CPU time per MiB, next to this machine's
//! memcpy bandwidth measured in the same run (the physical bound: every byte is copied at least
//! once between guest memory and the socket, and once more by the host peer).
//!
//! Run: `bench/vsock.sh` (or `cargo bench -p capsule-vsock --features test-utils --bench
//! throughput`). `VSOCK_BENCH_MIB` sets the volume per direction (default 1024).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vsock::mock::{MockDriver, Q};
use vsock::proto::{op, Header, HDR_LEN, HOST_CID, TYPE_STREAM};
use vsock::{VsockConfig, VsockCore};

const GUEST_CID: u64 = 3;
const QUEUE: u16 = 256;
const PKT: usize = 64 * 1024;
const GUEST_BUF: u32 = 1 << 20;

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
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

struct Setup {
    core: VsockCore,
    drv: MockDriver,
    host_port: u32,
    _dir: std::path::PathBuf,
}

/// A device with one established host-initiated connection; returns the host client.
fn setup() -> (Setup, UnixStream) {
    let dir = std::env::temp_dir().join(format!("capsule-vsock-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let core = VsockCore::new(VsockConfig::new(GUEST_CID, &uds)).unwrap();
    let mut drv = MockDriver::new(QUEUE, (PKT + HDR_LEN) as u32).unwrap();
    drv.post_rx(usize::from(QUEUE));
    let mut s = Setup {
        core,
        drv,
        host_port: 0,
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
    s.host_port = req.unwrap().0.src_port;
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

/// Host → guest: a thread writes `total` bytes into the client socket; the device thread moves
/// them into rx buffers, the mock guest consumes them and returns credit.
fn host_to_guest(total: usize) -> (f64, f64) {
    let (mut s, client) = setup();
    let writer = std::thread::spawn(move || {
        let mut client = client;
        let buf = vec![0xa5u8; 1 << 20];
        let mut left = total;
        while left > 0 {
            let n = left.min(buf.len());
            client.write_all(&buf[..n]).unwrap();
            left -= n;
        }
        client
    });
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
    drop(writer.join().unwrap());
    (total as f64 / secs, cpu)
}

/// Guest → host: the mock guest sends 64 KiB packets within its credit; a thread reads the
/// client socket.
fn guest_to_host(total: usize) -> (f64, f64) {
    let (mut s, client) = setup();
    let reader = std::thread::spawn(move || {
        let mut client = client;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = total;
        while left > 0 {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed early");
            left -= n;
        }
    });
    let payload = vec![0x3cu8; PKT];
    let (mut peer_buf, mut peer_fwd) = (64 * 1024u32, 0u32);
    let mut sent = 0usize;
    let mut tx_cnt: u32 = 0;
    let (t0, c0) = (Instant::now(), thread_cpu());
    while sent < total {
        let credit = peer_buf.saturating_sub(tx_cnt.wrapping_sub(peer_fwd)) as usize;
        let n = credit.min(PKT).min(total - sent);
        if n == 0 {
            // Out of credit until the host reads: wait for the socket like the VMM would.
            wait_backend(&s.core);
        }
        if n > 0 && s.drv.tx.free_descriptors() >= 2 {
            let h = Header {
                len: n as u32,
                ..hdr(op::RW, s.host_port, 0)
            };
            s.drv.send(&h, &payload[..n], false).unwrap();
            sent += n;
            tx_cnt = tx_cnt.wrapping_add(n as u32);
        }
        s.core.process_tx(&s.drv.mem, &mut s.drv.txq);
        s.drv.take_used(Q::Tx);
        s.core.process_backend();
        s.core.process_rx(&s.drv.mem, &mut s.drv.rxq);
        let pkts = s.drv.take_rx();
        s.drv.post_rx(pkts.len());
        for (h, _) in pkts {
            peer_buf = h.buf_alloc;
            peer_fwd = h.fwd_cnt;
        }
    }
    // Until the host has taken everything.
    while !reader.is_finished() {
        if s.core.process_backend() == 0 {
            wait_backend(&s.core);
        }
        s.core.process_rx(&s.drv.mem, &mut s.drv.rxq);
        let n = s.drv.take_rx().len();
        s.drv.post_rx(n);
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), thread_cpu() - c0);
    reader.join().unwrap();
    (total as f64 / secs, cpu)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // nothing for the libtest lister
    }
    let mib: usize = std::env::var("VSOCK_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let total = mib << 20;
    let memcpy = memcpy_bandwidth();
    let gib = |b: f64| b / (1u64 << 30) as f64;
    println!("machine: {} CPUs, {}", num_cpus(), cpu_model());
    println!("memcpy (64 MiB buffers):  {:.2} GiB/s", gib(memcpy));
    for (name, (bps, cpu)) in [
        ("host -> guest", host_to_guest(total)),
        ("guest -> host", guest_to_host(total)),
    ] {
        println!(
            "{name}: {:.2} GiB/s over {mib} MiB, {:.1}% of memcpy, device thread {:.1} us CPU/MiB",
            gib(bps),
            100.0 * bps / memcpy,
            cpu * 1e6 / mib as f64
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
