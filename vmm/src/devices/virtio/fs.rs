//! virtio-fs (device type 26) served by a vhost-user backend such as virtiofsd: the VMM owns
//! the config space (the tag the guest mounts by, one request queue) and hands both queues
//! (high priority, requests) to the backend through the vhost-user frontend
//! ([`super::vhost_user`]). Guest memory must be shared (memfd-backed).

use std::path::PathBuf;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::warn;

use super::vhost_user::{CallRelay, Connection, VhostUserError};
use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice,
    VIRTIO_F_VERSION_1,
};

/// Config space layout (virtio 1.2, 5.11.4).
pub mod config {
    /// Bytes of the tag field (UTF-8, NUL-padded, not necessarily NUL-terminated).
    pub const TAG_LEN: usize = 36;
    /// The tag, then `num_request_queues` (le32).
    pub const SIZE: usize = TAG_LEN + 4;
}

/// The high-priority queue plus this many request queues.
pub const NUM_REQUEST_QUEUES: usize = 1;
const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES;
/// Size of each queue (virtiofsd handles up to 1024).
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];

/// Ring features the driver may use when the backend offers them.
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// One virtio-fs device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The tag the guest mounts it by (`mount -t virtiofs TAG /dir`), 1 to 36 bytes.
    pub tag: String,
    /// The backend's vhost-user socket (it must be listening).
    pub socket: PathBuf,
}

/// Why a virtio-fs device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("invalid virtio-fs tag {0:?}: it has 1 to {len} bytes", len = config::TAG_LEN)]
    Tag(String),
    #[error(transparent)]
    VhostUser(#[from] VhostUserError),
    #[error("cannot create the call eventfds of virtio-fs {tag}")]
    Eventfd {
        tag: String,
        #[source]
        source: std::io::Error,
    },
}

/// A virtio-fs device on a vhost-user backend.
pub struct Fs {
    config: [u8; config::SIZE],
    backend: Connection,
    relay: CallRelay,
    acked_features: u64,
    activated: bool,
}

impl Fs {
    /// Connects to the backend of `cfg` and negotiates with it.
    pub fn new(cfg: &FsConfig) -> Result<Self, FsError> {
        if cfg.tag.is_empty() || cfg.tag.len() > config::TAG_LEN {
            return Err(FsError::Tag(cfg.tag.clone()));
        }
        let backend = Connection::connect(&cfg.socket, NUM_QUEUES)?;
        let relay =
            CallRelay::new("virtio-fs", NUM_QUEUES, backend.as_raw_fd()).map_err(|source| {
                FsError::Eventfd {
                    tag: cfg.tag.clone(),
                    source,
                }
            })?;
        Ok(Fs {
            config: config_space(&cfg.tag),
            backend,
            relay,
            acked_features: 0,
            activated: false,
        })
    }
}

/// The config space for `tag`: the tag NUL-padded to 36 bytes, then one request queue.
fn config_space(tag: &str) -> [u8; config::SIZE] {
    let mut space = [0u8; config::SIZE];
    let n = tag.len().min(config::TAG_LEN);
    space[..n].copy_from_slice(&tag.as_bytes()[..n]);
    space[config::TAG_LEN..].copy_from_slice(&(NUM_REQUEST_QUEUES as u32).to_le_bytes());
    space
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        let ring = VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;
        VIRTIO_F_VERSION_1 | (self.backend.backend_features() & ring)
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: ctx.queues.len(),
            });
        }
        self.backend
            .activate(
                &ctx.mem,
                self.acked_features,
                &ctx.queues,
                &ctx.queue_evts,
                self.relay.calls(),
            )
            .map_err(|e| ActivateError::Setup(format!("{e}: {}", error_sources(&e))))?;
        self.relay.start(ctx.irq).map_err(ActivateError::Event)?;
        self.activated = true;
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.activated
    }

    fn reset(&mut self) -> bool {
        self.relay.stop();
        self.activated = false;
        match self.backend.reset() {
            Ok(()) => true,
            Err(e) => {
                warn!("virtio-fs: {e}: {}", error_sources(&e));
                false
            }
        }
    }
}

/// The causes of `e`, joined, for a one-line message.
fn error_sources(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        self.relay.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.relay.handle(events, ops);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_the_tag_then_one_request_queue() {
        let space = config_space("capsule-fs0");
        assert_eq!(&space[..11], b"capsule-fs0");
        assert!(space[11..config::TAG_LEN].iter().all(|b| *b == 0));
        assert_eq!(&space[config::TAG_LEN..], &1u32.to_le_bytes());
        let long = "x".repeat(config::TAG_LEN);
        assert_eq!(&config_space(&long)[..config::TAG_LEN], long.as_bytes());
    }

    #[test]
    fn bad_tags_and_missing_backends_are_named() {
        let cfg = |tag: &str| FsConfig {
            tag: tag.into(),
            socket: "/nonexistent/capsule-fs.sock".into(),
        };
        let err = Fs::new(&cfg("")).err().unwrap().to_string();
        assert!(err.contains("invalid virtio-fs tag"), "{err}");
        let err = Fs::new(&cfg(&"x".repeat(37))).err().unwrap().to_string();
        assert!(err.contains("invalid virtio-fs tag"), "{err}");
        let err = Fs::new(&cfg("t")).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/capsule-fs.sock"), "{err}");
    }
}
