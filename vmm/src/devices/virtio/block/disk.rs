//! The host side of a virtio-blk device: a raw image file, opened buffered or with O_DIRECT.
//!
//! Buffered I/O moves data straight between the file and guest memory. O_DIRECT needs buffers,
//! offsets and lengths aligned to the host's logical block size, which guest requests (aligned
//! to 512 bytes, anywhere in guest memory) do not guarantee, so direct I/O goes through an
//! aligned bounce buffer and partial blocks are read, patched and written back.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMemoryMmap;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Alignment of offsets, lengths and buffers for O_DIRECT; 4 KiB suits every common disk.
pub const DIRECT_ALIGN: usize = 4096;
/// Size of the O_DIRECT bounce buffer, and of the chunks direct I/O is split into.
const BOUNCE_SIZE: usize = 1 << 20;
/// Most iovecs one preadv/pwritev takes.
const IOV_MAX: usize = 1024;

/// A run of guest memory that a request reads from or writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a data transfer failed; every variant becomes an IOERR status for the request.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A guest buffer lies outside guest memory.
    #[error("guest buffer at {addr:#x} (+{len}) is not in guest memory")]
    GuestMemory { addr: u64, len: u32 },
    /// The host file operation failed.
    #[error("host I/O on the disk image failed")]
    Io(#[source] io::Error),
}

/// Why an image file cannot back a block device.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file cannot be opened with the requested access.
    #[error("cannot open disk image {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The file's size cannot be read.
    #[error("cannot read the size of disk image {path}")]
    Metadata {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The file holds less than one sector.
    #[error("disk image {path} is smaller than one 512-byte sector")]
    TooSmall { path: String },
    /// O_DIRECT needs whole 4 KiB blocks, or the last block would be read or written past EOF.
    #[error("disk image {path} is {size} bytes: O_DIRECT needs a multiple of {DIRECT_ALIGN}")]
    DirectSize { path: String, size: u64 },
    /// The file system under the image rejects O_DIRECT.
    #[error("disk image {path} cannot be read with O_DIRECT")]
    DirectUnsupported {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// A heap buffer whose usable part starts at a [`DIRECT_ALIGN`]-aligned address. Allocating a
/// little more and skipping to the aligned offset needs no unsafe code.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        Self { storage, start }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.storage[self.start..self.start + len]
    }
}

/// Walks a list of guest segments, copying bytes in or out of them in order.
pub struct SegCursor<'a> {
    mem: &'a GuestMemoryMmap,
    segs: &'a [Segment],
    index: usize,
    offset: u32,
}

impl<'a> SegCursor<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, segs: &'a [Segment]) -> Self {
        Self {
            mem,
            segs,
            index: 0,
            offset: 0,
        }
    }

    /// Visits the next `len` bytes as guest (address, length) pieces.
    fn walk(
        &mut self,
        mut len: usize,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        let mut done = 0usize;
        while len > 0 {
            let Some(seg) = self.segs.get(self.index) else {
                // The caller sized the transfer from these segments, so this cannot happen;
                // failing the request is still better than a panic.
                return Err(DiskError::Io(io::Error::other("request buffers too short")));
            };
            let avail = (seg.len - self.offset) as usize;
            if avail == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = avail.min(len);
            let addr =
                seg.addr
                    .checked_add(u64::from(self.offset))
                    .ok_or(DiskError::GuestMemory {
                        addr: seg.addr.0,
                        len: seg.len,
                    })?;
            f(addr, done, n)?;
            self.offset += n as u32;
            done += n;
            len -= n;
        }
        Ok(())
    }

    /// Copies `data` into the guest buffers.
    pub fn write_from(&mut self, data: &[u8]) -> Result<(), DiskError> {
        let mem = self.mem;
        self.walk(data.len(), |addr, at, n| {
            mem.write_slice(&data[at..at + n], addr)
                .map_err(|_| DiskError::GuestMemory {
                    addr: addr.0,
                    len: n as u32,
                })
        })
    }

    /// Fills `data` from the guest buffers.
    pub fn read_into(&mut self, data: &mut [u8]) -> Result<(), DiskError> {
        let mem = self.mem;
        self.walk(data.len(), |addr, at, n| {
            mem.read_slice(&mut data[at..at + n], addr)
                .map_err(|_| DiskError::GuestMemory {
                    addr: addr.0,
                    len: n as u32,
                })
        })
    }
}

/// A raw disk image.
pub struct Disk {
    file: File,
    /// Usable size in bytes: whole sectors only.
    size: u64,
    read_only: bool,
    /// The bounce buffer when the file was opened with O_DIRECT.
    bounce: Option<AlignedBuf>,
    /// O_DIRECT requests served without the bounce buffer.
    direct_io: u64,
}

impl Disk {
    /// Opens `path`; a read-only disk opens the file read-only.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, OpenError> {
        let shown = path.display().to_string();
        let mut opts = OpenOptions::new();
        opts.read(true).write(!read_only);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(path).map_err(|source| OpenError::Open {
            path: shown.clone(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| OpenError::Metadata {
                path: shown.clone(),
                source,
            })?
            .len();
        let size = len - len % SECTOR_SIZE;
        if size == 0 {
            return Err(OpenError::TooSmall { path: shown });
        }
        if len != size {
            log::warn!(
                "virtio-blk: {shown} is {len} bytes, not a whole number of sectors; \
                 the last {} bytes are not visible to the guest",
                len - size
            );
        }
        let bounce = if direct {
            if len % DIRECT_ALIGN as u64 != 0 {
                return Err(OpenError::DirectSize {
                    path: shown,
                    size: len,
                });
            }
            let mut buf = AlignedBuf::new(BOUNCE_SIZE);
            // Probe: some file systems accept O_DIRECT at open and refuse the I/O.
            file.read_at(buf.get(DIRECT_ALIGN), 0).map_err(|source| {
                OpenError::DirectUnsupported {
                    path: shown.clone(),
                    source,
                }
            })?;
            Some(buf)
        } else {
            None
        };
        Ok(Self {
            file,
            size,
            read_only,
            bounce,
            direct_io: 0,
        })
    }

    /// Usable size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn direct(&self) -> bool {
        self.bounce.is_some()
    }

    /// O_DIRECT requests that went straight between the file and guest memory.
    pub fn direct_io_count(&self) -> u64 {
        self.direct_io
    }

    /// Reads `len` bytes at `offset` into the guest buffers `segs`.
    pub fn read_to_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segs: &[Segment],
    ) -> Result<(), DiskError> {
        if self.bounce.is_some() && !self.direct_ok(offset, segs, mem) {
            let len = total_len(segs);
            let mut cursor = SegCursor::new(mem, segs);
            return self.direct_read(offset, len, |chunk| cursor.write_from(chunk));
        }
        self.vectored(mem, offset, segs, false)
    }

    /// Writes the guest buffers `segs` to the file at `offset`.
    pub fn write_from_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segs: &[Segment],
    ) -> Result<(), DiskError> {
        if self.bounce.is_some() && !self.direct_ok(offset, segs, mem) {
            let len = total_len(segs);
            let mut cursor = SegCursor::new(mem, segs);
            return self.direct_write(offset, len, |chunk| cursor.read_into(chunk));
        }
        self.vectored(mem, offset, segs, true)
    }

    /// With O_DIRECT, a request whose offset, buffers and lengths are all aligned (the usual
    /// case: guests do I/O on whole pages) goes straight to guest memory; others take the
    /// bounce buffer. `direct_io` counts the requests that went straight.
    fn direct_ok(&mut self, offset: u64, segs: &[Segment], mem: &GuestMemoryMmap) -> bool {
        let align = DIRECT_ALIGN as u64;
        let aligned = offset % align == 0
            && segs.iter().all(|s| {
                s.addr.0 % align == 0
                    && u64::from(s.len) % align == 0
                    && mem.get_slices(s.addr, s.len as usize).all(|sl| {
                        sl.is_ok_and(|sl| {
                            sl.ptr_guard().as_ptr() as usize % DIRECT_ALIGN == 0
                                && sl.len() % DIRECT_ALIGN == 0
                        })
                    })
            });
        if aligned {
            self.direct_io += 1;
        }
        aligned
    }

    /// Buffered I/O straight between the file and guest memory: one preadv/pwritev over all
    /// the request's buffers (more calls only after a short transfer).
    fn vectored(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        segs: &[Segment],
        write: bool,
    ) -> Result<(), DiskError> {
        let mut guards = Vec::with_capacity(segs.len());
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(segs.len());
        for seg in segs {
            for slice in mem.get_slices(seg.addr, seg.len as usize) {
                let slice = slice.map_err(|_| DiskError::GuestMemory {
                    addr: seg.addr.0,
                    len: seg.len,
                })?;
                let guard = slice.ptr_guard_mut();
                iovs.push(libc::iovec {
                    iov_base: guard.as_ptr().cast(),
                    iov_len: slice.len(),
                });
                guards.push(guard);
            }
        }
        let fd = self.file.as_raw_fd();
        let mut first = 0usize;
        let mut pos = offset;
        while first < iovs.len() {
            if iovs[first].iov_len == 0 {
                first += 1;
                continue;
            }
            let count = (iovs.len() - first).min(IOV_MAX) as libc::c_int;
            let Ok(at) = libc::off64_t::try_from(pos) else {
                return Err(DiskError::Io(io::Error::from_raw_os_error(libc::EINVAL)));
            };
            let iov = iovs[first..].as_ptr();
            // SAFETY: every iovec points into guest memory that `guards` keeps mapped, with the
            // length of its slice; `count` iovecs are valid from `iov`. The kernel reads or
            // writes only within them.
            let n = unsafe {
                if write {
                    libc::pwritev64(fd, iov, count, at)
                } else {
                    libc::preadv64(fd, iov, count, at)
                }
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DiskError::Io(err));
            }
            if n == 0 {
                let kind = if write {
                    io::ErrorKind::WriteZero
                } else {
                    io::ErrorKind::UnexpectedEof
                };
                return Err(DiskError::Io(io::Error::from(kind)));
            }
            let mut done = n as usize;
            pos += done as u64;
            while done > 0 && first < iovs.len() {
                let iov = &mut iovs[first];
                if done >= iov.iov_len {
                    done -= iov.iov_len;
                    first += 1;
                } else {
                    // SAFETY: `done` is less than the iovec's length, so the advanced pointer
                    // stays inside the same guest memory slice.
                    iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(done) }.cast();
                    iov.iov_len -= done;
                    done = 0;
                }
            }
        }
        drop(guards);
        Ok(())
    }

    /// Makes completed writes durable.
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// Deallocates a range: it may read back as anything, so a hole is fine; a file system
    /// without hole punching simply keeps the data (discard is a hint).
    pub fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if is_unsupported(&e) => Ok(()),
            other => other,
        }
    }

    /// Zeroes a range; with `unmap` the blocks may also be deallocated.
    pub fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Err(e) if is_unsupported(&e) => {}
            other => return other,
        }
        // Fallback: write zeroes.
        if self.bounce.is_some() {
            let len = usize::try_from(len).map_err(io::Error::other)?;
            return self
                .direct_write(offset, len, |chunk| {
                    chunk.fill(0);
                    Ok(())
                })
                .map_err(|e| match e {
                    DiskError::Io(e) => e,
                    other => io::Error::other(other.to_string()),
                });
        }
        let zeroes = vec![0u8; 64 * 1024];
        let mut pos = 0u64;
        while pos < len {
            let n = (len - pos).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset + pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // SAFETY: fallocate takes only integer arguments and a file descriptor that
            // `self.file` keeps open for the duration of the call.
            let ret = unsafe { libc::fallocate64(self.file.as_raw_fd(), mode, off, len) };
            if ret == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Reads `len` bytes at `offset` through the aligned bounce buffer, handing each chunk to
    /// `sink` in order.
    fn direct_read(
        &mut self,
        offset: u64,
        len: usize,
        mut sink: impl FnMut(&[u8]) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        let Some(bounce) = self.bounce.as_mut() else {
            return Err(DiskError::Io(io::Error::other("no bounce buffer")));
        };
        let align = DIRECT_ALIGN as u64;
        let end = offset + len as u64;
        let mut pos = offset;
        while pos < end {
            let block_start = pos - pos % align;
            let block_end = (end.div_ceil(align) * align).min(block_start + BOUNCE_SIZE as u64);
            let span = (block_end - block_start) as usize;
            let buf = bounce.get(span);
            read_full_at(&self.file, buf, block_start).map_err(DiskError::Io)?;
            let chunk_end = end.min(block_end);
            let from = (pos - block_start) as usize;
            let to = (chunk_end - block_start) as usize;
            sink(&buf[from..to])?;
            pos = chunk_end;
        }
        Ok(())
    }

    /// Writes `len` bytes at `offset` through the aligned bounce buffer; `source` fills each
    /// chunk in order. Blocks only partly covered are read first and written back whole.
    fn direct_write(
        &mut self,
        offset: u64,
        len: usize,
        mut source: impl FnMut(&mut [u8]) -> Result<(), DiskError>,
    ) -> Result<(), DiskError> {
        let Some(bounce) = self.bounce.as_mut() else {
            return Err(DiskError::Io(io::Error::other("no bounce buffer")));
        };
        let align = DIRECT_ALIGN as u64;
        let end = offset + len as u64;
        let mut pos = offset;
        while pos < end {
            let block_start = pos - pos % align;
            let block_end = (end.div_ceil(align) * align).min(block_start + BOUNCE_SIZE as u64);
            let span = (block_end - block_start) as usize;
            let chunk_end = end.min(block_end);
            let buf = bounce.get(span);
            if pos != block_start || chunk_end != block_end {
                read_full_at(&self.file, buf, block_start).map_err(DiskError::Io)?;
            }
            let from = (pos - block_start) as usize;
            let to = (chunk_end - block_start) as usize;
            source(&mut buf[from..to])?;
            self.file
                .write_all_at(buf, block_start)
                .map_err(DiskError::Io)?;
            pos = chunk_end;
        }
        Ok(())
    }
}

/// Reads until `buf` is full; bytes past the end of the file read as zero.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn total_len(segs: &[Segment]) -> usize {
    segs.iter().map(|s| s.len as usize).sum()
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}
