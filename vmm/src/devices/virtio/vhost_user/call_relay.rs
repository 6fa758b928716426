//! The event-loop side of a vhost-user device: the call eventfds the backend signals when it
//! has used buffers, turned into the transport's used-buffer interrupt (InterruptStatus bit
//! and irqfd, [`IrqTrigger::trigger`]); and the backend's socket, watched for a hang-up.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events};
use log::warn;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{IrqKind, IrqTrigger};

/// Event data: the activation event; the backend's socket; call eventfd `i` is `CALL_BASE + i`.
const ACTIVATE_EVENT: u32 = 0;
const HANGUP_EVENT: u32 = 1;
const CALL_BASE: u32 = 16;

/// Call eventfds of one device, and where their signals go.
pub struct CallRelay {
    device: &'static str,
    calls: Vec<EventFd>,
    activate_evt: EventFd,
    /// The backend's control socket, watched for a hang-up.
    backend_fd: RawFd,
    /// The interrupt of the active device; `None` before activation and after a reset.
    irq: Option<Arc<IrqTrigger>>,
    watching_calls: bool,
}

impl CallRelay {
    /// One call eventfd per queue; `device` names the device in log messages, `backend_fd` is
    /// the backend's control socket (kept open by the device for as long as this relay lives).
    pub fn new(device: &'static str, queues: usize, backend_fd: RawFd) -> io::Result<Self> {
        Ok(CallRelay {
            device,
            calls: (0..queues)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<io::Result<_>>()?,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            backend_fd,
            irq: None,
            watching_calls: false,
        })
    }

    /// The call eventfds, one per queue, for SET_VRING_CALL.
    pub fn calls(&self) -> &[EventFd] {
        &self.calls
    }

    /// From now on, a call raises `irq` (the event thread starts watching the call eventfds).
    pub fn start(&mut self, irq: Arc<IrqTrigger>) -> io::Result<()> {
        self.irq = Some(irq);
        self.activate_evt.write(1)
    }

    /// After a driver reset: calls are dropped until the next [`Self::start`].
    pub fn stop(&mut self) {
        self.irq = None;
    }

    /// Registers the activation event and the backend's socket (from
    /// `MutEventSubscriber::init`).
    pub fn init(&self, ops: &mut EventOps) {
        let activate = Events::with_data(&self.activate_evt, ACTIVATE_EVENT, EventSet::IN);
        if let Err(e) = ops.add(activate) {
            warn!("{}: cannot watch the activation event: {e}", self.device);
        }
        // Only a hang-up: the replies on this socket are read by the request that awaits them.
        let hangup = Events::with_data_raw(self.backend_fd, HANGUP_EVENT, EventSet::READ_HANG_UP);
        if let Err(e) = ops.add(hangup) {
            warn!("{}: cannot watch the vhost-user socket: {e}", self.device);
        }
    }

    /// Handles an event of this relay (from `MutEventSubscriber::process`).
    pub fn handle(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE_EVENT => {
                let _ = self.activate_evt.read();
                if !self.watching_calls {
                    for (i, call) in self.calls.iter().enumerate() {
                        let ev = Events::with_data(call, CALL_BASE + i as u32, EventSet::IN);
                        if let Err(e) = ops.add(ev) {
                            warn!("{}: cannot watch call eventfd {i}: {e}", self.device);
                        }
                    }
                    self.watching_calls = true;
                }
            }
            HANGUP_EVENT => {
                warn!(
                    "{}: the vhost-user backend hung up; the device no longer answers",
                    self.device
                );
                let _ = ops.remove(events);
            }
            data if data >= CALL_BASE => {
                let Some(call) = self.calls.get((data - CALL_BASE) as usize) else {
                    warn!("{}: unexpected event {data}", self.device);
                    return;
                };
                let _ = call.read();
                if let Some(irq) = &self.irq {
                    if let Err(e) = irq.trigger(IrqKind::Vring) {
                        warn!("{}: cannot raise interrupt: {e}", self.device);
                    }
                }
            }
            other => warn!("{}: unexpected event {other}", self.device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::Mutex;

    struct Relayed(CallRelay);

    impl MutEventSubscriber for Relayed {
        fn init(&mut self, ops: &mut EventOps) {
            self.0.init(ops);
        }
        fn process(&mut self, events: Events, ops: &mut EventOps) {
            self.0.handle(events, ops);
        }
    }

    #[test]
    fn a_call_sets_the_used_buffer_bit_and_injects() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&a);
        let relay = Arc::new(Mutex::new(Relayed(CallRelay::new("test", 2, fd).unwrap())));
        let mut events = EventManager::<Arc<Mutex<Relayed>>>::new().unwrap();
        events.add_subscriber(relay.clone());
        let irq = Arc::new(IrqTrigger::new().unwrap());

        // Before activation a call does nothing.
        relay.lock().unwrap().0.calls()[1].write(1).unwrap();
        events.run_with_timeout(0).unwrap();
        assert_eq!(irq.status(), 0);

        relay.lock().unwrap().0.start(irq.clone()).unwrap();
        events.run_with_timeout(0).unwrap();
        // The pending call is seen once the relay watches the call eventfds.
        events.run_with_timeout(0).unwrap();
        assert_eq!(irq.status(), 0x1, "InterruptStatus shows a used buffer");
        assert_eq!(irq.eventfd().read().unwrap(), 1, "the irqfd was signalled");

        irq.ack(0x1);
        relay.lock().unwrap().0.stop();
        relay.lock().unwrap().0.calls()[0].write(1).unwrap();
        events.run_with_timeout(0).unwrap();
        assert_eq!(irq.status(), 0, "no interrupt after a reset");
    }
}
