//! The device core shared by the in-VMM device and the vhost-user backend: it turns tx-queue
//! packets into host socket I/O and host socket events into rx-queue packets, for every
//! connection of one guest, behind a single pollable file descriptor.
//!
//! Everything here runs on one thread and never blocks: host sockets are non-blocking and
//! registered edge-triggered in the core's own epoll set; the owner polls [`VsockCore::as_raw_fd`]
//! and calls [`VsockCore::process_backend`] when it is readable, [`VsockCore::process_tx`] when
//! the guest kicks the tx queue *and* after `process_backend` (tx buffers whose data was spliced
//! to the host go back to the guest once the host has read it, see [`crate::conn`]), and
//! [`VsockCore::process_rx`] whenever rx buffers or rx work may have appeared.
//!
//! Hybrid host side (Firecracker-compatible): a host client connects to the Unix socket at
//! `uds_path` and writes `CONNECT <port>\n`; the core asks the guest to connect (REQUEST) and
//! answers `OK <host_port>\n` once the guest accepts, or closes the client when the guest resets.
//! A guest connection to (CID 2, port P) is forwarded to a host listener at `<uds_path>_<P>`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, ErrorKind, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use crate::conn::{self, Conn, ConnError, RxOut, State, Verdict};
use crate::host::{connect_nonblocking, forward_path, parse_connect_line, MAX_CONNECT_LINE};
use crate::proto::{op, Header, EVENT_TRANSPORT_RESET, HDR_LEN, HOST_CID, MAX_PKT_DATA};
use crate::proto::{MIN_GUEST_CID, TYPE_STREAM};

/// Default cap on connections (established, connecting and host clients still handshaking).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1023;
/// Default of [`VsockConfig::conn_timeout`].
pub const CONN_TIMEOUT: Duration = Duration::from_secs(2);
/// Host ports of host-initiated connections come from [2^30, 2^31).
pub const LOCAL_PORT_FIRST: u32 = 1 << 30;
pub const LOCAL_PORT_END: u32 = 1 << 31;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_TIMER: u64 = 1;
const FIRST_CONN_TOKEN: u64 = 2;
const EVENTS_PER_POLL: usize = 64;
/// Rx buffers one read may fill for a bulk connection.
const RX_BATCH: usize = 64;
/// Connections whose host socket may get a large send buffer (kernel memory when the data is
/// copied rather than spliced): 32 × 2 MiB at most.
const MAX_BULK_CONNS: usize = 32;
/// Host → guest bytes after which a connection counts as bulk.
const BULK_RX_AFTER: u64 = 1 << 20;
const ACCEPTS_PER_EVENT: usize = 64;

/// Configuration of one guest's vsock device.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context id (≥ 3).
    pub guest_cid: u64,
    /// The hybrid Unix socket host clients connect to.
    pub uds_path: PathBuf,
    /// Cap on simultaneous connections.
    pub max_connections: usize,
    /// How long a host-initiated connection waits for the guest's answer, and how long a closed
    /// connection may take to deliver its buffered data.
    pub conn_timeout: Duration,
}

impl VsockConfig {
    /// A configuration with the default limits.
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> Self {
        Self {
            guest_cid,
            uds_path: uds_path.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            conn_timeout: CONN_TIMEOUT,
        }
    }
}

/// Errors while creating the core.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// CIDs 0, 1 and 2 are reserved.
    #[error("guest CID {0} is reserved (must be at least 3)")]
    BadCid(u64),
    /// The connection cap must allow at least one connection.
    #[error("max_connections must be at least 1")]
    NoConnections,
    /// The hybrid socket could not be created.
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The epoll set or the timer could not be created.
    #[error("cannot create the event set")]
    Epoll(#[source] io::Error),
}

/// Counters of everything the core did, and of every reason it dropped or reset something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets taken from the tx queue / placed into the rx queue.
    pub tx_packets: u64,
    pub rx_packets: u64,
    /// Payload bytes guest → host and host → guest.
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub host_conns_accepted: u64,
    /// Tx packets whose data was spliced, not copied (their buffers were held).
    pub tx_spliced: u64,
    /// Connections that got the bulk treatment (large send buffer, host data through a pipe).
    pub bulk_conns: u64,
    pub guest_conns_forwarded: u64,
    /// Connections that ended normally (both sides shut down).
    pub conns_finished: u64,
    /// Tx chains that did not parse (bad descriptors, header-only or short buffers, addresses
    /// outside guest memory, `len` beyond the buffer or beyond 64 KiB); dropped.
    pub tx_bad_chain: u64,
    /// Rx chains that cannot hold a packet; returned unused.
    pub rx_bad_chain: u64,
    /// Packets whose source CID is not the guest's; dropped.
    pub bad_src_cid: u64,
    /// Packets not addressed to the host (CID 2); dropped.
    pub bad_dst_cid: u64,
    /// Packets of a type other than stream; answered with RST.
    pub bad_type: u64,
    /// Unknown op; connection reset.
    pub unknown_op: u64,
    /// Packet for no known connection; answered with RST.
    pub unknown_conn: u64,
    /// Op not valid in the connection's state; connection reset.
    pub bad_state: u64,
    /// Guest wrote beyond its credit; connection reset.
    pub credit_overrun: u64,
    /// Guest connected to a host port nobody listens on; RST.
    pub no_listener: u64,
    /// Connection refused because of the connection cap (guest side: RST; host side: closed).
    pub conn_limit: u64,
    /// Host socket errors; connection reset.
    pub host_io_error: u64,
    /// Host clients whose handshake line was malformed or that hung up before it; closed.
    pub bad_handshake: u64,
    /// Host-initiated connections the guest refused (RST to our REQUEST); client closed.
    pub guest_refused: u64,
    /// Host-initiated connections the guest did not answer in time; reset.
    pub connect_timeout: u64,
    /// Closed connections whose buffered data the host did not take in time; reset.
    pub close_timeout: u64,
    /// Control packets (RST replies) dropped because the reply queue was full.
    pub ctl_dropped: u64,
    /// Connections reset by a transport or device reset.
    pub reset_by_device: u64,
}

type ConnKey = (u32, u32);

struct Entry {
    conn: Conn,
    token: u64,
    deadline: Option<(Instant, u64)>,
    held: HeldChains,
}

/// Tx descriptor chains whose guest pages the host socket still references, oldest first: the
/// head index and the stream offset the chain's data ends at.
type HeldChains = VecDeque<(u64, u16)>;

/// The host socket of a removed connection whose peer has not read all spliced data yet; its
/// chains are returned once it has (or it hung up).
struct Draining {
    stream: UnixStream,
    sent: u64,
    held: HeldChains,
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The device core for one guest.
pub struct VsockCore {
    cfg: VsockConfig,
    epoll: Epoll,
    listener: UnixListener,
    timer: TimerFd,
    conns: HashMap<ConnKey, Entry>,
    tokens: HashMap<u64, ConnKey>,
    handshakes: HashMap<u64, Handshake>,
    next_token: u64,
    next_local_port: u32,
    /// Connections that have something for the guest, served round robin.
    rxq: VecDeque<ConnKey>,
    /// Connection-less replies (RST) for the guest; bounded.
    ctl: VecDeque<Header>,
    deadlines: BTreeMap<(Instant, u64), ConnKey>,
    deadline_seq: u64,
    counters: Counters,
    /// Held chains of all connections and draining sockets.
    held_count: usize,
    /// Connections with a large host send buffer.
    bulk_conns: usize,
    /// Sockets of removed connections, by epoll token.
    draining: HashMap<u64, Draining>,
    /// Held chains to return without waiting (their connections were reset by a transport
    /// reset; the queue itself lives on).
    release_now: Vec<u16>,
}

impl AsRawFd for VsockCore {
    /// The epoll set of the core: readable when [`VsockCore::process_backend`] has work.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

impl VsockCore {
    /// Creates the core and listens on `cfg.uds_path` (which must not exist).
    pub fn new(cfg: VsockConfig) -> Result<Self, MuxerError> {
        if cfg.guest_cid < MIN_GUEST_CID || cfg.guest_cid > u64::from(u32::MAX) {
            return Err(MuxerError::BadCid(cfg.guest_cid));
        }
        if cfg.max_connections == 0 {
            return Err(MuxerError::NoConnections);
        }
        let bind_err = |source| MuxerError::Bind {
            path: cfg.uds_path.clone(),
            source,
        };
        let listener = UnixListener::bind(&cfg.uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let timer = TimerFd::new().map_err(|e| MuxerError::Epoll(e.into()))?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
            )
            .map_err(MuxerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                timer.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_TIMER),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(Self {
            cfg,
            epoll,
            listener,
            timer,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            handshakes: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            next_local_port: LOCAL_PORT_FIRST,
            rxq: VecDeque::new(),
            ctl: VecDeque::new(),
            deadlines: BTreeMap::new(),
            deadline_seq: 0,
            counters: Counters::default(),
            held_count: 0,
            bulk_conns: 0,
            draining: HashMap::new(),
            release_now: Vec::new(),
        })
    }

    pub fn config(&self) -> &VsockConfig {
        &self.cfg
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Established and connecting connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether [`VsockCore::process_rx`] has packets to deliver.
    pub fn has_rx_work(&self) -> bool {
        !self.ctl.is_empty() || !self.rxq.is_empty()
    }

    /// Closes every connection (the host clients see their sockets close) and forgets queued
    /// packets; the listener stays. Used on a transport reset, where the queues live on: tx
    /// chains still held for the host go back to the guest at the next
    /// [`VsockCore::process_tx`] without waiting for the host to read their data.
    pub fn reset(&mut self) {
        self.counters.reset_by_device += self.conns.len() as u64;
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(entry) = self.conns.get_mut(&key) {
                let held = std::mem::take(&mut entry.held);
                self.release_without_waiting(held);
            }
            self.remove(key);
        }
        for (_, d) in std::mem::take(&mut self.draining) {
            self.stop_watching(&d.stream);
            self.release_without_waiting(d.held);
        }
        for (_, hs) in self.handshakes.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                hs.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.rxq.clear();
        self.ctl.clear();
    }

    /// [`VsockCore::reset`] for a device reset: the queues are gone, so held chains are
    /// forgotten instead of returned.
    pub fn reset_device(&mut self) {
        self.reset();
        self.release_now.clear();
        self.held_count = 0;
    }

    fn stop_watching(&self, stream: &UnixStream) {
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            stream.as_raw_fd(),
            EpollEvent::default(),
        );
    }

    // ---- host side ----

    /// Handles every ready host event: new clients, handshake lines, socket readiness, timers.
    /// Returns the number of events handled.
    pub fn process_backend(&mut self) -> usize {
        let mut events = [EpollEvent::default(); EVENTS_PER_POLL];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => return 0,
            Err(e) => {
                warn!("vsock: epoll_wait failed: {e}");
                return 0;
            }
        };
        for ev in &events[..n] {
            let set = ev.event_set();
            match ev.data() {
                TOKEN_LISTENER => self.accept_clients(),
                TOKEN_TIMER => self.expire_deadlines(),
                token => {
                    // A draining socket's peer read or hung up: `process_tx` looks at it.
                    if self.handshakes.contains_key(&token) {
                        self.read_handshake(token);
                    } else if let Some(&key) = self.tokens.get(&token) {
                        self.host_event(key, set);
                    }
                }
            }
        }
        n
    }

    fn total_connections(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    fn alloc_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn accept_clients(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("vsock: accept failed: {e}");
                    return;
                }
            };
            if self.total_connections() >= self.cfg.max_connections {
                self.counters.conn_limit += 1;
                continue; // dropping the stream closes it
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.alloc_token();
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            ) {
                warn!("vsock: cannot watch a host client: {e}");
                continue;
            }
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    line: Vec::new(),
                },
            );
        }
    }

    /// Reads a client's `CONNECT <port>\n` byte by byte, so that no payload after the newline
    /// is consumed here.
    fn read_handshake(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let port = loop {
            let mut byte = [0u8; 1];
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break parse_connect_line(&hs.line).map_err(|_| ()),
                Ok(_) if hs.line.len() + 1 >= MAX_CONNECT_LINE => break Err(()),
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break Err(()),
            }
        };
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            hs.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        let Ok(peer_port) = port else {
            self.counters.bad_handshake += 1;
            return;
        };
        let Some(local_port) = self.alloc_local_port(peer_port) else {
            self.counters.conn_limit += 1;
            return;
        };
        let conn = Conn::new_local(hs.stream, local_port, peer_port);
        if self.insert(conn).is_some() {
            self.counters.host_conns_accepted += 1;
        }
    }

    /// The next free host port in [2^30, 2^31) for a connection to the guest's `peer_port`.
    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=self.conns.len() {
            let port = self.next_local_port;
            self.next_local_port = if port + 1 >= LOCAL_PORT_END {
                LOCAL_PORT_FIRST
            } else {
                port + 1
            };
            if !self.conns.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
        None
    }

    /// Adds a connection, watches its socket and queues its first packet.
    fn insert(&mut self, conn: Conn) -> Option<ConnKey> {
        let key = (conn.local_port, conn.peer_port);
        let token = self.alloc_token();
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            conn.stream.as_raw_fd(),
            EpollEvent::new(events, token),
        ) {
            warn!("vsock: cannot watch a connection: {e}");
            return None;
        }
        self.tokens.insert(token, key);
        self.conns.insert(
            key,
            Entry {
                conn,
                token,
                deadline: None,
                held: HeldChains::new(),
            },
        );
        self.after_change(key);
        Some(key)
    }

    fn remove(&mut self, key: ConnKey) -> Option<Conn> {
        let entry = self.conns.remove(&key)?;
        self.tokens.remove(&entry.token);
        if let Some(d) = entry.deadline {
            self.deadlines.remove(&d);
        }
        self.stop_watching(&entry.conn.stream);
        if entry.conn.is_bulk() {
            self.bulk_conns -= 1;
        }
        if !entry.held.is_empty() {
            self.drain_later(&entry.conn, entry.held);
        }
        Some(entry.conn)
    }

    /// Keeps a removed connection's socket open, shut down both ways as a close would, until
    /// its peer has read the spliced data of `held` (or hung up).
    fn drain_later(&mut self, conn: &Conn, mut held: HeldChains) {
        let sent = conn.sent_total();
        // Bytes still in the pipe die with it; the socket holds only what was sent.
        for chain in &mut held {
            chain.0 = chain.0.min(sent);
        }
        let token = self.alloc_token();
        let watched = conn.stream.try_clone().and_then(|stream| {
            let _ = stream.shutdown(Shutdown::Both);
            let events = EventSet::OUT | EventSet::HANG_UP | EventSet::EDGE_TRIGGERED;
            self.epoll
                .ctl(
                    ControlOperation::Add,
                    stream.as_raw_fd(),
                    EpollEvent::new(events, token),
                )
                .map(|()| stream)
        });
        match watched {
            Ok(stream) => {
                self.draining.insert(token, Draining { stream, sent, held });
            }
            Err(e) => {
                warn!(
                    "vsock: cannot keep a closed connection's socket, returning its buffers: {e}"
                );
                self.release_without_waiting(held);
            }
        }
    }

    /// Queues `held` to go back to the guest at the next tx pass, read by the host or not.
    fn release_without_waiting(&mut self, held: HeldChains) {
        self.release_now
            .extend(held.into_iter().map(|(_, head)| head));
    }

    /// Returns to the guest every held tx chain whose data the host has read.
    fn return_consumed<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue) -> bool {
        let mut done = std::mem::take(&mut self.release_now);
        if self.held_count > done.len() {
            for entry in self.conns.values_mut().filter(|e| !e.held.is_empty()) {
                let consumed = entry.conn.consumed();
                pop_consumed(&mut entry.held, consumed, &mut done);
            }
            let mut finished = Vec::new();
            for (&token, d) in &mut self.draining {
                let consumed = conn::consumed(&d.stream, d.sent);
                pop_consumed(&mut d.held, consumed, &mut done);
                if d.held.is_empty() {
                    finished.push(token);
                }
            }
            for token in finished {
                if let Some(d) = self.draining.remove(&token) {
                    self.stop_watching(&d.stream);
                }
            }
        }
        self.held_count = self.held_count.saturating_sub(done.len());
        let mut used = false;
        for head in done {
            if let Err(e) = queue.add_used(mem, head, 0) {
                warn!("vsock: cannot return tx buffer {head}: {e}");
                break;
            }
            used = true;
        }
        used
    }

    fn host_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        let conn = &mut entry.conn;
        if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            conn.on_host_readable();
        }
        let verdict = if set.contains(EventSet::ERROR) {
            conn.on_host_error()
        } else if set.contains(EventSet::OUT) {
            conn.on_host_writable()
        } else {
            Verdict::Keep
        };
        self.apply(key, verdict);
    }

    /// Acts on a connection's verdict, then keeps its rx-queue membership and deadline current.
    fn apply(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Keep => self.after_change(key),
            Verdict::Reset(reason) => {
                match reason {
                    ConnError::CreditOverrun => self.counters.credit_overrun += 1,
                    ConnError::BadState => self.counters.bad_state += 1,
                    ConnError::UnknownOp => self.counters.unknown_op += 1,
                    ConnError::HostIo => self.counters.host_io_error += 1,
                }
                debug!("vsock: resetting connection {key:?}: {reason}");
                self.remove(key);
                self.queue_rst(key.0, key.1);
            }
            Verdict::Finish => {
                self.counters.conns_finished += 1;
                self.remove(key);
                self.queue_rst(key.0, key.1);
            }
            Verdict::Drop => {
                if let Some(conn) = self.remove(key) {
                    if conn.state == State::LocalInit {
                        self.counters.guest_refused += 1;
                    }
                }
            }
        }
    }

    fn after_change(&mut self, key: ConnKey) {
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        if !entry.conn.in_rxq && entry.conn.has_rx_work() {
            entry.conn.in_rxq = true;
            self.rxq.push_back(key);
        }
        let wants_deadline = entry.conn.state == State::LocalInit || entry.conn.closing();
        match (wants_deadline, entry.deadline) {
            (true, None) => {
                let d = (Instant::now() + self.cfg.conn_timeout, self.deadline_seq);
                self.deadline_seq += 1;
                entry.deadline = Some(d);
                self.deadlines.insert(d, key);
                self.arm_timer();
            }
            (false, Some(d)) => {
                entry.deadline = None;
                self.deadlines.remove(&d);
            }
            _ => {}
        }
    }

    fn arm_timer(&mut self) {
        let result = match self.deadlines.keys().next() {
            Some((when, _)) => {
                let dur = when.saturating_duration_since(Instant::now());
                // A zero duration would disarm the timer.
                self.timer
                    .reset(dur.max(Duration::from_micros(1)), None)
                    .map_err(io::Error::from)
            }
            None => self.timer.clear().map_err(io::Error::from),
        };
        if let Err(e) = result {
            warn!("vsock: cannot arm the connection timer: {e}");
        }
    }

    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some((&(when, seq), &key)) = self.deadlines.iter().next() {
            if when > now {
                break;
            }
            self.deadlines.remove(&(when, seq));
            let Some(entry) = self.conns.get_mut(&key) else {
                continue;
            };
            entry.deadline = None;
            if entry.conn.state == State::LocalInit {
                self.counters.connect_timeout += 1;
            } else {
                self.counters.close_timeout += 1;
            }
            self.remove(key);
            self.queue_rst(key.0, key.1);
        }
        // Re-arming also clears the timer's expiration count, so it is never read.
        self.arm_timer();
    }

    fn queue_rst(&mut self, local_port: u32, peer_port: u32) {
        // Bounded by the connection cap plus slack for replies to unknown connections.
        if self.ctl.len() >= self.cfg.max_connections + 64 {
            self.counters.ctl_dropped += 1;
            return;
        }
        let rst = self.to_guest((local_port, peer_port), op::RST, 0, 0, (0, 0));
        self.ctl.push_back(rst);
    }

    /// The header of a packet from connection `key`'s host side to the guest.
    fn to_guest(
        &self,
        key: ConnKey,
        op: u16,
        flags: u32,
        len: u32,
        (buf_alloc, fwd_cnt): (u32, u32),
    ) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cfg.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    // ---- guest side ----

    /// Returns held tx chains whose data the host has read, then handles every packet the guest
    /// placed on the tx queue; returns whether any descriptor chain was used (the caller then
    /// signals the guest).
    pub fn process_tx<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue) -> bool {
        let mut used = self.return_consumed(mem, queue);
        // At most half the queue's descriptors wait for host readers (a packet has one or two),
        // so other connections always have buffers to send with.
        let hold_cap = usize::from(queue.size()) / 4;
        while let Some(mut chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let may_hold = self.held_count < hold_cap;
            let held = match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => self.guest_packet(&pkt, head, may_hold),
                Err(e) => {
                    debug!("vsock: bad tx chain: {e}");
                    self.counters.tx_bad_chain += 1;
                    false
                }
            };
            if held {
                continue;
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                warn!("vsock: cannot return tx buffer {head}: {e}");
                break;
            }
            used = true;
        }
        used
    }

    /// Handles one tx packet; returns whether its chain `head` is held until the host has read
    /// the data (see [`crate::conn`]), which only happens when `may_hold`.
    fn guest_packet<B: BitmapSlice>(
        &mut self,
        pkt: &VsockPacket<'_, B>,
        head: u16,
        may_hold: bool,
    ) -> bool {
        self.counters.tx_packets += 1;
        if pkt.src_cid() != self.cfg.guest_cid {
            self.counters.bad_src_cid += 1;
            return false;
        }
        if pkt.dst_cid() != HOST_CID {
            self.counters.bad_dst_cid += 1;
            return false;
        }
        let key = (pkt.dst_port(), pkt.src_port());
        if pkt.type_() != TYPE_STREAM {
            self.counters.bad_type += 1;
            if pkt.op() != op::RST {
                self.queue_rst(key.0, key.1);
            }
            return false;
        }
        if let Some(entry) = self.conns.get_mut(&key) {
            // Splicing makes a connection bulk (pipes, a large send buffer): only so many.
            let may_hold = may_hold && (entry.conn.is_bulk() || self.bulk_conns < MAX_BULK_CONNS);
            let data = if pkt.op() == op::RW && !pkt.is_empty() {
                pkt.data_slice()
            } else {
                None
            };
            if let Some(d) = data {
                self.counters.tx_bytes += d.len() as u64;
            }
            let verdict = entry.conn.on_guest_packet(
                pkt.op(),
                pkt.flags(),
                pkt.buf_alloc(),
                pkt.fwd_cnt(),
                data,
                may_hold,
            );
            let held = entry.conn.take_held();
            if let Some(end) = held {
                entry.held.push_back((end, head));
                self.held_count += 1;
                self.counters.tx_spliced += 1;
                make_bulk(&mut entry.conn, &mut self.bulk_conns, &mut self.counters);
            }
            self.apply(key, verdict);
            return held.is_some();
        }
        match pkt.op() {
            op::REQUEST => self.guest_connect(pkt),
            op::RST => {}
            op::RESPONSE..=op::CREDIT_REQUEST => {
                self.counters.unknown_conn += 1;
                self.queue_rst(key.0, key.1);
            }
            _ => {
                self.counters.unknown_op += 1;
                self.queue_rst(key.0, key.1);
            }
        }
        false
    }

    /// A guest REQUEST to (CID 2, port P): connect to `<uds>_<P>`, answer RESPONSE or RST.
    fn guest_connect<B: BitmapSlice>(&mut self, pkt: &VsockPacket<'_, B>) {
        let (local_port, peer_port) = (pkt.dst_port(), pkt.src_port());
        if self.total_connections() >= self.cfg.max_connections {
            self.counters.conn_limit += 1;
            self.queue_rst(local_port, peer_port);
            return;
        }
        let path = forward_path(&self.cfg.uds_path, local_port);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let conn = Conn::new_peer(
                    stream,
                    local_port,
                    peer_port,
                    pkt.buf_alloc(),
                    pkt.fwd_cnt(),
                );
                if self.insert(conn).is_some() {
                    self.counters.guest_conns_forwarded += 1;
                } else {
                    self.queue_rst(local_port, peer_port);
                }
            }
            Err(e) => {
                debug!("vsock: guest connection to {}: {e}", path.display());
                self.counters.no_listener += 1;
                self.queue_rst(local_port, peer_port);
            }
        }
    }

    /// Fills rx buffers with pending packets while there are both; returns whether any
    /// descriptor chain was used.
    pub fn process_rx<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue) -> bool {
        let mut used = false;
        while self.has_rx_work() {
            if self.ctl.is_empty() {
                if let Some(batch_used) = self.rx_batch(mem, queue) {
                    used |= batch_used;
                    continue;
                }
            }
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => match self.fill_rx(&mut pkt) {
                    Some(len) => len,
                    None => {
                        // Nothing to send after all: leave the buffer to the guest.
                        queue.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    debug!("vsock: bad rx chain: {e}");
                    self.counters.rx_bad_chain += 1;
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                warn!("vsock: cannot return rx buffer {head}: {e}");
                break;
            }
            used = true;
        }
        used
    }

    /// When the next connection in line is a bulk connection with data for the guest: fills as
    /// many rx buffers as that data needs (up to [`RX_BATCH`]) with one read. Returns whether
    /// buffers were used, or `None` when batching does not apply (then nothing was taken).
    fn rx_batch<M: GuestMemory>(&mut self, mem: &M, queue: &mut Queue) -> Option<bool> {
        let &key = self.rxq.front()?;
        let ready = self.conns.get_mut(&key)?.conn.batch_ready()?;
        let mut used = false;
        let mut pkts = Vec::with_capacity(RX_BATCH);
        let mut room = 0;
        while pkts.len() < RX_BATCH && room < ready {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) if pkt.data_slice().is_some_and(|d| !d.is_empty()) => {
                    room += pkt.data_slice().map_or(0, |d| d.len());
                    pkts.push((head, pkt));
                }
                bad => {
                    if let Err(e) = bad {
                        debug!("vsock: bad rx chain: {e}");
                    }
                    self.counters.rx_bad_chain += 1;
                    used |= queue.add_used(mem, head, 0).is_ok();
                }
            }
        }
        if pkts.is_empty() {
            return used.then_some(true);
        }
        // Each buffer takes what fits, in order, up to the bytes ready.
        let mut lens = Vec::with_capacity(pkts.len());
        let mut slices = Vec::with_capacity(pkts.len());
        let mut left = ready.min(room);
        for (_, pkt) in &pkts {
            let Some(slice) = pkt.data_slice() else {
                break;
            };
            let take = slice.len().min(left);
            let Ok(part) = slice.subslice(0, take) else {
                break;
            };
            slices.push(part);
            lens.push(take);
            left -= take;
        }
        self.rxq.pop_front();
        let entry = self.conns.get_mut(&key)?;
        entry.conn.in_rxq = false;
        let mut got = match entry.conn.read_batch(&slices) {
            Ok(n) => n,
            Err(_) => {
                self.counters.host_io_error += 1;
                self.remove(key);
                self.queue_rst(key.0, key.1);
                0
            }
        };
        let credit = self
            .conns
            .get(&key)
            .map_or((0, 0), |e| e.conn.credit_fields());
        for (i, (head, mut pkt)) in pkts.into_iter().enumerate() {
            let len = lens.get(i).copied().unwrap_or(0).min(got);
            got -= len;
            let used_len = if len == 0 {
                0 // the read fell short (never expected): an empty buffer back
            } else {
                let hdr = self.to_guest(key, op::RW, 0, len as u32, credit);
                self.counters.rx_bytes += len as u64;
                self.emit(&mut pkt, hdr).unwrap_or(0)
            };
            if let Err(e) = queue.add_used(mem, head, used_len) {
                warn!("vsock: cannot return rx buffer {head}: {e}");
                break;
            }
            used = true;
        }
        self.after_change(key);
        Some(used)
    }

    /// Writes the next pending packet into `pkt`; returns the bytes used (header + payload).
    fn fill_rx<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Option<u32> {
        if let Some(hdr) = self.ctl.pop_front() {
            return self.emit(pkt, hdr);
        }
        for _ in 0..self.rxq.len() {
            let Some(key) = self.rxq.pop_front() else {
                break;
            };
            let Some(entry) = self.conns.get_mut(&key) else {
                continue;
            };
            entry.conn.in_rxq = false;
            match entry.conn.next_rx(pkt.data_slice()) {
                RxOut::Packet { op, flags, len } => {
                    let credit = entry.conn.credit_fields();
                    self.counters.rx_bytes += u64::from(len);
                    if entry.conn.received_total() >= BULK_RX_AFTER
                        && self.bulk_conns < MAX_BULK_CONNS
                    {
                        make_bulk(&mut entry.conn, &mut self.bulk_conns, &mut self.counters);
                    }
                    let hdr = self.to_guest(key, op, flags, len, credit);
                    self.after_change(key);
                    return self.emit(pkt, hdr);
                }
                RxOut::Nothing => self.after_change(key),
                RxOut::End(verdict) => {
                    self.apply(key, verdict);
                    if let Some(hdr) = self.ctl.pop_front() {
                        return self.emit(pkt, hdr);
                    }
                }
            }
        }
        None
    }

    fn emit<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>, hdr: Header) -> Option<u32> {
        if pkt.set_header_from_raw(&hdr.to_bytes()).is_err() {
            self.counters.rx_bad_chain += 1;
            return Some(0);
        }
        self.counters.rx_packets += 1;
        Some(HDR_LEN as u32 + hdr.len)
    }
}

/// Makes `conn` a bulk connection unless it is one already, counting it (the caller checked
/// [`MAX_BULK_CONNS`]).
fn make_bulk(conn: &mut Conn, bulk_conns: &mut usize, counters: &mut Counters) {
    if !conn.is_bulk() {
        conn.make_bulk();
        *bulk_conns += 1;
        counters.bulk_conns += 1;
    }
}

/// Moves the chains of `held` whose data ends within `consumed` bytes into `done`; all of
/// them when the socket cannot tell (it is broken, so nobody reads the data any more).
fn pop_consumed(held: &mut HeldChains, consumed: io::Result<u64>, done: &mut Vec<u16>) {
    let upto = consumed.unwrap_or(u64::MAX);
    while let Some(&(end, head)) = held.front() {
        if end > upto {
            break;
        }
        held.pop_front();
        done.push(head);
    }
}

/// Puts a TRANSPORT_RESET event into the event queue's next buffer; returns whether a buffer
/// was used. The guest then drops all its connections and re-reads the guest CID.
pub fn write_transport_reset<M: GuestMemory>(mem: &M, queue: &mut Queue) -> bool {
    let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
        return false;
    };
    let head = chain.head_index();
    let mut len = 0;
    if let Some(desc) = chain.next() {
        if desc.is_write_only()
            && desc.len() >= 4
            && mem
                .write_obj(EVENT_TRANSPORT_RESET.to_le(), GuestAddress(desc.addr().0))
                .is_ok()
        {
            len = 4;
        }
    }
    queue.add_used(mem, head, len).is_ok()
}
