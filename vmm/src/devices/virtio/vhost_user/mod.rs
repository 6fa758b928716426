//! The vhost-user frontend: a virtio device whose queues are served by another process (the
//! backend, e.g. virtiofsd) over a Unix socket, on guest memory that both processes map.
//!
//! The VMM keeps the virtio-mmio transport (registers, feature negotiation with the driver,
//! config space) and hands the data path to the backend:
//! - [`frontend::Connection`] speaks the control protocol (the `vhost` crate's `Frontend`):
//!   SET_OWNER and feature negotiation when the device is built, then, when the driver sets
//!   DRIVER_OK, SET_FEATURES, SET_MEM_TABLE (the memfd regions of guest RAM, see
//!   [`crate::memory::create_shared_guest_memory`]) and per queue SET_VRING_NUM / ADDR / BASE /
//!   CALL / KICK / ENABLE;
//! - the kick eventfd of each queue is the transport's queue-notify eventfd, registered with
//!   KVM as an ioeventfd, so the guest's notifications reach the backend without the VMM;
//! - the call eventfd of each queue is the VMM's own ([`call_relay::CallRelay`]): the event
//!   loop turns a signal on it into the transport's used-buffer interrupt, because the
//!   virtio-mmio driver only serves its queues when InterruptStatus says so.
//!
//! A device model (virtio-fs: [`super::fs`]) adds its device type, queue sizes and config
//! space; another vhost-user device needs nothing more than that.

pub mod call_relay;
pub mod frontend;

pub use call_relay::CallRelay;
pub use frontend::{Connection, VhostUserError};
