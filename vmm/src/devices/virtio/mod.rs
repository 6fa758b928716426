//! Virtio devices and the virtio-mmio transport that exposes them to the guest.
//!
//! A device model implements [`VirtioDevice`] (what the transport needs) and
//! `event_manager::MutEventSubscriber` (how it does its work on the VMM's event thread). The
//! transport runs on vCPU threads; when the driver sets DRIVER_OK it hands the device its
//! queues, one notification [`EventFd`] per queue and the [`IrqTrigger`].

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod single_queue;
pub mod vhost_user;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

/// Device ids from the virtio specification, section 5.
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const VSOCK: u32 = 19;
    pub const FS: u32 = 26;
}

/// Feature bit every modern (virtio 1.x) device offers and every driver must accept.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("device expects {expected} queues, driver enabled {got}")]
    QueueCount { expected: usize, got: usize },
    /// A device-specific setup step failed.
    #[error("device setup failed: {0}")]
    Setup(String),
    /// Registering the device's event sources failed.
    #[error("cannot signal activation")]
    Event(#[source] std::io::Error),
}

/// Kind of interrupt a device raises, as reported in the InterruptStatus register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    /// A queue's used ring was updated.
    Vring,
    /// The device configuration space changed.
    Config,
}

impl IrqKind {
    fn status_bit(self) -> u32 {
        match self {
            IrqKind::Vring => 0x1,
            IrqKind::Config => 0x2,
        }
    }
}

/// The interrupt line of one virtio-mmio device: the InterruptStatus bits and the eventfd
/// registered with KVM as an irqfd for the device's GSI.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Sets the status bit for `kind` and injects the interrupt.
    pub fn trigger(&self, kind: IrqKind) -> std::io::Result<()> {
        self.status.fetch_or(kind.status_bit(), Ordering::SeqCst);
        self.evt.write(1)
    }

    /// The InterruptStatus register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears status bits acknowledged by the driver (InterruptACK register).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd to register with KVM as the device's irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// Everything a device receives when the driver has finished setting it up.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    /// The queues, in device order, each already validated against guest memory.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, signalled when the driver notifies that queue.
    pub queue_evts: Vec<EventFd>,
    pub irq: Arc<IrqTrigger>,
}

/// What the virtio-mmio transport needs from a device model.
pub trait VirtioDevice: Send {
    /// Device id (see [`device_type`]).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers, including [`VIRTIO_F_VERSION_1`].
    fn avail_features(&self) -> u64;

    /// Records the features the driver accepted (a subset of `avail_features`).
    fn ack_features(&mut self, features: u64);

    /// Reads the device configuration space at `offset`; bytes out of range read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space; the default ignores writes.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// Starts the device with the driver's queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;

    /// Whether [`VirtioDevice::activate`] has succeeded since the last reset.
    fn is_activated(&self) -> bool;

    /// Stops the device after a driver reset and returns it to its pre-activation state.
    /// Returns false when the device cannot be reset; the transport then reports
    /// DEVICE_NEEDS_RESET and the driver must not use the device further.
    fn reset(&mut self) -> bool {
        false
    }
}

/// Bounded config-space reads, shared with the vsock device core (which the vhost-user backend
/// uses without this crate).
pub use capsule_vsock::read_config_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut out);
        assert_eq!(out, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }

    #[test]
    fn irq_status_is_set_and_acked() {
        let irq = IrqTrigger::new().unwrap();
        irq.trigger(IrqKind::Vring).unwrap();
        irq.trigger(IrqKind::Config).unwrap();
        assert_eq!(irq.status(), 0x3);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        irq.ack(0x1);
        assert_eq!(irq.status(), 0x2);
    }
}
