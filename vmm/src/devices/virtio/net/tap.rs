//! The host end of a virtio-net device: an existing TAP interface, opened by name through
//! `/dev/net/tun` with a virtio-net header in front of every frame, non-blocking.
//!
//! The host library creates the TAP (persistent, attached to a bridge) before the machine
//! starts; this module only attaches to it. Raw system calls of the device live here.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

const TUN_PATH: &str = "/dev/net/tun";

/// Why a TAP cannot back a virtio-net device. Every variant names the TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long, or has characters Linux refuses in interface names.
    #[error("TAP name {name:?} is invalid: {why}")]
    InvalidName { name: String, why: &'static str },
    /// `/dev/net/tun` is missing: the tun driver is not loaded.
    #[error("cannot open {TUN_PATH} for TAP {tap}: load the tun driver with `modprobe tun`")]
    NoTunDevice {
        tap: String,
        #[source]
        source: io::Error,
    },
    /// No interface of that name exists in this network namespace.
    #[error(
        "TAP {tap} does not exist in this network namespace: create it first \
         (`ip tuntap add {tap} mode tap`)"
    )]
    Missing { tap: String },
    /// The caller may not attach to the TAP.
    #[error(
        "attaching to TAP {tap} needs CAP_NET_ADMIN, or a TAP created for this user \
         (`ip tuntap add {tap} mode tap user $USER`)"
    )]
    Permission {
        tap: String,
        #[source]
        source: io::Error,
    },
    /// TUNSETIFF failed otherwise (for example, the interface is a TUN, not a TAP, or is busy).
    #[error("cannot attach to TAP {tap} (is it a TAP, not a TUN or another kind of interface?)")]
    Attach {
        tap: String,
        #[source]
        source: io::Error,
    },
    /// A set-up ioctl on the attached TAP failed.
    #[error("cannot set {what} on TAP {tap}")]
    Ioctl {
        tap: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Checks `name` against the kernel's rules for interface names (`dev_valid_name`).
pub fn check_name(name: &str) -> Result<(), TapError> {
    let bad = |why| {
        Err(TapError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("it is . or ..");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        return bad("it contains '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// An attached TAP queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// False for the socket stand-in of the tests, which takes no TUN ioctls.
    is_tun: bool,
}

/// `struct ifreq` with the flags member, as TUNSETIFF takes it.
pub(super) fn ifreq(name: &str, flags: libc::c_int) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of integers and addresses);
    // all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    req
}

impl Tap {
    /// Attaches to the existing TAP `name` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, sets the
    /// virtio-net header size to `vnet_hdr_len`, non-blocking.
    pub fn open(name: &str, vnet_hdr_len: usize) -> Result<Self, TapError> {
        check_name(name)?;
        let tap = || name.to_string();
        let cname = CString::new(name).map_err(|_| TapError::InvalidName {
            name: tap(),
            why: "it contains NUL",
        })?;
        // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(TapError::Missing { tap: tap() });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| TapError::NoTunDevice { tap: tap(), source })?;
        let req = ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        // SAFETY: TUNSETIFF reads (and may update) one `struct ifreq`, which `req` is; the fd
        // is a /dev/net/tun file we own.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &req) };
        if rc < 0 {
            let source = io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    TapError::Permission { tap: tap(), source }
                }
                _ => TapError::Attach { tap: tap(), source },
            });
        }
        let tap = Self {
            file,
            name: name.to_string(),
            is_tun: true,
        };
        let size = libc::c_int::try_from(vnet_hdr_len).unwrap_or(libc::c_int::MAX);
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points to `size`.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if rc < 0 {
            return Err(tap.ioctl_error("the virtio-net header size"));
        }
        Ok(tap)
    }

    /// A stand-in for tests: any non-blocking datagram socket, on which TUN ioctls are skipped.
    #[cfg(test)]
    pub fn from_socket_for_tests(file: File, name: &str) -> Self {
        Self {
            file,
            name: name.to_string(),
            is_tun: false,
        }
    }

    fn ioctl_error(&self, what: &'static str) -> TapError {
        TapError::Ioctl {
            tap: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads the reader handles (`TUN_F_*`): frames it sends us may
    /// then carry partial checksums or be GSO frames of those kinds.
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        if !self.is_tun {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is ours.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(self.ioctl_error("the offload flags"));
        }
        Ok(())
    }

    /// Reads one frame (with its virtio-net header) into `buf`; WouldBlock when none waits.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let n =
                unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Reads one frame (with its virtio-net header) into the pieces `iovs`, in order;
    /// WouldBlock when none waits. A frame longer than the pieces is lost, so they must have
    /// room for the largest frame.
    ///
    /// # Safety
    /// Every iovec must point to memory writable for its length for the duration of the call.
    pub unsafe fn readv(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iovs.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            // SAFETY: the caller guarantees the iovecs; `count` of them are valid from the
            // pointer. The kernel writes only within them.
            let n = unsafe { libc::readv(self.file.as_raw_fd(), iovs.as_ptr(), count) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Writes one frame given as pieces (header first); WouldBlock when the TAP is full.
    ///
    /// # Safety
    /// Every iovec must point to memory readable for its length for the duration of the call.
    pub unsafe fn writev(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iovs.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            // SAFETY: the caller guarantees the iovecs; `count` of them are valid from the
            // pointer. The kernel only reads from them.
            let n = unsafe { libc::writev(self.file.as_raw_fd(), iovs.as_ptr(), count) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kernel_rules() {
        assert!(check_name("ctap0").is_ok());
        assert!(check_name("a23456789012345").is_ok());
        for bad in [
            "",
            "a234567890123456",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\0b",
        ] {
            let err = check_name(bad).unwrap_err();
            assert!(matches!(err, TapError::InvalidName { .. }), "{bad:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn a_missing_tap_is_named_with_the_remedy() {
        let err = Tap::open("ctnt-missing0", 12).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TapError::Missing { .. }), "{msg}");
        assert!(
            msg.contains("ctnt-missing0") && msg.contains("ip tuntap add"),
            "{msg}"
        );
    }
}
