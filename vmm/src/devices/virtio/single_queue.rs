//! Activation and event handling shared by devices with one virtqueue (rng, blk): unpacking
//! the activation context, watching the queue's notification eventfd on the event thread once
//! the driver is ready, ignoring notifications that outlive a reset, and raising the interrupt.

use std::io;
use std::sync::Arc;

use event_manager::{EventOps, Events};
use log::warn;
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateContext, ActivateError, IrqKind, IrqTrigger};
use crate::memory::GuestMemoryMmap;

const ACTIVATE_EVENT: u32 = 0;
const QUEUE_EVENT: u32 = 1;

/// The driver's queue, once the device is activated.
pub struct ActiveQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    queue_evt: EventFd,
    irq: Arc<IrqTrigger>,
}

impl ActiveQueue {
    /// Tells the driver that used buffers are waiting.
    pub fn signal_used(&self, device: &str) {
        if let Err(e) = self.irq.trigger(IrqKind::Vring) {
            warn!("{device}: cannot raise interrupt: {e}");
        }
    }
}

/// The activation state of a one-queue device.
pub struct SingleQueue {
    device: &'static str,
    activate_evt: EventFd,
    active: Option<ActiveQueue>,
}

impl SingleQueue {
    /// `device` names the device in log messages.
    pub fn new(device: &'static str) -> io::Result<Self> {
        Ok(Self {
            device,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            active: None,
        })
    }

    /// Takes the driver's queue; the event thread starts watching it (see [`Self::handle`]).
    pub fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let got = ctx.queues.len();
        let (Some(queue), Some(queue_evt)) = (
            ctx.queues.into_iter().next(),
            ctx.queue_evts.into_iter().next(),
        ) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        self.active = Some(ActiveQueue {
            mem: ctx.mem,
            queue,
            queue_evt,
            irq: ctx.irq,
        });
        self.activate_evt.write(1).map_err(ActivateError::Event)
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub fn active_mut(&mut self) -> Option<&mut ActiveQueue> {
        self.active.as_mut()
    }

    /// Forgets the queue after a driver reset.
    pub fn reset(&mut self) {
        self.active = None;
    }

    /// Registers the activation event (from `MutEventSubscriber::init`).
    pub fn init(&self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE_EVENT,
            EventSet::IN,
        )) {
            warn!("{}: cannot watch the activation event: {e}", self.device);
        }
    }

    /// Handles an event of this device (from `MutEventSubscriber::process`); returns true when
    /// the driver notified the queue and the device should serve it.
    pub fn handle(&mut self, events: Events, ops: &mut EventOps) -> bool {
        match events.data() {
            ACTIVATE_EVENT => {
                let _ = self.activate_evt.read();
                if let Some(active) = &self.active {
                    let queue = Events::with_data(&active.queue_evt, QUEUE_EVENT, EventSet::IN);
                    if let Err(e) = ops.add(queue) {
                        warn!("{}: cannot watch the queue: {e}", self.device);
                    }
                }
                false
            }
            QUEUE_EVENT => match &self.active {
                Some(active) => {
                    let _ = active.queue_evt.read();
                    true
                }
                None => {
                    // Reset while the event was pending: stop watching the stale eventfd.
                    let _ = ops.remove(events);
                    false
                }
            },
            other => {
                warn!("{}: unexpected event {other}", self.device);
                false
            }
        }
    }
}
