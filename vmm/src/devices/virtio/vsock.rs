//! virtio-vsock (virtio 1.2 section 5.10) on the VMM's event thread: the thin glue between the
//! virtio-mmio transport, the event loop and the device core of the `capsule-vsock` crate, which
//! does all packet, connection and host-socket work.

use std::io;
use std::sync::Arc;

use capsule_vsock::muxer::{write_transport_reset, MuxerError};
use capsule_vsock::{Counters, VsockConfig, VsockCore};
use event_manager::{EventOps, Events, MutEventSubscriber};
use log::warn;
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, IrqKind, IrqTrigger,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemoryMmap;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EV: usize = 2;

const ACTIVATE_EVENT: u32 = 0;
const RX_EVENT: u32 = 1;
const TX_EVENT: u32 = 2;
const EV_EVENT: u32 = 3;
const BACKEND_EVENT: u32 = 4;
const TRANSPORT_RESET_EVENT: u32 = 5;

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    irq: Arc<IrqTrigger>,
}

/// The vsock device: one guest CID, one hybrid Unix socket.
pub struct Vsock {
    core: VsockCore,
    config_space: [u8; 8],
    activate_evt: EventFd,
    transport_reset_evt: EventFd,
    active: Option<Active>,
    acked_features: u64,
}

impl Vsock {
    /// Creates the device and listens on `cfg.uds_path`.
    pub fn new(cfg: VsockConfig) -> Result<Self, MuxerError> {
        let config_space = cfg.guest_cid.to_le_bytes();
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(MuxerError::Epoll);
        Ok(Self {
            core: VsockCore::new(cfg)?,
            config_space,
            activate_evt: evt()?,
            transport_reset_evt: evt()?,
            active: None,
            acked_features: 0,
        })
    }

    /// Counters of the device core (drops, resets, traffic).
    pub fn counters(&self) -> Counters {
        self.core.counters()
    }

    /// An eventfd that, when written, resets the transport: every connection is closed and the
    /// guest gets a TRANSPORT_RESET event (as after a VM reset or a restore).
    pub fn transport_reset_trigger(&self) -> io::Result<EventFd> {
        self.transport_reset_evt.try_clone()
    }

    /// Runs the device core over the queues and raises the interrupt when a buffer was used.
    fn work(&mut self, tx: bool, backend: bool) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        if backend {
            self.core.process_backend();
        }
        // Host events can also free tx buffers the host has now read.
        if tx || backend {
            used |= self.core.process_tx(&active.mem, &mut active.queues[TX]);
        }
        used |= self.core.process_rx(&active.mem, &mut active.queues[RX]);
        if used {
            if let Err(e) = active.irq.trigger(IrqKind::Vring) {
                warn!("virtio-vsock: cannot raise interrupt: {e}");
            }
        }
    }

    fn transport_reset(&mut self) {
        self.core.reset();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if write_transport_reset(&active.mem, &mut active.queues[EV]) {
            if let Err(e) = active.irq.trigger(IrqKind::Vring) {
                warn!("virtio-vsock: cannot raise interrupt: {e}");
            }
        } else {
            warn!("virtio-vsock: no event buffer for the transport reset");
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != 3 || ctx.queue_evts.len() != 3 {
            return Err(ActivateError::QueueCount {
                expected: 3,
                got: ctx.queues.len(),
            });
        }
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
        // The driver reset the device: its connections are gone, so are the host sides.
        self.core.reset_device();
        self.active = None;
        self.acked_features = 0;
        true
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for (fd, data) in [
            (&self.activate_evt, ACTIVATE_EVENT),
            (&self.transport_reset_evt, TRANSPORT_RESET_EVENT),
        ] {
            if let Err(e) = ops.add(Events::with_data(fd, data, EventSet::IN)) {
                warn!("virtio-vsock: cannot watch event {data}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_EVENT => {
                let _ = self.activate_evt.read();
                let Some(active) = &self.active else {
                    return;
                };
                let watch = [
                    (RX_EVENT, &active.queue_evts[RX]),
                    (TX_EVENT, &active.queue_evts[TX]),
                    (EV_EVENT, &active.queue_evts[EV]),
                ];
                for (data, fd) in watch {
                    if let Err(e) = ops.add(Events::with_data(fd, data, EventSet::IN)) {
                        warn!("virtio-vsock: cannot watch queue event {data}: {e}");
                    }
                }
                if let Err(e) = ops.add(Events::with_data(&self.core, BACKEND_EVENT, EventSet::IN))
                {
                    warn!("virtio-vsock: cannot watch the host sockets: {e}");
                }
                // Host clients may have connected before the driver was ready.
                self.work(false, true);
            }
            RX_EVENT | TX_EVENT | EV_EVENT | BACKEND_EVENT => {
                let Some(active) = &self.active else {
                    // Reset while the event was pending: stop watching the stale source.
                    let _ = ops.remove(events);
                    return;
                };
                match events.data() {
                    RX_EVENT => {
                        let _ = active.queue_evts[RX].read();
                        self.work(false, false);
                    }
                    TX_EVENT => {
                        let _ = active.queue_evts[TX].read();
                        self.work(true, false);
                    }
                    // Event buffers are only used for TRANSPORT_RESET.
                    EV_EVENT => {
                        let _ = active.queue_evts[EV].read();
                    }
                    _ => self.work(false, true),
                }
            }
            TRANSPORT_RESET_EVENT => {
                let _ = self.transport_reset_evt.read();
                self.transport_reset();
            }
            other => warn!("virtio-vsock: unexpected event {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsule_vsock::mock::{MockDriver, Q};
    use capsule_vsock::proto::{op, Header, HDR_LEN, HOST_CID, TYPE_STREAM};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use virtio_queue::QueueT;

    fn temp_path(tag: &str) -> std::path::PathBuf {
        let p =
            std::env::temp_dir().join(format!("capsule-vmm-vsock-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn activate(dev: &mut Vsock, drv: &mut MockDriver) -> Arc<IrqTrigger> {
        let take = |q: &mut Queue| std::mem::replace(q, Queue::new(QUEUE_SIZE).unwrap());
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let ctx = ActivateContext {
            mem: drv.mem.clone(),
            queues: vec![take(&mut drv.rxq), take(&mut drv.txq), take(&mut drv.evq)],
            queue_evts: (0..3)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
            irq: irq.clone(),
        };
        dev.activate(ctx).unwrap();
        irq
    }

    #[test]
    fn config_space_holds_the_guest_cid() {
        let path = temp_path("cfg");
        let dev = Vsock::new(VsockConfig::new(0x1_0000_0007, &path));
        assert!(dev.is_err(), "CIDs above u32 are refused");
        let dev = Vsock::new(VsockConfig::new(42, &path)).unwrap();
        let mut b = [0u8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 42);
        let mut b = [0xffu8; 4];
        dev.read_config(4, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(dev.device_type(), device_type::VSOCK);
        assert_eq!(dev.queue_max_sizes().len(), 3);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn host_connect_reaches_the_guest_and_reset_closes_it() {
        let path = temp_path("conn");
        let mut dev = Vsock::new(VsockConfig::new(3, &path)).unwrap();
        let mut drv = MockDriver::new(16, 4096 + HDR_LEN as u32).unwrap();
        drv.post_rx(16);
        let ev_buf = drv.ev.buf_addr(0);
        drv.push_chain(Q::Ev, &[(ev_buf, 8, true)]).unwrap();
        let irq = activate(&mut dev, &mut drv);
        assert!(dev.is_activated());

        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"CONNECT 1024\n").unwrap();
        let mut pkts = Vec::new();
        for _ in 0..10 {
            dev.work(false, true);
            pkts.extend(drv.take_rx());
        }
        let req = pkts.iter().find(|(h, _)| h.op == op::REQUEST).unwrap().0;
        assert_eq!((req.dst_cid, req.dst_port), (3, 1024));
        assert_eq!(irq.status() & 1, 1, "used-buffer interrupt raised");

        // The guest accepts through the tx queue: the client gets OK.
        let resp = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: req.src_port,
            type_: TYPE_STREAM,
            op: op::RESPONSE,
            buf_alloc: 65536,
            ..Header::default()
        };
        // The device owns the queues now; the mock still writes the rings in guest memory.
        drv.send(&resp, &[], false).unwrap();
        dev.work(true, false);
        let mut line = [0u8; 64];
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let n = client.read(&mut line).unwrap();
        assert_eq!(
            std::str::from_utf8(&line[..n]).unwrap(),
            format!("OK {}\n", req.src_port)
        );

        // Transport reset: the client is closed and the guest gets the event.
        dev.transport_reset();
        assert_eq!(client.read(&mut line).unwrap(), 0);
        let used = drv.take_used(Q::Ev);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].len, 4);

        assert!(dev.reset());
        assert!(!dev.is_activated());
        let _ = std::fs::remove_file(&path);
    }
}
