//! Checks every side applies to what it receives: names, paths, strings, counts. Each error
//! names the field it is about.

use crate::status::RpcError;

pub use crate::container::MAX_NAME_LEN;
/// Longest path accepted anywhere in the API.
pub const MAX_PATH_LEN: usize = 4096;
/// Most argv entries of an exec.
pub const MAX_ARGS: usize = 4096;
/// Most env entries of an exec.
pub const MAX_ENV: usize = 4096;
/// Longest single argv or env string (the kernel's MAX_ARG_STRLEN).
pub const MAX_ARG_LEN: usize = 128 * 1024;
/// Most supplementary groups of an exec.
pub const MAX_GROUPS: usize = 64;
/// Longest mount option string (one page, as the kernel takes it).
pub const MAX_OPTIONS_LEN: usize = 4095;
/// Longest key type or description.
pub const MAX_KEY_DESC_LEN: usize = 4095;
/// Largest key payload (the kernel's limit for add_key(2) payloads is 1 MiB).
pub const MAX_KEY_PAYLOAD: usize = 1024 * 1024 - 1;

/// A container name, by the rule of [`crate::container::name_problem`].
pub fn container_name(field: &str, name: &str) -> Result<(), RpcError> {
    match crate::container::name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(RpcError::invalid(
            field,
            format!("invalid container name {name:?}: {reason}"),
        )),
    }
}

/// A string without NUL bytes and at most `max` bytes long.
pub fn plain_string(field: &str, s: &str, max: usize) -> Result<(), RpcError> {
    if s.len() > max {
        return Err(RpcError::invalid(
            field,
            format!("{} bytes, more than the limit of {max}", s.len()),
        ));
    }
    if s.contains('\0') {
        return Err(RpcError::invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

/// Longest virtio-fs tag: the device's config space holds 36 bytes.
pub const MAX_VIRTIOFS_TAG_LEN: usize = 36;

/// A virtio-fs tag (the mount source of a `virtiofs` mount): 1 to [`MAX_VIRTIOFS_TAG_LEN`]
/// bytes of printable ASCII.
pub fn virtiofs_tag(field: &str, tag: &str) -> Result<(), RpcError> {
    if tag.is_empty()
        || tag.len() > MAX_VIRTIOFS_TAG_LEN
        || !tag.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(RpcError::invalid(
            field,
            format!("virtio-fs tag {tag:?}: 1 to {MAX_VIRTIOFS_TAG_LEN} bytes of printable ASCII"),
        ));
    }
    Ok(())
}

/// An absolute path without NUL bytes, `..` components or excess length.
pub fn absolute_path(field: &str, p: &str) -> Result<(), RpcError> {
    plain_string(field, p, MAX_PATH_LEN)?;
    if !p.starts_with('/') {
        return Err(RpcError::invalid(
            field,
            format!("path {p:?} is not absolute"),
        ));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(RpcError::invalid(
            field,
            format!("path {p:?} contains a '..' component"),
        ));
    }
    Ok(())
}

/// A list of at most `max` strings, each checked by [`plain_string`] with `max_len`.
pub fn string_list(
    field: &str,
    list: &[String],
    max: usize,
    max_len: usize,
) -> Result<(), RpcError> {
    if list.len() > max {
        return Err(RpcError::invalid(
            field,
            format!("{} entries, more than the limit of {max}", list.len()),
        ));
    }
    for (i, s) in list.iter().enumerate() {
        plain_string(&format!("{field}[{i}]"), s, max_len)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(container_name("name", "web-1.a_b").is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "a b", "ü", &"x".repeat(64)] {
            let e = container_name("name", bad).unwrap_err();
            assert_eq!(e.field, "name", "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        assert!(absolute_path("cwd", "/a/b").is_ok());
        assert!(absolute_path("cwd", "a/b").is_err());
        assert!(absolute_path("cwd", "/a/../b").is_err());
        assert!(absolute_path("cwd", "/a\0").is_err());
        assert!(absolute_path("cwd", &format!("/{}", "x".repeat(MAX_PATH_LEN))).is_err());
    }

    #[test]
    fn lists_name_the_bad_entry() {
        let list = vec!["ok".to_string(), "b\0d".to_string()];
        assert_eq!(
            string_list("env", &list, 8, 16).unwrap_err().field,
            "env[1]"
        );
        assert!(string_list("env", &list[..1], 8, 16).is_ok());
        assert!(string_list("env", &list[..1], 0, 16).is_err());
    }
}
