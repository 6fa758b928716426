//! One driver for the fuzz target (`vsock/fuzz`) and the bounded property test: it turns an
//! arbitrary byte string into a sequence of guest and host actions against a fresh device core
//! (well-formed and malformed packets, raw descriptor chains, rx buffers, host clients and
//! listeners) and checks the device's invariants after every step.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use virtio_queue::desc::split::Descriptor;

use crate::host::forward_path;
use crate::mock::{MockDriver, Q};
use crate::proto::{op, Header, HDR_LEN, HOST_CID, TYPE_STREAM};
use crate::{VsockConfig, VsockCore};

const GUEST_CID: u64 = 3;
const QUEUE_SIZE: u16 = 16;
const RX_BUF: u32 = 512;
/// A small cap, so the input can reach it.
const MAX_CONNECTIONS: usize = 8;
const PORTS: [u32; 4] = [1, 2, 1024, 1 << 30];

/// Reads fuzz input bytes; past the end it yields zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

/// A scratch directory for the hybrid socket, removed at the end.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir() -> Dir {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "capsule-vsock-fuzz-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::create_dir_all(&p);
    Dir(p)
}

/// Runs one input. Panics only when a device invariant is broken.
pub fn run(data: &[u8]) {
    let dir = scratch_dir();
    let uds = dir.0.join("v");
    let mut cfg = VsockConfig::new(GUEST_CID, &uds);
    cfg.max_connections = MAX_CONNECTIONS;
    let Ok(mut core) = VsockCore::new(cfg) else {
        return;
    };
    let Ok(mut drv) = MockDriver::new(QUEUE_SIZE, RX_BUF) else {
        return;
    };
    let mut input = Input(data);
    let mut clients: Vec<UnixStream> = Vec::new();
    let mut listeners: Vec<UnixListener> = Vec::new();
    let mut accepted: Vec<UnixStream> = Vec::new();
    let mut steps = 0;
    while !input.done() && steps < 256 {
        steps += 1;
        match input.u8() % 10 {
            0 | 1 => {
                // A packet with fuzzed header fields, in one of three descriptor layouts.
                let sel = input.u8();
                let hdr = Header {
                    src_cid: if sel & 1 == 0 { GUEST_CID } else { input.u64() },
                    dst_cid: if sel & 2 == 0 { HOST_CID } else { input.u64() },
                    src_port: PORTS[usize::from(input.u8() % 4)],
                    dst_port: PORTS[usize::from(input.u8() % 4)],
                    len: 0,
                    type_: if sel & 4 == 0 {
                        TYPE_STREAM
                    } else {
                        input.u16()
                    },
                    op: u16::from(input.u8() % 9),
                    flags: u32::from(input.u8() % 4),
                    buf_alloc: if sel & 8 == 0 { 1 << 16 } else { input.u32() },
                    fwd_cnt: input.u32(),
                };
                // Large packets take the zero-copy path (and make the connection bulk).
                let payload = if sel & 64 != 0 {
                    let n = crate::conn::SPLICE_MIN_LEN + usize::from(input.u16());
                    vec![input.u8(); n]
                } else {
                    let n = usize::from(input.u8()) * 4;
                    input.bytes(n)
                };
                let hdr = Header {
                    len: if sel & 16 == 0 {
                        payload.len() as u32
                    } else {
                        input.u32()
                    },
                    ..hdr
                };
                let _ = drv.send(&hdr, &payload, sel & 32 != 0);
            }
            2 => {
                // A raw chain of up to 4 descriptors with arbitrary fields.
                let count = usize::from(input.u8() % 4) + 1;
                let slots = drv.next_indices(Q::Tx, count);
                if slots.len() < count {
                    continue;
                }
                let base = drv.tx.buf_addr(slots[0]);
                let mut descs = Vec::new();
                for k in 0..count {
                    let sel = input.u8();
                    let addr = match sel % 4 {
                        0 => base,
                        1 => base + u64::from(input.u16()),
                        2 => crate::mock::MEM_SIZE as u64 - u64::from(input.u8()),
                        _ => input.u64(),
                    };
                    let len = match (sel >> 2) % 3 {
                        0 => HDR_LEN as u32 + u32::from(input.u8()),
                        1 => u32::from(input.u16()),
                        _ => input.u32(),
                    };
                    let next = if (sel >> 4) & 1 == 0 {
                        slots.get(k + 1).copied().unwrap_or(0)
                    } else {
                        input.u16()
                    };
                    let flags = if k + 1 < count { 1 } else { 0 } | (u16::from(sel >> 5) & 0x6);
                    descs.push(Descriptor::new(addr, len, flags, next));
                }
                let hb = input.bytes(HDR_LEN);
                let _ = drv.write(base, &hb);
                let _ = drv.push_raw(Q::Tx, &descs);
            }
            3 => {
                let n = usize::from(input.u8() % 8);
                drv.post_rx(n);
            }
            4 => {
                // A malformed rx buffer: read-only, short or outside memory. Those inside
                // memory get a slot of their own, so no two buffers alias.
                let sel = input.u8();
                let (addr, len) = if sel & 1 == 0 {
                    let Some(&i) = drv.next_indices(Q::Rx, 1).first() else {
                        continue;
                    };
                    let len = u32::from(input.u8()) % (RX_BUF + 1);
                    (drv.rx.buf_addr(QUEUE_SIZE + i), len)
                } else {
                    (input.u64(), input.u32())
                };
                let _ = drv.push_chain(Q::Rx, &[(addr, len, sel & 4 != 0)]);
            }
            5 => {
                if clients.len() < 16 {
                    if let Ok(mut c) = UnixStream::connect(&uds) {
                        let _ = c.set_nonblocking(true);
                        let line = match input.u8() % 4 {
                            0 => format!("CONNECT {}\n", PORTS[usize::from(input.u8() % 4)]),
                            1 => format!("connect {}\n", input.u32()),
                            2 => String::from_utf8_lossy(&input.bytes(40)).into_owned(),
                            _ => String::new(),
                        };
                        let _ = c.write_all(line.as_bytes());
                        clients.push(c);
                    }
                }
            }
            6 => {
                let n = usize::from(input.u8()) * 16;
                let bytes = input.bytes(n);
                let i = usize::from(input.u8());
                let (nc, na) = (clients.len().max(1), accepted.len().max(1));
                if let Some(c) = clients.get_mut(i % nc) {
                    let _ = c.write(&bytes);
                }
                if let Some(c) = accepted.get_mut(i % na) {
                    let _ = c.write(&bytes);
                }
            }
            7 => {
                let i = usize::from(input.u8());
                if !clients.is_empty() {
                    let c = clients.remove(i % clients.len());
                    if i & 1 == 1 {
                        let _ = c.shutdown(std::net::Shutdown::Write);
                        clients.push(c);
                    }
                }
            }
            8 => {
                let port = PORTS[usize::from(input.u8() % 4)];
                if let Ok(l) = UnixListener::bind(forward_path(&uds, port)) {
                    let _ = l.set_nonblocking(true);
                    listeners.push(l);
                }
                for l in &listeners {
                    while let Ok((s, _)) = l.accept() {
                        let _ = s.set_nonblocking(true);
                        accepted.push(s);
                    }
                }
            }
            _ => {
                if input.u8() & 1 == 0 {
                    core.reset();
                }
            }
        }
        step(&mut core, &mut drv);
    }
    // The device must still work: a host client reaches the guest with good rx buffers.
    for _ in 0..4 {
        step(&mut core, &mut drv);
    }
    // As after a driver reset: fresh queues, connections gone.
    core.reset_device();
    let Ok(mut drv) = MockDriver::new(QUEUE_SIZE, RX_BUF) else {
        return;
    };
    drv.post_rx(usize::from(QUEUE_SIZE));
    let Ok(mut c) = UnixStream::connect(&uds) else {
        panic!("hybrid socket gone");
    };
    let _ = c.write_all(b"CONNECT 77\n");
    let mut got = Vec::new();
    for _ in 0..8 {
        got.extend(step(&mut core, &mut drv));
    }
    assert!(
        got.iter()
            .any(|(h, _)| h.op == op::REQUEST && h.dst_port == 77 && h.dst_cid == GUEST_CID),
        "device wedged: {:?}",
        core.counters()
    );
}

/// One round of device work, then the invariants; returns the packets the guest received.
fn step(core: &mut VsockCore, drv: &mut MockDriver) -> Vec<(Header, Vec<u8>)> {
    core.process_backend();
    core.process_tx(&drv.mem, &mut drv.txq);
    core.process_rx(&drv.mem, &mut drv.rxq);
    assert!(core.connection_count() <= MAX_CONNECTIONS);
    drv.take_used(Q::Tx);
    let mut pkts = Vec::new();
    for u in drv.take_used(Q::Rx) {
        // A buffer the guest placed over its own rings (or anywhere else) holds whatever was
        // written there last; only buffers in the rx area can be checked.
        if !drv.in_rx_area(u.addr, u64::from(u.len)) {
            continue;
        }
        if let Some(p) = drv.read_packet(&u) {
            pkts.push(p);
        }
    }
    for (h, data) in &pkts {
        assert_eq!(h.src_cid, HOST_CID);
        assert_eq!(h.dst_cid, GUEST_CID);
        assert_eq!(h.type_, TYPE_STREAM);
        assert!((op::REQUEST..=op::CREDIT_REQUEST).contains(&h.op));
        assert!(h.len as usize <= RX_BUF as usize - HDR_LEN);
        assert_eq!(data.len(), h.len as usize);
        if h.op != op::RW {
            assert_eq!(h.len, 0);
        }
    }
    pkts
}
