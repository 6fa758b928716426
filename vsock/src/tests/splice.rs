//! Zero-copy guest → host transfer: large packets are held until the host has read them.

use super::*;

use crate::conn::SPLICE_MIN_LEN;

/// Runs the device once and returns the tx chains it gave back.
fn step(h: &mut Harness) -> usize {
    h.core.process_backend();
    h.core.process_tx(&h.drv.mem, &mut h.drv.txq);
    h.core.process_rx(&h.drv.mem, &mut h.drv.rxq);
    let rx = h.drv.take_rx().len();
    h.drv.post_rx(rx);
    h.drv.take_used(Q::Tx).len()
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn large_packets_are_held_until_the_host_has_read_them() {
    let mut h = Harness::new();
    let (mut client, mut g) = host_connect(&mut h, 30);
    let mut rng = Rng::new(30);
    let first = rng.bytes(64 * 1024);
    h.send_rw(&mut g, &first);
    assert_eq!(step(&mut h), 0, "a spliced packet stays with the host");
    assert_eq!(h.drv.tx.in_flight(), 1);
    // A partly read socket buffer still references the guest's pages.
    let head = read_n(&mut client, 1000);
    assert_eq!(step(&mut h), 0);
    let rest = read_n(&mut client, first.len() - 1000);
    assert_eq!([head, rest].concat(), first);
    assert_eq!(
        step(&mut h),
        1,
        "returned once the host has read everything"
    );
    assert_eq!(h.core.counters().tx_spliced, 1);
    assert_eq!(h.core.counters().bulk_conns, 1);
    assert_eq!(h.drv.tx.in_flight(), 0);
    // The guest reuses the same buffer for new data: the host sees the new data.
    let second = rng.bytes(64 * 1024);
    h.send_rw(&mut g, &second);
    step(&mut h);
    assert_eq!(read_n(&mut client, second.len()), second);
    // Small packets are copied and returned at once.
    h.send_rw(&mut g, &second[..SPLICE_MIN_LEN - 1]);
    assert_eq!(step(&mut h), 2);
    assert_eq!(
        read_n(&mut client, SPLICE_MIN_LEN - 1),
        second[..SPLICE_MIN_LEN - 1]
    );
    assert_eq!(step(&mut h), 0);
    assert_eq!(h.drv.tx.in_flight(), 0);
}

/// A host that never reads holds at most half the tx queue; the other connection keeps moving
/// and everything arrives in order once the host reads.
#[test]
fn held_buffers_never_take_more_than_half_the_queue() {
    let mut h = Harness::with(|_| {}, 16, 4096 + HDR_LEN as u32);
    let (mut slow, mut a) = host_connect(&mut h, 31);
    let (mut fast, mut b) = host_connect(&mut h, 32);
    let mut rng = Rng::new(31);
    let payload = rng.bytes(4 << 20);
    let mut sent = 0;
    for _ in 0..1000 {
        a.absorb(&h.pump(), &mut Vec::new());
        let n = (a.credit() as usize).min(32 * 1024);
        if n < SPLICE_MIN_LEN || h.drv.tx.free_descriptors() < 2 || sent + n > payload.len() {
            break;
        }
        h.send_rw(&mut a, &payload[sent..sent + n]);
        sent += n;
    }
    h.pump();
    assert!(sent > 16 * 32 * 1024, "sent only {sent} bytes");
    assert!(
        h.drv.tx.in_flight() <= 4,
        "{} chains held",
        h.drv.tx.in_flight()
    );
    fast.write_all(b"ping").unwrap();
    let mut got = Vec::new();
    b.absorb(&h.pump(), &mut got);
    assert_eq!(got, b"ping");
    h.send_rw(&mut b, b"pong");
    h.pump();
    assert_eq!(read_n(&mut fast, 4), b"pong");
    let mut got = Vec::new();
    slow.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..10_000 {
        match slow.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        a.absorb(&h.pump(), &mut Vec::new());
        if got.len() == sent {
            break;
        }
    }
    assert!(
        got == payload[..sent],
        "data differs after {} bytes",
        got.len()
    );
    h.pump();
    assert_eq!(h.drv.tx.in_flight(), 0);
}

/// The guest closes while the host has not read its spliced data: the host still gets all of
/// it, then end of file, and the buffer goes back to the guest after that.
#[test]
fn closed_connection_keeps_buffers_until_the_host_has_read() {
    let mut h = Harness::new();
    let (mut client, mut g) = host_connect(&mut h, 33);
    let data = Rng::new(33).bytes(48 * 1024);
    h.send_rw(&mut g, &data);
    h.send(
        Header {
            flags: shutdown::BOTH,
            ..g.hdr(op::SHUTDOWN)
        },
        &[],
    );
    h.pump();
    assert_eq!(h.core.connection_count(), 0);
    assert_eq!(h.drv.tx.in_flight(), 1, "held past the connection's end");
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert!(got == data);
    h.pump();
    assert_eq!(h.drv.tx.in_flight(), 0);
}

/// A host client that hangs up without reading releases the buffers too.
#[test]
fn host_hang_up_releases_held_buffers() {
    let mut h = Harness::new();
    let (client, mut g) = host_connect(&mut h, 34);
    h.send_rw(&mut g, &Rng::new(34).bytes(64 * 1024));
    h.pump();
    assert_eq!(h.drv.tx.in_flight(), 1);
    drop(client);
    h.pump();
    assert_eq!(h.drv.tx.in_flight(), 0);
}

/// A transport reset returns held buffers at the next tx pass; a device reset forgets them
/// (the queues are gone).
#[test]
fn resets_return_or_forget_held_buffers() {
    let mut h = Harness::new();
    let (_client, mut g) = host_connect(&mut h, 35);
    h.send_rw(&mut g, &Rng::new(35).bytes(64 * 1024));
    h.pump();
    assert_eq!(h.drv.tx.in_flight(), 1);
    h.core.reset();
    assert_eq!(step(&mut h), 1);
    assert_eq!(h.drv.tx.in_flight(), 0);

    let (_client, mut g) = host_connect(&mut h, 36);
    h.send_rw(&mut g, &Rng::new(36).bytes(64 * 1024));
    h.pump();
    assert_eq!(h.drv.tx.in_flight(), 1);
    h.core.reset_device();
    assert_eq!(step(&mut h), 0);
}

/// Past 1 MiB a host → guest connection reads through a pipe: data still arrives in order
/// within the guest's credit, and the host's close reaches the guest after the last byte.
#[test]
fn bulk_host_to_guest_data_then_end_of_file() {
    let mut h = Harness::with(|_| {}, 64, 64 * 1024 + HDR_LEN as u32);
    let (client, mut g) = host_connect(&mut h, 37);
    let payload = Rng::new(37).bytes(3 << 20);
    let writer = {
        let mut client = client.try_clone().unwrap();
        let payload = payload.clone();
        std::thread::spawn(move || {
            client.write_all(&payload).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut got = Vec::new();
    let mut ops = Vec::new();
    // The fwd_cnt the guest last told the device: the device may send GUEST_BUF beyond it.
    let mut told = 0u32;
    for _ in 0..100_000 {
        let pkts = h.pump();
        ops.extend(g.absorb(&pkts, &mut got));
        assert!(
            g.fwd_cnt.wrapping_sub(told) <= GUEST_BUF,
            "beyond the guest's credit"
        );
        told = g.fwd_cnt;
        // The guest consumes and tells the device.
        h.send(g.hdr(op::CREDIT_UPDATE), &[]);
        if ops.contains(&op::SHUTDOWN) {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    writer.join().unwrap();
    assert!(
        got == payload,
        "{} of {} bytes, in order",
        got.len(),
        payload.len()
    );
    assert_eq!(
        ops.last(),
        Some(&op::SHUTDOWN),
        "end of file after the data"
    );
    assert_eq!(h.core.counters().rx_bytes, payload.len() as u64);
    assert_eq!(h.core.counters().bulk_conns, 1);
    drop(client.shutdown(Shutdown::Both));
}
