//! The "newc" (SVR4, magic `070701`) cpio format that the Linux kernel unpacks as an initramfs:
//! a writer for one entry at a time, and a parser used to check archives.
//!
//! Each entry is a 110-byte ASCII header (magic and 13 eight-digit hex fields), the NUL-terminated
//! name padded to a multiple of 4 bytes (counted from the header start), then the data padded
//! to 4. The archive ends with an entry named `TRAILER!!!`.

use std::io::{self, Read, Write};

/// Magic of a newc header without checksums.
pub const MAGIC: &[u8; 6] = b"070701";
/// Size of a newc header.
pub const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `mode`, as in `stat(2)`.
pub const S_IFMT: u32 = 0o170000;
/// Directory.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// Block device.
pub const S_IFBLK: u32 = 0o060000;
/// Named pipe.
pub const S_IFIFO: u32 = 0o010000;

/// Errors of writing or parsing a newc archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// Writing the archive failed.
    #[error("writing the archive")]
    Write(#[source] io::Error),
    /// Reading an entry's data failed.
    #[error("reading the data of {name}")]
    ReadData {
        name: String,
        #[source]
        source: io::Error,
    },
    /// The data source of an entry ended before its declared size.
    #[error("{name}: data source gave {got} bytes, header declared {declared}")]
    ShortData {
        name: String,
        got: u64,
        declared: u64,
    },
    /// A name the format cannot hold.
    #[error("entry name {0:?} is empty, contains NUL, or is too long")]
    BadName(String),
    /// A header field that does not fit in 32 bits.
    #[error("{name}: field {field} = {value} does not fit in 32 bits")]
    FieldTooLarge {
        name: String,
        field: &'static str,
        value: u64,
    },
    /// The archive being parsed is malformed.
    #[error("malformed archive at byte {offset}: {what}")]
    Malformed { offset: usize, what: String },
}

/// The metadata of one archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub filesize: u32,
    /// Device number of a character or block device node.
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

/// Writes newc entries to `W`, keeping track of the offset for padding.
pub struct Writer<W: Write> {
    out: W,
    offset: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer { out, offset: 0 }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes).map_err(CpioError::Write)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> Result<(), CpioError> {
        let pad = (4 - (self.offset % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    /// Writes one entry whose data (exactly `header.filesize` bytes) comes from `data`.
    pub fn entry(
        &mut self,
        name: &str,
        header: &Header,
        data: &mut dyn Read,
    ) -> Result<(), CpioError> {
        if name.is_empty() || name.contains('\0') || name.len() >= u32::MAX as usize {
            return Err(CpioError::BadName(name.to_string()));
        }
        let namesize = name.len() as u32 + 1;
        let fields = [
            header.ino,
            header.mode,
            header.uid,
            header.gid,
            header.nlink,
            header.mtime,
            header.filesize,
            0, // devmajor: the device the file lived on, meaningless here
            0, // devminor
            header.rdev_major,
            header.rdev_minor,
            namesize,
            0, // check: unused by the 070701 format
        ];
        let mut text = Vec::with_capacity(HEADER_LEN + name.len() + 1);
        text.extend_from_slice(MAGIC);
        for field in fields {
            text.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        text.extend_from_slice(name.as_bytes());
        text.push(0);
        self.put(&text)?;
        self.pad4()?;

        let declared = u64::from(header.filesize);
        let mut limited = data.take(declared);
        let got = io::copy(&mut limited, &mut self.out).map_err(|source| CpioError::ReadData {
            name: name.to_string(),
            source,
        })?;
        self.offset += got;
        if got != declared {
            return Err(CpioError::ShortData {
                name: name.to_string(),
                got,
                declared,
            });
        }
        self.pad4()
    }

    /// Writes the trailer entry and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        let trailer = Header {
            ino: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0,
            filesize: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        self.entry(TRAILER, &trailer, &mut io::empty())?;
        self.out.flush().map_err(CpioError::Write)?;
        Ok(self.out)
    }
}

/// Checks that `value` fits in a 32-bit header field.
pub fn field(name: &str, field: &'static str, value: u64) -> Result<u32, CpioError> {
    u32::try_from(value).map_err(|_| CpioError::FieldTooLarge {
        name: name.to_string(),
        field,
        value,
    })
}

/// One parsed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub header: Header,
    pub data: Vec<u8>,
}

/// Parses a whole newc archive up to and excluding its trailer.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let bad = |offset: usize, what: &str| CpioError::Malformed {
        offset,
        what: what.to_string(),
    };
    let align = |n: usize| (n + 3) & !3;
    let mut entries = Vec::new();
    let mut pos = 0;
    loop {
        let head = bytes
            .get(pos..pos + HEADER_LEN)
            .ok_or_else(|| bad(pos, "truncated header"))?;
        if &head[..6] != MAGIC {
            return Err(bad(pos, "bad magic"));
        }
        let mut f = [0u32; 13];
        for (i, value) in f.iter_mut().enumerate() {
            let hex = std::str::from_utf8(&head[6 + 8 * i..14 + 8 * i])
                .map_err(|_| bad(pos, "non-ASCII header field"))?;
            *value = u32::from_str_radix(hex, 16).map_err(|_| bad(pos, "non-hex header field"))?;
        }
        let namesize = f[11] as usize;
        let name_start = pos + HEADER_LEN;
        let name_bytes = bytes
            .get(name_start..name_start + namesize)
            .ok_or_else(|| bad(pos, "truncated name"))?;
        let (last, name) = name_bytes
            .split_last()
            .ok_or_else(|| bad(pos, "empty name"))?;
        if *last != 0 {
            return Err(bad(pos, "name not NUL-terminated"));
        }
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad(pos, "non-UTF-8 name"))?;
        let data_start = align(name_start + namesize);
        let filesize = f[6] as usize;
        let data = bytes
            .get(data_start..data_start + filesize)
            .ok_or_else(|| bad(pos, "truncated data"))?
            .to_vec();
        pos = align(data_start + filesize);
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(Entry {
            name,
            header: Header {
                ino: f[0],
                mode: f[1],
                uid: f[2],
                gid: f[3],
                nlink: f[4],
                mtime: f[5],
                filesize: f[6],
                rdev_major: f[9],
                rdev_minor: f[10],
            },
            data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(mode: u32, size: u32) -> Header {
        Header {
            ino: 7,
            mode,
            uid: 1,
            gid: 2,
            nlink: 1,
            mtime: 3,
            filesize: size,
            rdev_major: 4,
            rdev_minor: 5,
        }
    }

    #[test]
    fn header_layout_matches_newc() {
        let mut w = Writer::new(Vec::new());
        w.entry("ab", &header(S_IFREG | 0o644, 3), &mut &b"xyz"[..])
            .unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(&out[6..14], b"00000007"); // ino
        assert_eq!(&out[14..22], b"000081A4"); // mode
        assert_eq!(&out[94..102], b"00000003"); // namesize "ab\0"
        assert_eq!(&out[110..113], b"ab\0");
        // 110 + 3 = 113, padded to 116; data "xyz" padded to 120.
        assert_eq!(&out[113..116], &[0, 0, 0]);
        assert_eq!(&out[116..119], b"xyz");
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn round_trip() {
        let mut w = Writer::new(Vec::new());
        w.entry("dir", &header(S_IFDIR | 0o755, 0), &mut io::empty())
            .unwrap();
        w.entry("dir/f", &header(S_IFREG | 0o600, 5), &mut &b"hello"[..])
            .unwrap();
        let out = w.finish().unwrap();
        let entries = parse(&out).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].name, "dir/f");
        assert_eq!(entries[1].data, b"hello");
        assert_eq!(entries[1].header, header(S_IFREG | 0o600, 5));
    }

    #[test]
    fn short_data_is_an_error() {
        let mut w = Writer::new(Vec::new());
        let err = w
            .entry("f", &header(S_IFREG, 10), &mut &b"abc"[..])
            .unwrap_err();
        assert!(matches!(
            err,
            CpioError::ShortData {
                got: 3,
                declared: 10,
                ..
            }
        ));
    }

    #[test]
    fn bad_names_are_rejected() {
        let mut w = Writer::new(Vec::new());
        assert!(matches!(
            w.entry("", &header(S_IFDIR, 0), &mut io::empty()),
            Err(CpioError::BadName(_))
        ));
        assert!(matches!(
            w.entry("a\0b", &header(S_IFDIR, 0), &mut io::empty()),
            Err(CpioError::BadName(_))
        ));
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(parse(b"0707").is_err());
        let mut bad = vec![b'x'; HEADER_LEN];
        bad[..6].copy_from_slice(b"070702");
        assert!(matches!(parse(&bad), Err(CpioError::Malformed { .. })));
    }

    #[test]
    fn field_overflow_is_reported() {
        assert!(field("big", "filesize", 1 << 33).is_err());
        assert_eq!(field("ok", "filesize", 12).unwrap(), 12);
    }
}
