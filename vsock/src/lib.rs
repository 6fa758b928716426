//! capsule's virtio-vsock device core.
//!
//! The same code serves the in-VMM virtio-mmio device (`capsule_vmm::devices::virtio::vsock`) and the
//! vhost-user-vsock backend ([`vhost_user`]): [`muxer::VsockCore`] takes packets from the tx
//! queue, keeps one [`conn::Conn`] per stream connection with credit-based flow control, and
//! serves the host side through a Firecracker-compatible hybrid Unix socket ([`host`]).
//! Everything the guest writes is treated as hostile: bad packets are dropped or their
//! connection reset, and every such event is counted in [`muxer::Counters`]. Bulk transfers
//! avoid copies where the kernel allows ([`splice`]): large guest packets are spliced into the
//! host socket and their buffers held until the host has read them.

pub mod conn;
pub mod host;
pub mod muxer;
pub mod proto;
pub mod splice;
pub mod vhost_user;

pub use muxer::{Counters, VsockConfig, VsockCore, DEFAULT_MAX_CONNECTIONS};

/// Copies the part of a configuration space `config` at `offset` into `data`, zero-filling the
/// rest; any offset and length from the guest or front-end is safe.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzzing;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
#[cfg(test)]
mod tests;
