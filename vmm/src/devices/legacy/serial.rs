//! The 16550A UART at 0x3f8 / IRQ 4: the guest console.

use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::warn;
use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::devices::bus::{lock, BusDevice};

/// I/O port base of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of UART registers.
pub const COM1_PORT_LEN: u64 = 8;
/// COM1's ISA IRQ.
pub const COM1_IRQ: u32 = 4;

/// Where the guest console goes. Writes are unbuffered so nothing the guest printed is lost
/// if the VMM is killed.
pub type ConsoleSink = Box<dyn Write + Send>;

/// Signals when the guest has drained the receive FIFO, so host input can flow again.
pub struct InputRearm(EventFd);

impl SerialEvents for InputRearm {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.0.write(1) {
            warn!("serial console: cannot signal an empty input buffer: {e}");
        }
    }
}

/// The serial console device.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, InputRearm, ConsoleSink>,
}

impl SerialConsole {
    /// The console and the eventfd that fires whenever the guest empties its receive FIFO.
    pub fn new(interrupt: EventFdTrigger, out: ConsoleSink) -> io::Result<(Self, EventFd)> {
        let rearm = EventFd::new(libc::EFD_NONBLOCK)?;
        let uart = Serial::with_events(interrupt, InputRearm(rearm.try_clone()?), out);
        Ok((Self { uart }, rearm))
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

/// Feeds host input (the terminal `capsule run` was started from) into the console's receive
/// FIFO on the event thread. When the FIFO is full, input waits in the host until the guest has
/// read what it has; at end of input, forwarding stops.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialConsole>>,
    input: File,
    rearm: EventFd,
    watching: bool,
    ended: bool,
}

const INPUT_EVENT: u32 = 0;
const REARM_EVENT: u32 = 1;

/// What one read from the input did.
#[derive(Debug, PartialEq, Eq)]
enum Pumped {
    Bytes(usize),
    FifoFull,
    Ended,
}

impl ConsoleInput {
    pub fn new(serial: Arc<Mutex<SerialConsole>>, input: File, rearm: EventFd) -> Self {
        Self {
            serial,
            input,
            rearm,
            watching: false,
            ended: false,
        }
    }

    /// Moves what fits in the FIFO from the input into it.
    fn pump(&mut self) -> Pumped {
        let mut serial = lock(&self.serial);
        let room = serial.input_capacity();
        if room == 0 {
            return Pumped::FifoFull;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => Pumped::Ended,
            Ok(n) => match serial.enqueue_input(&buf[..n]) {
                Ok(_) => Pumped::Bytes(n),
                Err(e) => {
                    warn!("serial console: input lost: {e}");
                    Pumped::Bytes(0)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Pumped::Bytes(0),
            Err(e) => {
                warn!("serial console: cannot read input: {e}");
                Pumped::Ended
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        let input = Events::with_data(&self.input, INPUT_EVENT, EventSet::IN);
        let rearm = Events::with_data(&self.rearm, REARM_EVENT, EventSet::IN);
        match ops.add(input).and_then(|_| ops.add(rearm)) {
            Ok(()) => self.watching = true,
            Err(e) => warn!("serial console: input not forwarded: {e}"),
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let input = Events::with_data(&self.input, INPUT_EVENT, EventSet::IN);
        match events.data() {
            INPUT_EVENT => match self.pump() {
                Pumped::Bytes(_) => {}
                Pumped::FifoFull => {
                    // Level-triggered input would spin: stop watching until the guest reads.
                    let _ = ops.remove(input);
                    self.watching = false;
                }
                Pumped::Ended => {
                    let _ = ops.remove(input);
                    self.watching = false;
                    self.ended = true;
                }
            },
            REARM_EVENT => {
                let _ = self.rearm.read();
                if !self.watching && !self.ended && ops.add(input).is_ok() {
                    self.watching = true;
                }
            }
            other => warn!("serial console: unexpected event {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (mut serial, _) = SerialConsole::new(irq, Box::new(out.clone())).unwrap();
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

    fn console() -> (Arc<Mutex<SerialConsole>>, EventFd) {
        let irq = EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let (serial, rearm) = SerialConsole::new(irq, Box::new(io::sink())).unwrap();
        (Arc::new(Mutex::new(serial)), rearm)
    }

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe() returns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned by nobody else.
        unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        }
    }

    fn guest_reads(serial: &Arc<Mutex<SerialConsole>>) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let mut lsr = [0u8];
            serial.lock().unwrap().read(5, &mut lsr);
            if lsr[0] & 1 == 0 {
                return got;
            }
            let mut rx = [0u8];
            serial.lock().unwrap().read(0, &mut rx);
            got.push(rx[0]);
        }
    }

    #[test]
    fn host_input_reaches_the_guest_and_waits_while_the_fifo_is_full() {
        let (serial, rearm) = console();
        let (read_end, mut write_end) = pipe();
        let mut input = ConsoleInput::new(serial.clone(), read_end, rearm.try_clone().unwrap());
        let text: Vec<u8> = (0..200u8).collect();
        write_end.write_all(&text).unwrap();
        let mut received = Vec::new();
        while received.len() < text.len() {
            let mut moved = 0;
            loop {
                match input.pump() {
                    Pumped::Bytes(n) => moved += n,
                    Pumped::FifoFull => break,
                    Pumped::Ended => panic!("input ended early"),
                }
                if received.len() + moved == text.len() {
                    break;
                }
            }
            assert!(moved > 0, "input moved while the FIFO had room");
            received.extend(guest_reads(&serial));
            assert_eq!(rearm.read().unwrap(), 1, "draining the FIFO re-arms input");
        }
        assert_eq!(received, text, "every byte, in order");
        drop(write_end);
        assert_eq!(input.pump(), Pumped::Ended);
    }
}
