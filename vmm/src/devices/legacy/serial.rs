//! The 16550A UART at 0x3f8 / IRQ 4: the guest console.

use std::io::{self, Write};

use log::warn;
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// I/O port base of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of UART registers.
pub const COM1_PORT_LEN: u64 = 8;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u32 = 4;

/// Where the guest console goes. Writes are unbuffered so nothing the guest printed is lost
/// if the VMM is killed.
pub type ConsoleSink = Box<dyn Write + Send>;

/// The serial console device.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, NoEvents, ConsoleSink>,
}

impl SerialConsole {
    pub fn new(interrupt: EventFdTrigger, out: ConsoleSink) -> Self {
        Self {
            uart: Serial::new(interrupt, out),
        }
    }

    /// Queues host input for the guest to read; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> io::Result<usize> {
        self.uart
            .enqueue_raw_bytes(input)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.uart.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(offset, *byte) {
                // Losing console output must not stop the guest; say so once per failure.
                warn!("serial console: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_sink_and_input_is_readable() {
        let out = Shared::default();
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut serial = SerialConsole::new(irq, Box::new(out.clone()));
        for b in b"ok\n" {
            serial.write(0, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"ok\n");
        serial.enqueue_input(b"x").unwrap();
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rx = [0u8];
        serial.read(0, &mut rx);
        assert_eq!(rx[0], b'x');
        let mut wide = [0u8; 2];
        serial.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }
}
