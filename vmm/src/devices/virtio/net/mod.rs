//! virtio-net (network device, virtio 1.2 section 5.1) on a host TAP, one receive and one
//! transmit queue, on the VMM's event thread.
//!
//! - `tap.rs`: attaching to the TAP (`/dev/net/tun`, virtio-net header, non-blocking), its
//!   errors, reads and writes.
//! - `header.rs`: the 12-byte `virtio_net_hdr_v1` and the checks on transmit headers.
//! - `rx.rs`: TAP → guest, straight into the guest's receive buffers when the posted ones
//!   have room for any frame, else through a host buffer; mergeable buffers.
//! - `tx.rs`: guest → TAP, one chain per frame.
//! - `counters.rs`: traffic and drops by reason, rate-limited warnings.
//!
//! Offloads: the device offers checksum offload and TSO both ways. What the guest accepts for
//! its receive side becomes the TAP's offload flags (TUNSETOFFLOAD), so the kernel only sends
//! partial checksums and GSO frames the guest said it handles; transmit headers are checked
//! against what the device offered and the guest accepted.
//!
//! Flow control, without ever blocking the event thread: when the guest has no receive
//! buffers, the device stops watching the TAP for input until the guest notifies the receive
//! queue (the kernel queues, then drops, frames meanwhile); when the TAP is full, the chain
//! goes back to the available ring and the device waits for the TAP to become writable.
//! Everything in descriptor chains and headers comes from the guest: a bad chain or header
//! drops that one frame and is counted ([`NetCounters`]), never an error of the VMM.

pub mod counters;
pub mod header;
mod rx;
pub mod tap;
mod tx;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::warn;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use self::counters::LogLimiter;
pub use self::counters::{DropReason, NetCounters};
use self::header::HDR_LEN;
use self::rx::RxOutcome;
pub use self::tap::{Tap, TapError};
use self::tx::TxOutcome;
use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, IrqKind, IrqTrigger,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame, without the virtio-net header: a 64 KiB GSO frame with its headers
/// (virtio 1.2 section 5.1.6.3.1: receive buffers of 65562 bytes, header included).
pub const MAX_FRAME_LEN: usize = 65562 - HDR_LEN;
/// Most descriptors in one chain. Linux uses at most MAX_SKB_FRAGS + 2 (19).
pub const MAX_CHAIN_DESCS: usize = 64;
/// Frames handled per event before the loop serves other sources again.
const BUDGET: usize = 256;

const RX: usize = 0;
const TX: usize = 1;

const ACTIVATE_EVENT: u32 = 0;
const RX_EVENT: u32 = 1;
const TX_EVENT: u32 = 2;
const TAP_EVENT: u32 = 3;

/// Size of the configuration space: mac, status.
const CONFIG_LEN: usize = 8;

/// A guest network interface on a host TAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Name of an existing host TAP.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot create the activation event of the device on TAP {tap}")]
    Event {
        tap: String,
        #[source]
        source: io::Error,
    },
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    irq: Arc<IrqTrigger>,
}

/// The net device.
pub struct Net {
    tap: Tap,
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    activate_evt: EventFd,
    active: Option<Active>,
    /// Frame read from the TAP, header included; `rx_len` bytes of it are a frame that is
    /// waiting for guest buffers.
    rx_buf: Box<[u8]>,
    rx_len: Option<usize>,
    rx_used: Vec<(u16, u32)>,
    rx_direct: rx::DirectScratch,
    /// The guest had no receive buffers: input on the TAP is not watched until it posts some.
    rx_waiting: bool,
    /// The TAP was full: output is watched until it is writable.
    tx_waiting: bool,
    /// What the TAP is registered for in the event loop, if it is.
    tap_interest: Option<EventSet>,
    counters: NetCounters,
    log: LogLimiter,
}

/// The features the device offers.
pub const AVAIL_FEATURES: u64 = VIRTIO_F_VERSION_1
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6;

/// The TAP offload flags for the receive features the guest accepted. TSO needs checksum
/// offload in both virtio and tun, so without GUEST_CSUM there is none.
pub fn tap_offload(features: u64) -> libc::c_uint {
    let acked = |bit: u32| features & (1u64 << bit) != 0;
    if !acked(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if acked(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if acked(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

impl Net {
    /// Attaches to the TAP of `config`. Attach the device with the builder's `attach_virtio`,
    /// like the other virtio devices.
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        Self::with_tap(Tap::open(&config.tap, HDR_LEN)?, config.mac)
    }

    /// The device on an already attached TAP.
    pub fn with_tap(tap: Tap, mac: [u8; 6]) -> Result<Self, NetError> {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        let activate_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| NetError::Event {
            tap: tap.name().to_string(),
            source,
        })?;
        Ok(Self {
            tap,
            config,
            acked_features: 0,
            activate_evt,
            active: None,
            rx_buf: vec![0u8; HDR_LEN + MAX_FRAME_LEN].into_boxed_slice(),
            rx_len: None,
            rx_used: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            rx_direct: rx::DirectScratch::default(),
            rx_waiting: false,
            tx_waiting: false,
            tap_interest: None,
            counters: NetCounters::default(),
            log: LogLimiter::new(Duration::from_secs(1)),
        })
    }

    /// The TAP, for benches and diagnostics (its fd can be polled).
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Whether receive is waiting for the guest to post buffers (the TAP is not watched).
    pub fn rx_waiting_for_buffers(&self) -> bool {
        self.rx_waiting
    }

    /// Whether transmit is waiting for the TAP to become writable.
    pub fn tx_waiting_for_tap(&self) -> bool {
        self.tx_waiting
    }

    /// Moves frames from the TAP to the guest until the TAP is empty, the guest's buffers run
    /// out, or the budget is spent; returns whether any buffer was used. The event loop calls
    /// this when the TAP is readable or the guest posted buffers; tests and benches directly.
    pub fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RX];
        let mergeable = self.acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let guest_csum = self.acked_features & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0;
        let mut used_any = false;
        self.rx_waiting = false;
        for _ in 0..BUDGET {
            let len = match self.rx_len {
                Some(len) => len,
                None => {
                    // Take a frame off the TAP only when it has somewhere to go.
                    if !self.rx_direct.holds_chains() && !rx::has_buffers(queue, mem) {
                        self.rx_waiting = true;
                        break;
                    }
                    let direct = rx::read_direct(
                        &self.tap,
                        mem,
                        queue,
                        mergeable,
                        guest_csum,
                        &mut self.rx_direct,
                    );
                    match direct {
                        rx::Direct::Delivered(n) => {
                            self.counters.rx_direct += 1;
                            self.counters.rx_packets += 1;
                            self.counters.rx_bytes += (n - HDR_LEN) as u64;
                            used_any = true;
                            continue;
                        }
                        rx::Direct::Tap(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        rx::Direct::Tap(e) => {
                            self.counters.count_drop(DropReason::RxTapError);
                            let tap = self.tap.name();
                            self.log.warn(tap, || format!("cannot read the TAP: {e}"));
                            break;
                        }
                        rx::Direct::Fallback => {}
                    }
                    match self.tap.read(&mut self.rx_buf) {
                        Ok(n) if n >= HDR_LEN => n,
                        Ok(n) => {
                            self.counters.count_drop(DropReason::RxTapError);
                            let tap = self.tap.name();
                            self.log.warn(tap, || format!("{n}-byte read from the TAP"));
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            self.counters.count_drop(DropReason::RxTapError);
                            let tap = self.tap.name();
                            self.log.warn(tap, || format!("cannot read the TAP: {e}"));
                            break;
                        }
                    }
                }
            };
            if !guest_csum {
                // The kernel may mark checksums valid; a guest without GUEST_CSUM gets no flags.
                self.rx_buf[0] = 0;
            }
            let frame = &self.rx_buf[..len];
            match rx::deliver(mem, queue, frame, mergeable, &mut self.rx_used) {
                RxOutcome::Delivered(_) => {
                    self.rx_len = None;
                    self.counters.rx_packets += 1;
                    self.counters.rx_bytes += (len - HDR_LEN) as u64;
                    used_any = true;
                }
                RxOutcome::NoBuffers => {
                    self.rx_len = Some(len);
                    self.rx_waiting = true;
                    break;
                }
                RxOutcome::Dropped(why) => {
                    self.rx_len = None;
                    self.counters.count_drop(why);
                    used_any |= !self.rx_used.is_empty();
                    let tap = self.tap.name();
                    self.log.warn(tap, || {
                        format!("received {len}-byte frame dropped: {why:?}")
                    });
                }
            }
        }
        used_any
    }

    /// Sends the guest's transmit chains to the TAP until none is left, the TAP is full, or
    /// the budget is spent (then the queue is notified again, so the loop comes back after
    /// serving other sources); returns whether any chain was used.
    pub fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TX];
        let mut used_any = false;
        self.tx_waiting = false;
        let mut budget_left = true;
        for round in 0..=BUDGET {
            if round == BUDGET {
                budget_left = false;
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match tx::send(&self.tap, mem, chain, self.acked_features, &mut self.log) {
                TxOutcome::Sent(len) => {
                    self.counters.tx_packets += 1;
                    self.counters.tx_bytes += len as u64;
                }
                TxOutcome::TapFull => {
                    queue.go_to_previous_position();
                    self.counters.tx_tap_full += 1;
                    self.tx_waiting = true;
                    break;
                }
                TxOutcome::Dropped(why) => self.counters.count_drop(why),
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                let tap = self.tap.name();
                self.log
                    .warn(tap, || format!("cannot return transmit chain {head}: {e}"));
                break;
            }
            used_any = true;
        }
        if !budget_left && !self.tx_waiting {
            let _ = active.queue_evts[TX].write(1);
        }
        used_any
    }

    /// Raises the interrupt when a queue with new used buffers wants one.
    fn signal(&mut self, rx_used: bool, tx_used: bool) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut notify = false;
        for (used, q) in [(rx_used, RX), (tx_used, TX)] {
            if used {
                notify |= active.queues[q]
                    .needs_notification(&active.mem)
                    .unwrap_or(true);
            }
        }
        if notify {
            if let Err(e) = active.irq.trigger(IrqKind::Vring) {
                warn!(
                    "virtio-net {}: cannot raise interrupt: {e}",
                    self.tap.name()
                );
            }
        }
    }

    /// Watches the TAP for what the device is waiting for: input unless receive waits for
    /// guest buffers, output while transmit waits for room.
    fn update_tap_interest(&mut self, ops: &mut EventOps) {
        let mut want = EventSet::empty();
        if !self.rx_waiting {
            want |= EventSet::IN;
        }
        if self.tx_waiting {
            want |= EventSet::OUT;
        }
        let result = match self.tap_interest {
            Some(current) if current == want => return,
            Some(_) => ops.modify(Events::with_data(&self.tap, TAP_EVENT, want)),
            None => ops.add(Events::with_data(&self.tap, TAP_EVENT, want)),
        };
        match result {
            Ok(()) => self.tap_interest = Some(want),
            Err(e) => warn!("virtio-net {}: cannot watch the TAP: {e}", self.tap.name()),
        }
    }

    fn stop_watching_tap(&mut self, ops: &mut EventOps) {
        if self.tap_interest.take().is_some() {
            let _ = ops.remove(Events::with_data(&self.tap, TAP_EVENT, EventSet::empty()));
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & AVAIL_FEATURES;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 2 || ctx.queue_evts.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: ctx.queues.len(),
            });
        }
        self.tap
            .set_offload(tap_offload(self.acked_features))
            .map_err(|e| ActivateError::Setup(e.to_string()))?;
        self.active = Some(Active {
            mem: ctx.mem,
            queues: ctx.queues,
            queue_evts: ctx.queue_evts,
            irq: ctx.irq,
        });
        self.activate_evt.write(1).map_err(ActivateError::Event)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) -> bool {
        self.rx_direct.forget();
        self.active = None;
        self.acked_features = 0;
        self.rx_len = None;
        self.rx_waiting = false;
        self.tx_waiting = false;
        true
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE_EVENT,
            EventSet::IN,
        )) {
            warn!(
                "virtio-net {}: cannot watch the activation event: {e}",
                self.tap.name()
            );
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        if data == ACTIVATE_EVENT {
            let _ = self.activate_evt.read();
            let Some(active) = &self.active else {
                return;
            };
            for (data, fd) in [
                (RX_EVENT, &active.queue_evts[RX]),
                (TX_EVENT, &active.queue_evts[TX]),
            ] {
                if let Err(e) = ops.add(Events::with_data(fd, data, EventSet::IN)) {
                    warn!(
                        "virtio-net {}: cannot watch queue event {data}: {e}",
                        self.tap.name()
                    );
                }
            }
            // Frames may be waiting on the TAP and chains on the transmit queue already.
            let tx_used = self.process_tx();
            let rx_used = self.process_rx();
            self.signal(rx_used, tx_used);
            self.update_tap_interest(ops);
            return;
        }
        let Some(active) = &self.active else {
            // Reset while the event was pending: stop watching the stale source.
            if data == TAP_EVENT {
                self.stop_watching_tap(ops);
            } else {
                let _ = ops.remove(events);
            }
            return;
        };
        let (mut rx_used, mut tx_used) = (false, false);
        match data {
            RX_EVENT => {
                let _ = active.queue_evts[RX].read();
                rx_used = self.process_rx();
            }
            TX_EVENT => {
                let _ = active.queue_evts[TX].read();
                tx_used = self.process_tx();
            }
            TAP_EVENT => {
                let set = events.event_set();
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    warn!(
                        "virtio-net {}: the TAP reported an error or hang-up (was the \
                         interface deleted?); the device stops using it",
                        self.tap.name()
                    );
                    self.stop_watching_tap(ops);
                    return;
                }
                if set.contains(EventSet::OUT) {
                    tx_used = self.process_tx();
                }
                if set.contains(EventSet::IN) {
                    rx_used = self.process_rx();
                }
            }
            other => {
                warn!("virtio-net {}: unexpected event {other}", self.tap.name());
                return;
            }
        }
        self.signal(rx_used, tx_used);
        if self.tap_interest.is_some() {
            self.update_tap_interest(ops);
        }
    }
}

#[cfg(test)]
mod tests;
