//! Zero-copy guest → host transfer: guest pages are spliced into a connection's pipe with
//! `vmsplice` and from there into the host socket with `splice`, so the kernel references the
//! guest's buffer instead of copying it. The guest must not get such a buffer back before the
//! host has read the bytes, which [`unread_bytes`] tells (`SIOCOUTQ`).
//!
//! Host → guest, a bulk connection splices socket data into a pipe as it arrives (no copy) and
//! copies it from there into guest buffers: the host writer's socket buffer is freed at once,
//! so it does not wait for the guest's next rx buffer.
//!
//! Pipes hold page references, not copies: a connection can keep at most [`PIPE_SIZE`] bytes in
//! its pipe, and only bytes within the guest's credit ever enter it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// Capacity asked for each pipe; more than a connection's credit, so a packet within credit
/// always fits.
pub const PIPE_SIZE: usize = 1 << 20;

/// A non-blocking pipe and the number of bytes in it.
#[derive(Debug)]
pub struct SplicePipe {
    read: OwnedFd,
    write: OwnedFd,
    len: usize,
}

fn cvt(ret: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

impl SplicePipe {
    /// A pipe of [`PIPE_SIZE`] bytes, or of the system's default size when a larger one is not
    /// allowed.
    pub fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two file descriptors into the array passed; checked below.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; failure leaves the default size, which only
        // means fewer bytes fit.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        Ok(Self {
            read,
            write,
            len: 0,
        })
    }

    /// Bytes in the pipe, not yet in the socket.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// References as much of `data` as fits into the pipe, without copying it; returns the
    /// bytes taken (0 when the pipe is full).
    pub fn reference<B: BitmapSlice>(&mut self, data: &VolatileSlice<'_, B>) -> io::Result<usize> {
        let guard = data.ptr_guard();
        let iov = libc::iovec {
            iov_base: guard.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        // SAFETY: the iovec describes `data`, mapped memory of this process that outlives the
        // call; vmsplice only takes references to its pages.
        let ret =
            unsafe { libc::vmsplice(self.write.as_raw_fd(), &iov, 1, libc::SPLICE_F_NONBLOCK) };
        self.taken(cvt(ret))
    }

    /// Copies as much of `data` as fits into the pipe; returns the bytes taken.
    pub fn copy_in<B: BitmapSlice>(&mut self, data: &VolatileSlice<'_, B>) -> io::Result<usize> {
        let guard = data.ptr_guard();
        // SAFETY: `data` is mapped memory of this process, valid for reads of its length.
        let ret = unsafe { libc::write(self.write.as_raw_fd(), guard.as_ptr().cast(), data.len()) };
        self.taken(cvt(ret))
    }

    fn taken(&mut self, result: io::Result<usize>) -> io::Result<usize> {
        match result {
            Ok(n) => {
                self.len += n;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Moves up to `max` bytes from `stream` into the pipe without copying them; `Ok(0)` means
    /// end of file.
    pub fn fill_from(&mut self, stream: &UnixStream, max: usize) -> io::Result<usize> {
        let n = splice(stream.as_raw_fd(), self.write.as_raw_fd(), max)?;
        self.len += n;
        Ok(n)
    }

    /// Copies pipe contents into `bufs` in order with one system call; returns the bytes copied.
    pub fn read_into_all<B: BitmapSlice>(
        &mut self,
        bufs: &[VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        let guards: Vec<_> = bufs.iter().map(|b| b.ptr_guard_mut()).collect();
        let iov: Vec<libc::iovec> = guards
            .iter()
            .zip(bufs)
            .map(|(g, b)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let count = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: every iovec describes one of `bufs`, mapped writable memory of this process
        // kept alive by `guards` for the call.
        let ret = unsafe { libc::readv(self.read.as_raw_fd(), iov.as_ptr(), count) };
        let n = cvt(ret)?;
        self.len -= n.min(self.len);
        Ok(n)
    }

    /// Moves pipe contents into `stream` until the pipe is empty or the socket is full; returns
    /// the bytes moved. `WouldBlock` is returned only when nothing moved.
    pub fn drain_into(&mut self, stream: &UnixStream) -> io::Result<usize> {
        let mut moved = 0;
        while self.len > 0 {
            match splice(self.read.as_raw_fd(), stream.as_raw_fd(), self.len) {
                Ok(0) => break,
                Ok(n) => {
                    self.len -= n.min(self.len);
                    moved += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if moved > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }
}

/// Moves up to `len` bytes from `from` to `to` (one of them a pipe) without blocking.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain splice between two descriptors; no memory is passed.
    let ret = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    cvt(ret)
}

/// Asks for a send buffer of `bytes` on `stream` (`SO_SNDBUFFORCE` where the process may, else
/// `SO_SNDBUF`, which the system's `wmem_max` caps); returns the size the socket now has.
pub fn grow_send_buffer(stream: &UnixStream, bytes: usize) -> io::Result<usize> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    for option in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: setsockopt reads one int from the pointer passed.
        let ret = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                len,
            )
        };
        if ret == 0 {
            break;
        }
    }
    let mut now: libc::c_int = 0;
    let mut now_len = len;
    // SAFETY: getsockopt writes one int and its length to the pointers passed.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut now as *mut libc::c_int).cast(),
            &mut now_len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(now).unwrap_or(0))
}

/// Bytes written into `stream` that its peer has not read yet, plus per-buffer overhead: an
/// upper bound of the unread bytes (`SIOCOUTQ`; a partly read buffer counts whole).
pub fn unread_bytes(stream: &UnixStream) -> io::Result<usize> {
    let mut value: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int to the pointer passed.
    if unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut value) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(value).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn slice(buf: &mut [u8]) -> VolatileSlice<'_> {
        VolatileSlice::from(buf)
    }

    #[test]
    fn referenced_bytes_reach_the_peer_and_unread_bytes_bound_them() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut pipe = SplicePipe::new().unwrap();
        let mut data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let expect = data.clone();
        assert_eq!(pipe.reference(&slice(&mut data)).unwrap(), data.len());
        assert_eq!(pipe.len(), data.len());
        let moved = pipe.drain_into(&a).unwrap();
        assert_eq!(moved, data.len());
        assert!(pipe.is_empty());
        assert!(unread_bytes(&a).unwrap() >= data.len());
        let mut got = vec![0u8; data.len()];
        b.read_exact(&mut got[..1000]).unwrap();
        assert!(unread_bytes(&a).unwrap() >= data.len() - 1000);
        b.read_exact(&mut got[1000..]).unwrap();
        assert_eq!(got, expect);
        assert_eq!(unread_bytes(&a).unwrap(), 0);
    }

    #[test]
    fn socket_data_passes_through_the_pipe_in_order() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut pipe = SplicePipe::new().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13) as u8).collect();
        let mut got = vec![0u8; data.len()];
        let (mut written, mut have) = (0, 0);
        while have < data.len() {
            if written < data.len() {
                match std::io::Write::write(&mut a, &data[written..]) {
                    Ok(n) => written += n,
                    Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
                }
            }
            match pipe.fill_from(&b, 100_000) {
                Ok(n) => assert!(n > 0),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
            let end = (have + 40_000).min(data.len());
            have += pipe.read_into_all(&[slice(&mut got[have..end])]).unwrap();
        }
        assert!(got == data);
        assert!(pipe.is_empty());
        drop(a);
        assert_eq!(pipe.fill_from(&b, 100).unwrap(), 0, "end of file");
    }

    #[test]
    fn send_buffer_grows_or_stays() {
        let (a, _b) = UnixStream::pair().unwrap();
        let before = grow_send_buffer(&a, 0).unwrap();
        let after = grow_send_buffer(&a, 1 << 20).unwrap();
        assert!(after >= before, "{after} < {before}");
    }

    #[test]
    fn a_full_socket_leaves_bytes_in_the_pipe() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut pipe = SplicePipe::new().unwrap();
        let mut data = vec![0x5au8; 900_000];
        let taken = pipe.copy_in(&slice(&mut data)).unwrap();
        assert!(taken > 0);
        let moved = pipe.drain_into(&a).unwrap();
        assert!(moved < taken, "the socket buffer is smaller than the pipe");
        assert_eq!(pipe.len(), taken - moved);
        let err = pipe.drain_into(&a).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let mut sink = vec![0u8; moved];
        b.read_exact(&mut sink).unwrap();
        assert!(pipe.drain_into(&a).unwrap() > 0);
    }
}
