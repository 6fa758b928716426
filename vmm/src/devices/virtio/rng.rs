//! virtio-rng (entropy device, virtio 1.2 section 5.4): fills guest buffers from the host's
//! getrandom(2).

use std::io;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::warn;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::single_queue::SingleQueue;
use super::{device_type, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};

const QUEUE_SIZE: u16 = 256;
/// Upper bound on the entropy handed out per request, so one request cannot make the VMM
/// spend unbounded time.
const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

const NAME: &str = "virtio-rng";

/// The entropy device.
pub struct Rng {
    queue: SingleQueue,
    acked_features: u64,
    /// Bytes handed to the guest, for diagnostics.
    bytes_served: u64,
}

impl Rng {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            queue: SingleQueue::new(NAME)?,
            acked_features: 0,
            bytes_served: 0,
        })
    }

    pub fn bytes_served(&self) -> u64 {
        self.bytes_served
    }

    /// Serves every available request; returns whether any buffer was used.
    fn process_queue(&mut self) -> bool {
        let Some(active) = self.queue.active_mut() else {
            return false;
        };
        let mut used_any = false;
        let mem = &active.mem;
        loop {
            let chain = match active.queue.iter(mem) {
                Ok(mut iter) => iter.next(),
                Err(e) => {
                    warn!("virtio-rng: cannot read the available ring: {e}");
                    return used_any;
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0usize;
            let mut buf = vec![0u8; 4096];
            for desc in chain.writable() {
                let mut remaining =
                    (desc.len() as usize).min(MAX_BYTES_PER_REQUEST.saturating_sub(written));
                let mut addr = desc.addr();
                while remaining > 0 {
                    let n = remaining.min(buf.len());
                    if fill_random(&mut buf[..n]).is_err()
                        || mem.write_slice(&buf[..n], addr).is_err()
                    {
                        warn!("virtio-rng: cannot fill buffer at {:#x}", addr.0);
                        remaining = 0;
                        continue;
                    }
                    written += n;
                    remaining -= n;
                    addr = match addr.0.checked_add(n as u64) {
                        Some(a) => vm_memory::GuestAddress(a),
                        None => break,
                    };
                }
            }
            if let Err(e) = active.queue.add_used(mem, head, written as u32) {
                warn!("virtio-rng: cannot return buffer {head}: {e}");
                break;
            }
            self.bytes_served += written as u64;
            used_any = true;
        }
        used_any
    }
}

fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for the whole call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // The entropy device has no configuration space.
        data.fill(0);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.queue.activate(ctx)
    }

    fn is_activated(&self) -> bool {
        self.queue.is_active()
    }

    fn reset(&mut self) -> bool {
        self.queue.reset();
        self.acked_features = 0;
        true
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        self.queue.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.queue.handle(events, ops) && self.process_queue() {
            if let Some(active) = self.queue.active_mut() {
                active.signal_used(NAME);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::IrqTrigger;
    use crate::memory::GuestMemoryMmap;
    use std::sync::Arc;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    fn activate(rng: &mut Rng, mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) {
        let ctx = ActivateContext {
            mem: mem.clone(),
            queues: vec![vq.create_queue().unwrap()],
            queue_evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            irq: Arc::new(IrqTrigger::new().unwrap()),
        };
        rng.activate(ctx).unwrap();
    }

    #[test]
    fn fills_writable_buffers_and_reports_length() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [
            RawDescriptor::from(Descriptor::new(0x8000, 100, 0x1 | 0x2, 1)),
            RawDescriptor::from(Descriptor::new(0x9000, 28, 0x2, 0)),
        ];
        vq.build_desc_chain(&descs).unwrap();
        let mut rng = Rng::new().unwrap();
        activate(&mut rng, &mem, &vq);
        assert!(rng.process_queue());
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), 128);
        assert_eq!(rng.bytes_served(), 128);
        let mut out = [0u8; 100];
        mem.read_slice(&mut out, GuestAddress(0x8000)).unwrap();
        assert_ne!(out, [0u8; 100], "buffer must hold random bytes");
    }

    #[test]
    fn read_only_and_out_of_memory_descriptors_are_not_written() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [
            RawDescriptor::from(Descriptor::new(0x8000, 64, 0x1, 1)), // device-readable
            RawDescriptor::from(Descriptor::new(0xff_f000, 64, 0x2, 0)), // beyond memory
        ];
        vq.build_desc_chain(&descs).unwrap();
        let mut rng = Rng::new().unwrap();
        activate(&mut rng, &mem, &vq);
        assert!(rng.process_queue());
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0);
        let mut out = [0u8; 64];
        mem.read_slice(&mut out, GuestAddress(0x8000)).unwrap();
        assert_eq!(out, [0u8; 64]);
    }

    #[test]
    fn requests_are_capped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [RawDescriptor::from(Descriptor::new(
            0x10_0000, 0x20_0000, 0x2, 0,
        ))];
        vq.build_desc_chain(&descs).unwrap();
        let mut rng = Rng::new().unwrap();
        activate(&mut rng, &mem, &vq);
        rng.process_queue();
        assert_eq!(
            vq.used().ring().ref_at(0).unwrap().load().len() as usize,
            MAX_BYTES_PER_REQUEST
        );
    }
}
