//! Device models: the buses that route guest accesses, legacy devices and virtio devices.

pub mod bus;
pub mod legacy;
pub mod virtio;
