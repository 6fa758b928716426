//! The i8042 keyboard controller at 0x60/0x64, kept for one thing: its CPU reset command
//! (0xfe), which is how a microVM guest asks to reboot and how capsule learns the guest is done.

use log::warn;
use vm_superio::I8042Device;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// The controller's data port; the command/status port is 4 above it.
pub const I8042_DATA_PORT: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// The keyboard controller; `reset` fires when the guest requests a CPU reset.
pub struct I8042 {
    inner: I8042Device<EventFdTrigger>,
}

impl I8042 {
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            inner: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.inner.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.inner.write(offset, *byte) {
                warn!("i8042: cannot signal the reset request: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn reset_command_fires_the_reset_event() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut kbd = I8042::new(EventFdTrigger::new(evt.try_clone().unwrap()));
        kbd.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
        kbd.write(4, &[0x20]); // read command byte: no reset
        assert!(evt.read().is_err());
    }
}
