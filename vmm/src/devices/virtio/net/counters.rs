//! What the net device did: traffic, every dropped frame by reason, and a rate limit for the
//! log lines that a misbehaving guest (or a dead TAP) would otherwise repeat per frame.

use std::time::{Duration, Instant};

use log::warn;

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A transmit chain with a device-writable buffer, a buffer outside guest memory, too
    /// many descriptors or a length that overflows.
    TxBadChain,
    /// A transmit frame larger than the device's limit.
    TxTooLarge,
    /// A transmit chain shorter than the virtio-net header, or a frame shorter than an
    /// Ethernet header.
    TxShort,
    /// A transmit header with flags, gso_type or offsets the device refuses.
    TxBadHeader,
    /// The TAP refused the frame (the interface is down, or the kernel rejected the header).
    TxTapError,
    /// A receive chain with a device-readable buffer, a buffer outside guest memory, too many
    /// descriptors or a length that overflows.
    RxBadChain,
    /// A received frame that does not fit the guest's buffers (one chain without mergeable
    /// buffers, or the whole queue with them).
    RxNoRoom,
    /// Reading the TAP failed with something other than "no frame waiting".
    RxTapError,
}

/// Counters of one net device, for diagnostics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Received frames read from the TAP straight into guest buffers (the others went
    /// through the host buffer).
    pub rx_direct: u64,
    /// Times a transmit waited because the TAP was full (not a drop).
    pub tx_tap_full: u64,
    pub tx_bad_chain: u64,
    pub tx_too_large: u64,
    pub tx_short: u64,
    pub tx_bad_header: u64,
    pub tx_tap_errors: u64,
    pub rx_bad_chain: u64,
    pub rx_no_room: u64,
    pub rx_tap_errors: u64,
}

impl NetCounters {
    pub fn count_drop(&mut self, why: DropReason) {
        let c = match why {
            DropReason::TxBadChain => &mut self.tx_bad_chain,
            DropReason::TxTooLarge => &mut self.tx_too_large,
            DropReason::TxShort => &mut self.tx_short,
            DropReason::TxBadHeader => &mut self.tx_bad_header,
            DropReason::TxTapError => &mut self.tx_tap_errors,
            DropReason::RxBadChain => &mut self.rx_bad_chain,
            DropReason::RxNoRoom => &mut self.rx_no_room,
            DropReason::RxTapError => &mut self.rx_tap_errors,
        };
        *c += 1;
    }

    /// Every dropped frame, both directions.
    pub fn dropped(&self) -> u64 {
        self.tx_bad_chain
            + self.tx_too_large
            + self.tx_short
            + self.tx_bad_header
            + self.tx_tap_errors
            + self.rx_bad_chain
            + self.rx_no_room
            + self.rx_tap_errors
    }
}

/// At most one warning per interval; the next one says how many were held back.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            held_back: 0,
        }
    }

    /// Logs `msg` (built only when it will be printed) unless one was logged recently.
    pub fn warn(&mut self, tap: &str, msg: impl FnOnce() -> String) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.held_back += 1;
            return;
        }
        let held = std::mem::take(&mut self.held_back);
        if held > 0 {
            warn!(
                "virtio-net {tap}: {} ({held} similar messages held back)",
                msg()
            );
        } else {
            warn!("virtio-net {tap}: {}", msg());
        }
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_by_reason() {
        let mut c = NetCounters::default();
        c.count_drop(DropReason::TxBadHeader);
        c.count_drop(DropReason::RxNoRoom);
        c.count_drop(DropReason::RxNoRoom);
        assert_eq!((c.tx_bad_header, c.rx_no_room, c.dropped()), (1, 2, 3));
    }

    #[test]
    fn the_log_limiter_holds_back_repeats() {
        let mut l = LogLimiter::new(Duration::from_secs(3600));
        for _ in 0..5 {
            l.warn("t", String::new);
        }
        assert!(l.last.is_some());
        assert_eq!(l.held_back, 4);
    }
}
