//! The device core served as a vhost-user-vsock backend, so that QEMU (`-device
//! vhost-user-vsock-device`, guest memory shared through a memfd) runs capsule guests with the
//! same host-side protocol as the in-VMM device.
//!
//! One thread (vhost-user-backend's vring epoll thread) does all device work: queue kicks and
//! the core's epoll fd (all host sockets) arrive there as events.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, RwLock};

use log::info;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::muxer::{MuxerError, VsockConfig, VsockCore};

type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

const NUM_QUEUES: usize = 3;
/// Largest vring the front-end may set up. QEMU's vhost-user-vsock device offers 1024-entry
/// rings and a Linux guest uses the full size.
const QUEUE_SIZE: usize = 1024;
const RX: usize = 0;
const TX: usize = 1;
/// Event id of the core's epoll fd: ids up to NUM_QUEUES belong to the library.
const BACKEND_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// Errors of the vhost-user backend.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserError {
    #[error("cannot create the device core")]
    Core(#[from] MuxerError),
    #[error("cannot listen on the vhost-user socket")]
    Listen(#[source] vhost::vhost_user::Error),
    #[error("vhost-user daemon failed: {0}")]
    Daemon(String),
}

/// The vhost-user-vsock device backend.
pub struct VsockBackend {
    core: VsockCore,
    mem: Option<Mem>,
    config_space: [u8; 8],
}

impl VsockBackend {
    pub fn new(cfg: VsockConfig) -> Result<Self, MuxerError> {
        let config_space = cfg.guest_cid.to_le_bytes();
        Ok(Self {
            core: VsockCore::new(cfg)?,
            mem: None,
            config_space,
        })
    }

    fn run(&mut self, vrings: &[VringRwLock<Mem>], tx: bool, backend: bool) -> io::Result<()> {
        let Some(atomic) = &self.mem else {
            return Ok(());
        };
        let mem = atomic.memory();
        if backend {
            self.core.process_backend();
        }
        // Host events can also free tx buffers the host has now read.
        if tx || backend {
            if let Some(vring) = vrings.get(TX) {
                let used = self.core.process_tx(&*mem, vring.get_mut().get_queue_mut());
                if used {
                    vring.signal_used_queue()?;
                }
            }
        }
        if let Some(vring) = vrings.get(RX) {
            let used = self.core.process_rx(&*mem, vring.get_mut().get_queue_mut());
            if used {
                vring.signal_used_queue()?;
            }
        }
        Ok(())
    }
}

impl VhostUserBackendMut for VsockBackend {
    type Bitmap = ();
    type Vring = VringRwLock<Mem>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn reset_device(&mut self) {
        self.core.reset_device();
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // VIRTIO_RING_F_EVENT_IDX is not offered.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut out = vec![0u8; size as usize];
        crate::read_config_bytes(&self.config_space, u64::from(offset), &mut out);
        out
    }

    fn update_memory(&mut self, mem: Mem) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock<Mem>],
        _thread_id: usize,
    ) -> io::Result<()> {
        if !evset.contains(EventSet::IN) {
            return Ok(());
        }
        match device_event as usize {
            RX => self.run(vrings, false, false),
            TX => self.run(vrings, true, false),
            d if d == usize::from(BACKEND_EVENT) => self.run(vrings, false, true),
            // The event queue is only used for TRANSPORT_RESET.
            _ => Ok(()),
        }
    }
}

/// Serves the vsock device on the vhost-user socket `socket`, one front-end (QEMU) at a time,
/// until an error. Connections of a front-end that goes away are closed.
pub fn serve(cfg: VsockConfig, socket: &Path) -> Result<(), VhostUserError> {
    let backend = Arc::new(RwLock::new(VsockBackend::new(cfg)?));
    let core_fd = backend
        .read()
        .map_err(|_| VhostUserError::Daemon("backend lock poisoned".into()))?
        .core
        .as_raw_fd();
    let mut listener = Listener::new(socket, true).map_err(VhostUserError::Listen)?;
    loop {
        let mut daemon = VhostUserDaemon::new(
            "capsule-vsock".into(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| VhostUserError::Daemon(e.to_string()))?;
        let handlers = daemon.get_epoll_handlers();
        for handler in &handlers {
            handler
                .register_listener(core_fd, EventSet::IN, u64::from(BACKEND_EVENT))
                .map_err(|e| VhostUserError::Daemon(format!("cannot watch host sockets: {e}")))?;
        }
        info!(
            "vhost-user-vsock: waiting for a front-end on {}",
            socket.display()
        );
        daemon
            .start(&mut listener)
            .map_err(|e| VhostUserError::Daemon(e.to_string()))?;
        if let Err(e) = daemon.wait() {
            info!("vhost-user-vsock: front-end session ended: {e}");
        }
        for handler in &handlers {
            let _ = handler.unregister_listener(core_fd, EventSet::IN, u64::from(BACKEND_EVENT));
            handler.send_exit_event();
        }
        if let Ok(mut b) = backend.write() {
            b.core.reset_device();
            b.mem = None;
        }
        info!("vhost-user-vsock: front-end disconnected");
    }
}
