//! One stream connection between a guest port and a host Unix socket: the state machine of
//! virtio 1.2 section 5.10.6.6 and credit-based flow control in both directions.
//!
//! Guest → host data is written straight from guest memory to the host socket; what the socket
//! does not take is kept in a buffer that the credit we advertise bounds (`buf_alloc`). Large
//! packets go without a copy: their guest pages are spliced into the socket through a pipe
//! ([`crate::splice`]) and the packet is *held*, i.e. its descriptor chain goes back to the guest
//! only once the host has read the bytes ([`Conn::take_held`], [`Conn::consumed`]). Host → guest
//! data is read straight from the host socket into the guest's rx buffer, never more than the
//! guest's credit allows; a bulk connection ([`Conn::make_bulk`]) first splices it into a pipe,
//! which frees the host writer's socket buffer at once.
//!
//! Held buffers go back to the guest without waiting on a transport reset; after a reset the
//! host may read whatever the rebooted guest later writes into them. That is the price of not
//! copying, and only concerns data the guest sent before the reset.

use std::io::ErrorKind;
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileSlice};

use crate::host::{send_bytes, send_volatile};
use crate::proto::{op, shutdown, MAX_PKT_DATA};
use crate::splice::{grow_send_buffer, unread_bytes, SplicePipe};

/// Bytes of guest → host data a connection may hold, and the `buf_alloc` it advertises.
pub const CONN_TX_BUF_SIZE: u32 = 256 * 1024;
/// Packets at least this large are spliced instead of copied; below it a copy is cheaper than
/// the extra system calls and holding the guest's buffer.
pub const SPLICE_MIN_LEN: usize = 16 * 1024;
/// Send buffer asked for on a bulk connection's host socket (the system doubles it): room for
/// spliced data in flight, so that the guest and the host reader rarely wait for each other.
pub const BULK_SEND_BUFFER: usize = 1 << 20;

/// Why a connection is reset; each reason has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// The guest sent more data than the credit it was given.
    #[error("guest wrote beyond its credit")]
    CreditOverrun,
    /// The packet's op is not valid in the connection's state.
    #[error("packet not valid in the connection state")]
    BadState,
    /// The op field holds no known operation.
    #[error("unknown op")]
    UnknownOp,
    /// The host socket failed.
    #[error("host socket error")]
    HostIo,
}

/// What the connection's owner must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The connection goes on.
    Keep,
    /// Remove the connection and send RST to the guest, counting the reason.
    Reset(ConnError),
    /// Both directions are finished: remove the connection and send RST (a normal close).
    Finish,
    /// The guest ended the connection: remove it without telling the guest.
    Drop,
}

/// Connection states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The host connected (`CONNECT <port>`); REQUEST to the guest is pending or sent.
    LocalInit,
    /// Data may flow.
    Established,
}

/// What [`Conn::next_rx`] put into a guest rx buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOut {
    /// A packet with this op, flags and payload length.
    Packet { op: u16, flags: u32, len: u32 },
    /// Nothing to send after all (the host socket had no data).
    Nothing,
    /// As [`Verdict`]: the connection ends and the guest gets RST.
    End(Verdict),
}

const PENDING_REQUEST: u8 = 1;
const PENDING_RESPONSE: u8 = 2;
const PENDING_SHUTDOWN: u8 = 4;
const PENDING_CREDIT_UPDATE: u8 = 8;
const PENDING_CREDIT_REQUEST: u8 = 16;

/// One connection.
#[derive(Debug)]
pub struct Conn {
    pub stream: UnixStream,
    /// Our port (host side): the forwarded port for guest-initiated connections, an ephemeral
    /// port from [2^30, 2^31) for host-initiated ones.
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    pub state: State,
    /// Guest → host bytes the host socket has not taken yet, in this order: the pipe's (spliced
    /// or copied), then `tx_buf[tx_off..]`.
    tx_pipe: Option<SplicePipe>,
    /// Set when a pipe could not be created: the connection only copies.
    no_splice: bool,
    tx_buf: Vec<u8>,
    tx_off: usize,
    /// Guest → host bytes taken from the guest, and how many of them went into the socket.
    taken_total: u64,
    sent_total: u64,
    /// Set by a packet whose guest pages were spliced: the stream offset its data ends at.
    held_end: Option<u64>,
    /// The host socket got a [`BULK_SEND_BUFFER`] and host → guest data goes through `rx_pipe`.
    bulk: bool,
    /// Host → guest bytes taken from the socket, not yet in guest buffers.
    rx_pipe: Option<SplicePipe>,
    /// The socket reached end of file behind the bytes in `rx_pipe`.
    rx_eof_behind_pipe: bool,
    /// Host → guest bytes delivered.
    received_total: u64,
    /// Guest → host bytes delivered to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` last told to the guest.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Host → guest bytes put into rx buffers.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    host_readable: bool,
    host_writable: bool,
    /// The host closed its sending side (SHUTDOWN(SEND) goes to the guest).
    host_eof: bool,
    /// SHUTDOWN flags received from the guest.
    guest_shut: u32,
    pending: u8,
    credit_requested: bool,
    /// Set while the connection waits in the owner's rx work queue.
    pub in_rxq: bool,
}

impl Conn {
    /// A host-initiated connection: REQUEST to the guest's `peer_port` is pending.
    pub fn new_local(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, State::LocalInit);
        c.pending = PENDING_REQUEST;
        c
    }

    /// A guest-initiated connection whose host side connected: RESPONSE is pending.
    pub fn new_peer(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        peer_buf_alloc: u32,
        peer_fwd_cnt: u32,
    ) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, State::Established);
        c.pending = PENDING_RESPONSE;
        c.update_peer_credit(peer_buf_alloc, peer_fwd_cnt);
        c
    }

    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            tx_pipe: None,
            no_splice: false,
            tx_buf: Vec::new(),
            tx_off: 0,
            taken_total: 0,
            sent_total: 0,
            held_end: None,
            bulk: false,
            rx_pipe: None,
            rx_eof_behind_pipe: false,
            received_total: 0,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            host_readable: false,
            host_writable: true,
            host_eof: false,
            guest_shut: 0,
            pending: 0,
            credit_requested: false,
            in_rxq: false,
        }
    }

    /// The `buf_alloc` and `fwd_cnt` to put into every packet sent to the guest.
    pub fn credit_fields(&self) -> (u32, u32) {
        (CONN_TX_BUF_SIZE, self.fwd_cnt.0)
    }

    /// Bytes waiting for the host socket.
    pub fn buffered(&self) -> usize {
        self.piped() + self.copied()
    }

    fn piped(&self) -> usize {
        self.tx_pipe.as_ref().map_or(0, SplicePipe::len)
    }

    fn copied(&self) -> usize {
        self.tx_buf.len() - self.tx_off
    }

    /// The stream offset the last packet's data ends at if its guest pages were spliced: its
    /// buffer must stay with the host until [`Conn::consumed`] reaches that offset.
    pub fn take_held(&mut self) -> Option<u64> {
        self.held_end.take()
    }

    /// How many guest → host bytes the host has certainly read.
    pub fn consumed(&self) -> std::io::Result<u64> {
        consumed(&self.stream, self.sent_total)
    }

    /// Whether the host socket got a large send buffer ([`Conn::make_bulk`]).
    pub fn is_bulk(&self) -> bool {
        self.bulk
    }

    /// Gives the host socket a [`BULK_SEND_BUFFER`] and host → guest data a pipe, for a
    /// connection that moves bulk data.
    pub fn make_bulk(&mut self) {
        log::debug!(
            "vsock: connection {}:{} moves bulk data",
            self.local_port,
            self.peer_port
        );
        self.bulk = true;
        if let Err(e) = grow_send_buffer(&self.stream, BULK_SEND_BUFFER) {
            log::debug!("vsock: cannot grow a send buffer: {e}");
        }
        match SplicePipe::new() {
            Ok(pipe) => self.rx_pipe = Some(pipe),
            Err(e) => log::debug!("vsock: no pipe for host data, reading directly: {e}"),
        }
    }

    /// Host → guest bytes delivered so far.
    pub fn received_total(&self) -> u64 {
        self.received_total
    }

    fn rx_piped(&self) -> usize {
        self.rx_pipe.as_ref().map_or(0, SplicePipe::len)
    }

    /// Guest → host bytes written into the host socket.
    pub fn sent_total(&self) -> u64 {
        self.sent_total
    }

    fn delivered(&mut self, n: usize) {
        self.fwd_cnt += n as u32;
        self.sent_total += n as u64;
    }

    /// The guest shut down both directions and the connection only waits for buffered data to
    /// reach the host.
    pub fn closing(&self) -> bool {
        self.guest_shut == shutdown::BOTH
    }

    /// Bytes the guest can still receive.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Records the credit fields of a packet from the guest.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Whether [`Conn::next_rx`] would produce a packet (or may: a readable socket can turn out
    /// empty).
    pub fn has_rx_work(&self) -> bool {
        if self.pending != 0 {
            return true;
        }
        self.wants_to_read() && (self.peer_credit() > 0 || !self.credit_requested)
    }

    fn wants_to_read(&self) -> bool {
        self.state == State::Established
            && (self.host_readable || self.rx_piped() > 0)
            && !self.host_eof
            && self.guest_shut & shutdown::RCV == 0
    }

    /// The host socket became readable.
    pub fn on_host_readable(&mut self) {
        self.host_readable = true;
    }

    /// The host socket became writable: deliver buffered guest data.
    pub fn on_host_writable(&mut self) -> Verdict {
        self.host_writable = true;
        self.flush()
    }

    /// Writes buffered data to the host socket until it is empty or the socket is full.
    fn flush(&mut self) -> Verdict {
        if self.drain_pipe().is_err() {
            return Verdict::Reset(ConnError::HostIo);
        }
        while self.host_writable && self.piped() == 0 && self.copied() > 0 {
            match send_bytes(&self.stream, &self.tx_buf[self.tx_off..]) {
                Ok(n) => {
                    self.tx_off += n;
                    if self.tx_off == self.tx_buf.len() {
                        self.tx_buf.clear();
                        self.tx_off = 0;
                    }
                    self.delivered(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.host_writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Reset(ConnError::HostIo),
            }
        }
        self.after_delivery()
    }

    /// Moves the pipe's bytes into the socket while it takes them.
    fn drain_pipe(&mut self) -> std::io::Result<()> {
        while self.host_writable && self.piped() > 0 {
            let Some(pipe) = self.tx_pipe.as_mut() else {
                break;
            };
            match pipe.drain_into(&self.stream) {
                Ok(n) => self.delivered(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.host_writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Bookkeeping after guest data reached the host socket: credit updates, and the end of
    /// the connection once the guest has shut down and everything is delivered.
    fn after_delivery(&mut self) -> Verdict {
        if self.buffered() > 0 {
            self.maybe_credit_update();
            return Verdict::Keep;
        }
        if self.guest_shut & shutdown::SEND != 0 {
            if self.closing() || self.host_eof {
                return Verdict::Finish;
            }
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        self.maybe_credit_update();
        Verdict::Keep
    }

    fn maybe_credit_update(&mut self) {
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CONN_TX_BUF_SIZE / 2 {
            self.pending |= PENDING_CREDIT_UPDATE;
        }
    }

    /// Handles a packet from the guest addressed to this connection. `data` is the payload of
    /// an RW packet (exactly `len` bytes, already bounds-checked by the parser).
    pub fn on_guest_packet<B: BitmapSlice>(
        &mut self,
        op: u16,
        flags: u32,
        buf_alloc: u32,
        fwd_cnt: u32,
        data: Option<&VolatileSlice<'_, B>>,
        may_hold: bool,
    ) -> Verdict {
        self.update_peer_credit(buf_alloc, fwd_cnt);
        match op {
            op::RESPONSE if self.state == State::LocalInit => {
                self.state = State::Established;
                let line = crate::host::ok_line(self.local_port);
                match send_bytes(&self.stream, line.as_bytes()) {
                    Ok(n) if n == line.len() => Verdict::Keep,
                    _ => Verdict::Reset(ConnError::HostIo),
                }
            }
            op::RST => Verdict::Drop,
            op::RW if self.state == State::Established && self.guest_shut & shutdown::SEND == 0 => {
                match data {
                    Some(data) => self.guest_data(data, may_hold),
                    None => Verdict::Keep,
                }
            }
            op::SHUTDOWN if self.state == State::Established => {
                let new = flags & shutdown::BOTH & !self.guest_shut;
                self.guest_shut |= flags & shutdown::BOTH;
                if new & shutdown::RCV != 0 {
                    // Nothing more goes to the guest: the host's writes now fail with EPIPE.
                    let _ = self.stream.shutdown(Shutdown::Read);
                    self.host_readable = false;
                }
                self.after_delivery()
            }
            op::CREDIT_UPDATE => Verdict::Keep,
            op::CREDIT_REQUEST => {
                self.pending |= PENDING_CREDIT_UPDATE;
                Verdict::Keep
            }
            op::REQUEST | op::RESPONSE | op::RW | op::SHUTDOWN => {
                Verdict::Reset(ConnError::BadState)
            }
            _ => Verdict::Reset(ConnError::UnknownOp),
        }
    }

    fn guest_data<B: BitmapSlice>(
        &mut self,
        data: &VolatileSlice<'_, B>,
        may_hold: bool,
    ) -> Verdict {
        let len = data.len();
        if self.buffered() + len > CONN_TX_BUF_SIZE as usize {
            return Verdict::Reset(ConnError::CreditOverrun);
        }
        self.taken_total += len as u64;
        let splice = may_hold && len >= SPLICE_MIN_LEN && self.copied() == 0 && self.pipe_ready();
        let mut sent = 0;
        if splice || (self.piped() > 0 && self.copied() == 0) {
            // Behind bytes already in the pipe, or spliced: through the pipe, in order.
            if let Some(pipe) = self.tx_pipe.as_mut() {
                let taken = if splice {
                    pipe.reference(data)
                } else {
                    pipe.copy_in(data)
                };
                match taken {
                    Ok(n) => sent = n,
                    Err(_) => self.no_splice = true,
                }
                if splice && sent > 0 {
                    self.held_end = Some(self.taken_total);
                }
            }
            if self.drain_pipe().is_err() {
                return Verdict::Reset(ConnError::HostIo);
            }
        } else if self.buffered() == 0 {
            while self.host_writable && sent < len {
                let rest = match data.offset(sent) {
                    Ok(rest) => rest,
                    Err(_) => break,
                };
                match send_volatile(&self.stream, &rest) {
                    Ok(n) => {
                        sent += n;
                        self.delivered(n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => self.host_writable = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Verdict::Reset(ConnError::HostIo),
                }
            }
        }
        if sent < len {
            if self.tx_off > 0 {
                self.tx_buf.drain(..self.tx_off);
                self.tx_off = 0;
            }
            let old = self.tx_buf.len();
            self.tx_buf.resize(old + len - sent, 0);
            if let Ok(slice) = data.offset(sent) {
                slice.copy_to(&mut self.tx_buf[old..]);
            }
        }
        self.after_delivery()
    }

    /// Whether the connection has a pipe, creating it on first use.
    fn pipe_ready(&mut self) -> bool {
        if self.tx_pipe.is_none() && !self.no_splice {
            match SplicePipe::new() {
                Ok(pipe) => self.tx_pipe = Some(pipe),
                Err(e) => {
                    log::debug!("vsock: no pipe for splicing, copying instead: {e}");
                    self.no_splice = true;
                }
            }
        }
        self.tx_pipe.is_some() && !self.no_splice
    }

    /// Produces the next packet for the guest into an rx buffer whose payload area is `data`.
    pub fn next_rx<B: BitmapSlice>(&mut self, data: Option<&VolatileSlice<'_, B>>) -> RxOut {
        let packet = |op, flags, len| RxOut::Packet { op, flags, len };
        let out = if self.take(PENDING_REQUEST) {
            packet(op::REQUEST, 0, 0)
        } else if self.take(PENDING_RESPONSE) {
            packet(op::RESPONSE, 0, 0)
        } else if let Some(out) = self.read_host(data) {
            out
        } else if self.take(PENDING_SHUTDOWN) {
            packet(op::SHUTDOWN, shutdown::SEND, 0)
        } else if self.take(PENDING_CREDIT_REQUEST) {
            packet(op::CREDIT_REQUEST, 0, 0)
        } else if self.take(PENDING_CREDIT_UPDATE) {
            packet(op::CREDIT_UPDATE, 0, 0)
        } else {
            RxOut::Nothing
        };
        if let RxOut::Packet { len, .. } = out {
            self.sent_to_guest(len);
        }
        out
    }

    /// Bookkeeping for `len` payload bytes put into rx buffers.
    fn sent_to_guest(&mut self, len: u32) {
        // Every packet tells the guest our fwd_cnt: no separate update needed.
        self.pending &= !PENDING_CREDIT_UPDATE;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.rx_cnt += len;
        self.received_total += u64::from(len);
    }

    fn take(&mut self, bit: u8) -> bool {
        let set = self.pending & bit != 0;
        self.pending &= !bit;
        set
    }

    /// Reads host data into `data` when the guest has credit; `None` when there is nothing to
    /// read now.
    fn read_host<B: BitmapSlice>(&mut self, data: Option<&VolatileSlice<'_, B>>) -> Option<RxOut> {
        if !self.wants_to_read() {
            return None;
        }
        let credit = self.peer_credit();
        if credit == 0 {
            if !self.credit_requested {
                self.credit_requested = true;
                self.pending |= PENDING_CREDIT_REQUEST;
            }
            return None;
        }
        let data = data?;
        let want = (data.len() as u32).min(credit).min(MAX_PKT_DATA) as usize;
        let mut dst = data.subslice(0, want).ok()?;
        if self.rx_pipe.is_some() {
            return self.read_host_via_pipe(&mut dst, credit as usize);
        }
        loop {
            match (&self.stream).read_volatile(&mut dst) {
                Ok(0) => return self.host_end_of_file(),
                Ok(n) => return Some(rw_packet(n)),
                Err(vm_memory::VolatileMemoryError::IOError(e)) => match e.kind() {
                    ErrorKind::WouldBlock => {
                        self.host_readable = false;
                        return None;
                    }
                    ErrorKind::Interrupted => continue,
                    _ => return Some(RxOut::End(Verdict::Reset(ConnError::HostIo))),
                },
                Err(_) => return Some(RxOut::End(Verdict::Reset(ConnError::HostIo))),
            }
        }
    }

    /// [`Conn::read_host`] for a bulk connection: socket data is spliced into the pipe, within
    /// the guest's `credit`, then copied from there into `dst`.
    fn read_host_via_pipe<B: BitmapSlice>(
        &mut self,
        dst: &mut VolatileSlice<'_, B>,
        credit: usize,
    ) -> Option<RxOut> {
        if self.top_up_rx_pipe(credit).is_err() {
            return Some(RxOut::End(Verdict::Reset(ConnError::HostIo)));
        }
        let pipe = self.rx_pipe.as_mut()?;
        if !pipe.is_empty() {
            return match pipe.read_into_all(std::slice::from_ref(dst)) {
                Ok(n) if n > 0 => Some(rw_packet(n)),
                _ => Some(RxOut::End(Verdict::Reset(ConnError::HostIo))),
            };
        }
        if self.rx_eof_behind_pipe {
            return self.host_end_of_file();
        }
        None
    }

    /// Moves socket data into the rx pipe until it holds `credit` bytes or the socket is empty.
    fn top_up_rx_pipe(&mut self, credit: usize) -> std::io::Result<()> {
        let Some(pipe) = self.rx_pipe.as_mut() else {
            return Ok(());
        };
        if self.host_readable && !self.rx_eof_behind_pipe && pipe.len() < credit {
            match pipe.fill_from(&self.stream, credit - pipe.len()) {
                Ok(0) => self.rx_eof_behind_pipe = true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.host_readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// For a bulk connection whose next packet for the guest is data: the bytes that can go to
    /// the guest now, all of them already in the rx pipe, so that one read can fill several rx
    /// buffers ([`Conn::read_batch`]). `None` when the next packet is anything else.
    pub fn batch_ready(&mut self) -> Option<usize> {
        if self.rx_pipe.is_none()
            || self.pending & (PENDING_REQUEST | PENDING_RESPONSE) != 0
            || !self.wants_to_read()
        {
            return None;
        }
        let credit = self.peer_credit() as usize;
        if credit == 0 || self.top_up_rx_pipe(credit).is_err() {
            return None; // the single-packet path asks for credit or reports the error
        }
        let ready = self.rx_piped().min(credit);
        (ready > 0).then_some(ready)
    }

    /// Copies rx pipe bytes into `bufs` (at most what [`Conn::batch_ready`] said) and accounts
    /// for them as sent to the guest; returns the bytes copied.
    pub fn read_batch<B: BitmapSlice>(
        &mut self,
        bufs: &[VolatileSlice<'_, B>],
    ) -> std::io::Result<usize> {
        let pipe = self
            .rx_pipe
            .as_mut()
            .ok_or_else(|| std::io::Error::from(ErrorKind::Unsupported))?;
        let n = pipe.read_into_all(bufs)?;
        self.sent_to_guest(n as u32);
        Ok(n)
    }

    /// The host closed its sending side and every byte before that reached the guest.
    fn host_end_of_file(&mut self) -> Option<RxOut> {
        self.host_eof = true;
        self.host_readable = false;
        if self.guest_shut & shutdown::SEND != 0 && self.buffered() == 0 {
            return Some(RxOut::End(Verdict::Finish));
        }
        self.pending |= PENDING_SHUTDOWN;
        None
    }

    /// The host socket reported an error or hang-up on both sides.
    pub fn on_host_error(&mut self) -> Verdict {
        // Whatever can still be read is read (EOF then tells the guest); a write error resets.
        self.host_readable = true;
        self.flush()
    }
}

fn rw_packet(len: usize) -> RxOut {
    RxOut::Packet {
        op: op::RW,
        flags: 0,
        len: len as u32,
    }
}

/// How many of the `sent` bytes written into `stream` its peer has certainly read.
pub fn consumed(stream: &UnixStream, sent: u64) -> std::io::Result<u64> {
    Ok(sent.saturating_sub(unread_bytes(stream)? as u64))
}
