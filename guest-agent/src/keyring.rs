//! Keyring helpers shared by the backends, the AddKey/ListKeys calls and the request-key helper.

use std::ffi::CStr;

use crate::sys::{self, Errno};

/// The "user" key in every container keyring whose payload is the container's name.
pub const NAME_KEY: &CStr = c"capsule:container-name";
/// keyctl(KEYCTL_INVALIDATE).
pub const KEYCTL_INVALIDATE: i32 = 21;

/// A parsed KEYCTL_DESCRIBE answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDescription {
    pub key_type: String,
    pub uid: u32,
    pub gid: u32,
    pub perm: u32,
    pub description: String,
}

/// Parses "type;uid;gid;perm;description" (the description may contain ';').
pub fn parse_description(s: &str) -> Option<KeyDescription> {
    let mut it = s.splitn(5, ';');
    let key_type = it.next()?.to_string();
    let uid = it.next()?.parse().ok()?;
    let gid = it.next()?.parse().ok()?;
    let perm = u32::from_str_radix(it.next()?, 16).ok()?;
    let description = it.next()?.to_string();
    Some(KeyDescription {
        key_type,
        uid,
        gid,
        perm,
        description,
    })
}

/// The serials linked into a keyring.
pub fn keyring_members(ring: i32) -> Result<Vec<i32>, Errno> {
    let raw = sys::key_read(ring)?;
    Ok(raw
        .chunks_exact(4)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Describes a key.
pub fn describe(serial: i32) -> Result<KeyDescription, Errno> {
    let s = sys::key_describe(serial)?;
    parse_description(&s).ok_or(libc::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_parse() {
        let d = parse_description("user;0;0;3f010000;capsule:a;b").unwrap();
        assert_eq!(d.key_type, "user");
        assert_eq!(d.perm, 0x3f01_0000);
        assert_eq!(d.description, "capsule:a;b");
        assert!(parse_description("user;x;0;0;d").is_none());
        assert!(parse_description("user;0;0").is_none());
    }
}
