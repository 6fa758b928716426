//! The virtio-mmio transport, version 2 (virtio 1.2 specification, section 4.2.2).
//!
//! Every register access comes from the guest: unknown offsets, odd sizes and writes in the
//! wrong device state are ignored (and logged), never trusted.

use std::sync::{Arc, Mutex};

use log::warn;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateContext, IrqKind, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::{lock, BusDevice};
use crate::memory::GuestMemoryMmap;

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, where KVM ioeventfds are attached.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4350_5343; // "CSPC"
const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Device status bits (virtio 1.2 section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Errors while creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// A queue size the device declared is not valid for a split virtqueue.
    #[error("invalid queue size {0}")]
    QueueSize(u16),
    /// Creating a queue notification eventfd failed.
    #[error("cannot create eventfd")]
    EventFd(#[source] std::io::Error),
}

/// One virtio device behind its virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    irq: Arc<IrqTrigger>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    device_status: u32,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq: Arc<IrqTrigger>,
    ) -> Result<Self, MmioError> {
        let sizes = lock(&device).queue_max_sizes().to_vec();
        let queues = sizes
            .iter()
            .map(|&size| Queue::new(size).map_err(|_| MmioError::QueueSize(size)))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_evts = sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            irq,
            queues,
            queue_evts,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            device_status: 0,
            config_generation: 0,
        })
    }

    /// The per-queue notification eventfds, to be registered with KVM as ioeventfds on
    /// [`QUEUE_NOTIFY_OFFSET`] with the queue index as data.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt line.
    pub fn irq(&self) -> &Arc<IrqTrigger> {
        &self.irq
    }

    /// The device's current status register (for tests and diagnostics).
    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue configuration may change only while the driver is setting the device up.
    fn queue_config_allowed(&self) -> bool {
        self.device_status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.queue_config_allowed() {
            warn!(
                "virtio-mmio: queue register write in device status {:#x} ignored",
                self.device_status
            );
            return;
        }
        match self.selected_queue() {
            Some(queue) if !queue.ready() => f(queue),
            Some(_) => warn!("virtio-mmio: write to a queue that is already ready ignored"),
            None => warn!("virtio-mmio: write to nonexistent queue ignored"),
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let device = lock(&self.device);
        match offset {
            0x000 => MAGIC_VALUE,
            0x004 => MMIO_VERSION,
            0x008 => device.device_type(),
            0x00c => VENDOR_ID,
            0x010 => match self.device_features_select {
                0 => device.avail_features() as u32,
                1 => (device.avail_features() >> 32) as u32,
                _ => 0,
            },
            0x034 => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            0x044 => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.ready())),
            0x060 => self.irq.status(),
            0x070 => self.device_status,
            0x0fc => self.config_generation,
            _ => {
                warn!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x014 => self.device_features_select = value,
            0x020 => self.write_driver_features(value),
            0x024 => self.driver_features_select = value,
            0x030 => self.queue_select = value,
            0x038 => self.update_queue(|q| q.set_size(value as u16)),
            0x044 => self.update_queue(|q| q.set_ready(value == 1)),
            0x050 => self.notify_queue(value),
            0x064 => self.irq.ack(value),
            0x070 => self.write_status(value),
            0x080 => self.update_queue(|q| q.set_desc_table_address(Some(value), None)),
            0x084 => self.update_queue(|q| q.set_desc_table_address(None, Some(value))),
            0x090 => self.update_queue(|q| q.set_avail_ring_address(Some(value), None)),
            0x094 => self.update_queue(|q| q.set_avail_ring_address(None, Some(value))),
            0x0a0 => self.update_queue(|q| q.set_used_ring_address(Some(value), None)),
            0x0a4 => self.update_queue(|q| q.set_used_ring_address(None, Some(value))),
            _ => warn!("virtio-mmio: write of unknown register {offset:#x} ignored"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.device_status & (status::FEATURES_OK | status::DRIVER_OK) != 0
            || self.device_status & status::DRIVER == 0
        {
            warn!("virtio-mmio: driver features written in the wrong state; ignored");
            return;
        }
        let shift = match self.driver_features_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let mask = 0xffff_ffffu64 << shift;
        self.driver_features = (self.driver_features & !mask) | (u64::from(value) << shift);
    }

    fn notify_queue(&mut self, index: u32) {
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    warn!("virtio-mmio: cannot signal queue {index}: {e}");
                }
            }
            None => warn!("virtio-mmio: notification for nonexistent queue {index} ignored"),
        }
    }

    fn write_status(&mut self, value: u32) {
        use status::*;
        if value == 0 {
            self.reset();
            return;
        }
        let current = self.device_status;
        // Bits may only be added, one setup step at a time (virtio 1.2 section 3.1.1).
        if value & current != current {
            warn!("virtio-mmio: status {value:#x} clears bits of {current:#x}; ignored");
            return;
        }
        let added = value & !current;
        match added {
            ACKNOWLEDGE if current == 0 => self.device_status = value,
            DRIVER if current == ACKNOWLEDGE => self.device_status = value,
            FEATURES_OK if current == ACKNOWLEDGE | DRIVER => self.accept_features(value),
            DRIVER_OK if current == ACKNOWLEDGE | DRIVER | FEATURES_OK => self.activate(value),
            FAILED => self.device_status = value,
            _ => warn!("virtio-mmio: status transition {current:#x} -> {value:#x} ignored"),
        }
    }

    fn accept_features(&mut self, value: u32) {
        let mut device = lock(&self.device);
        let offered = device.avail_features();
        if self.driver_features & !offered != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            warn!(
                "virtio-mmio: driver features {:#x} not acceptable (offered {offered:#x})",
                self.driver_features
            );
            // FEATURES_OK stays clear: the driver sees the failure when it reads the status back.
            return;
        }
        device.ack_features(self.driver_features);
        self.device_status = value;
    }

    fn activate(&mut self, value: u32) {
        if let Some(index) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem))
        {
            warn!("virtio-mmio: queue {index} is not valid in guest memory; device failed");
            self.fail();
            return;
        }
        let queue_evts = match self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(evts) => evts,
            Err(e) => {
                warn!("virtio-mmio: cannot clone queue eventfds: {e}");
                self.fail();
                return;
            }
        };
        // The device gets its own copy of each queue; the transport keeps the registers' view.
        let queues = match self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(queues) => queues,
            Err(e) => {
                warn!("virtio-mmio: invalid queue configuration: {e}");
                self.fail();
                return;
            }
        };
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            irq: self.irq.clone(),
        };
        let result = lock(&self.device).activate(ctx);
        match result {
            Ok(()) => self.device_status = value,
            Err(e) => {
                warn!("virtio-mmio: device activation failed: {e}");
                self.fail();
            }
        }
    }

    fn fail(&mut self) {
        self.device_status |= status::DEVICE_NEEDS_RESET;
        if let Err(e) = self.irq.trigger(IrqKind::Config) {
            warn!("virtio-mmio: cannot raise config interrupt: {e}");
        }
    }

    fn reset(&mut self) {
        let mut device = lock(&self.device);
        if device.is_activated() && !device.reset() {
            drop(device);
            warn!("virtio-mmio: device cannot be reset");
            self.fail();
            return;
        }
        drop(device);
        for queue in &mut self.queues {
            queue.reset();
        }
        self.irq.ack(u32::MAX);
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.device_status = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let len = data.len();
        match <&mut [u8; 4]>::try_from(data) {
            Ok(word) if offset % 4 == 0 => *word = self.read_register(offset).to_le_bytes(),
            Ok(word) => {
                warn!("virtio-mmio: unaligned register read at {offset:#x}");
                word.fill(0);
            }
            Err(_) => warn!("virtio-mmio: register read of {len} bytes at {offset:#x}"),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(word)),
            _ => warn!(
                "virtio-mmio: register write of {} bytes at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use vm_memory::GuestAddress;

    struct Dummy {
        activated: Option<ActivateContext>,
        acked: u64,
        resettable: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 32]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0x5
        }
        fn ack_features(&mut self, features: u64) {
            self.acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xaa, 0xbb, 0xcc, 0xdd], offset, data);
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            self.activated = Some(ctx);
            Ok(())
        }
        fn is_activated(&self) -> bool {
            self.activated.is_some()
        }
        fn reset(&mut self) -> bool {
            if self.resettable {
                self.activated = None;
            }
            self.resettable
        }
    }

    fn setup(resettable: bool) -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy {
            activated: None,
            acked: 0,
            resettable,
        }));
        let irq = Arc::new(IrqTrigger::new().unwrap());
        (MmioTransport::new(mem, dev.clone(), irq).unwrap(), dev)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport) {
        w(t, 0x70, status::ACKNOWLEDGE);
        w(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(t, 0x24, 0);
        w(t, 0x20, 0x1);
        w(t, 0x24, 1);
        w(t, 0x20, 0x1);
        w(
            t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, base: u32) {
        w(t, 0x30, index);
        w(t, 0x38, 16);
        w(t, 0x80, base);
        w(t, 0x84, 0);
        w(t, 0x90, base + 0x1000);
        w(t, 0x94, 0);
        w(t, 0xa0, base + 0x2000);
        w(t, 0xa4, 0);
        w(t, 0x44, 1);
    }

    const ALL_OK: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identification_registers() {
        let (mut t, _) = setup(true);
        assert_eq!(r(&mut t, 0x0), MAGIC_VALUE);
        assert_eq!(r(&mut t, 0x4), 2);
        assert_eq!(r(&mut t, 0x8), 42);
        w(&mut t, 0x14, 0);
        assert_eq!(r(&mut t, 0x10), 0x5);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1);
        w(&mut t, 0x14, 7);
        assert_eq!(r(&mut t, 0x10), 0);
        w(&mut t, 0x30, 1);
        assert_eq!(r(&mut t, 0x34), 32);
        w(&mut t, 0x30, 9);
        assert_eq!(r(&mut t, 0x34), 0);
    }

    #[test]
    fn full_setup_activates_device_with_queues() {
        let (mut t, dev) = setup(true);
        negotiate(&mut t);
        assert_eq!(dev.lock().unwrap().acked, VIRTIO_F_VERSION_1 | 1);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        w(&mut t, 0x70, ALL_OK);
        assert_eq!(r(&mut t, 0x70), ALL_OK);
        let d = dev.lock().unwrap();
        let ctx = d.activated.as_ref().unwrap();
        assert_eq!(ctx.queues.len(), 2);
        assert_eq!(ctx.queues[1].desc_table(), 0x2_0000);
        assert_eq!(ctx.queue_evts.len(), 2);
    }

    #[test]
    fn queue_notify_signals_the_queue_eventfd() {
        let (mut t, _) = setup(true);
        w(&mut t, 0x50, 1);
        assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
        w(&mut t, 0x50, 5); // nonexistent queue: ignored
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (mut t, dev) = setup(true);
        w(&mut t, 0x70, status::ACKNOWLEDGE);
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, 0x20, 0x1);
        w(
            &mut t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, 0x70) & status::FEATURES_OK, 0);
        assert_eq!(dev.lock().unwrap().acked, 0);
    }

    #[test]
    fn features_not_offered_are_refused() {
        let (mut t, _) = setup(true);
        w(&mut t, 0x70, status::ACKNOWLEDGE);
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, 0x20, 0x2);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 0x1);
        w(
            &mut t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&mut t, 0x70) & status::FEATURES_OK, 0);
    }

    #[test]
    fn out_of_order_status_and_queue_writes_are_ignored() {
        let (mut t, dev) = setup(true);
        w(&mut t, 0x70, ALL_OK);
        assert_eq!(r(&mut t, 0x70), 0);
        // queue writes before FEATURES_OK do nothing
        setup_queue(&mut t, 0, 0x1_0000);
        assert_eq!(r(&mut t, 0x44), 0);
        negotiate(&mut t);
        w(&mut t, 0x70, ALL_OK);
        assert!(dev.lock().unwrap().is_activated());
        // after DRIVER_OK, queue registers are frozen
        w(&mut t, 0x30, 0);
        w(&mut t, 0x38, 8);
        assert_eq!(
            dev.lock().unwrap().activated.as_ref().unwrap().queues[0].size(),
            16
        );
    }

    #[test]
    fn invalid_queue_addresses_fail_activation() {
        let (mut t, dev) = setup(true);
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0xfff0_0000); // outside the 1 MiB of guest memory
        w(&mut t, 0x70, ALL_OK);
        assert!(!dev.lock().unwrap().is_activated());
        assert_ne!(r(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(r(&mut t, 0x60) & 0x2, 0x2);
    }

    #[test]
    fn reset_returns_to_initial_state() {
        let (mut t, dev) = setup(true);
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1_0000);
        w(&mut t, 0x70, ALL_OK);
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x70), 0);
        assert!(!dev.lock().unwrap().is_activated());
        w(&mut t, 0x30, 0);
        assert_eq!(r(&mut t, 0x44), 0);
    }

    #[test]
    fn device_that_cannot_reset_needs_reset() {
        let (mut t, _) = setup(false);
        negotiate(&mut t);
        w(&mut t, 0x70, ALL_OK);
        w(&mut t, 0x70, 0);
        assert_ne!(r(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn config_space_and_odd_accesses_are_bounded() {
        let (mut t, _) = setup(true);
        let mut b = [0u8; 2];
        t.read(0x101, &mut b);
        assert_eq!(b, [0xbb, 0xcc]);
        let mut b = [0xffu8; 2];
        t.read(0x10, &mut b); // 2-byte register read: ignored
        assert_eq!(b, [0xff, 0xff]);
        let mut b = [0u8; 4];
        t.read(0x2, &mut b); // unaligned
        assert_eq!(b, [0; 4]);
        t.write(0x70, &[1]); // 1-byte register write: ignored
        assert_eq!(r(&mut t, 0x70), 0);
        assert_eq!(r(&mut t, 0xf00), 0);
        t.read(u64::MAX - 3, &mut b);
    }

    #[test]
    fn interrupt_ack_clears_status() {
        let (mut t, _) = setup(true);
        t.irq().trigger(IrqKind::Vring).unwrap();
        assert_eq!(r(&mut t, 0x60), 1);
        w(&mut t, 0x64, 1);
        assert_eq!(r(&mut t, 0x60), 0);
    }
}
