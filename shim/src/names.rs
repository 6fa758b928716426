//! The names containerd's ids get in capsule: a VM name (unique per containerd namespace and
//! id, listed by `capsule ls`) and a container name inside the VM. Both follow capsule's name
//! rule (1-63 bytes of `[A-Za-z0-9_.-]`, starting with a letter or digit); a longer or
//! foreign id is cut and given a stable hash of the whole, so two ids never share a name.

use capsule_protocol::container::{name_problem, MAX_NAME_LEN};

/// Longest VM name the shim makes: the VM's sockets live in `<state>/<name>/`, and a Unix
/// socket path has at most 107 bytes.
const MAX_VM_NAME: usize = 40;

/// The VM of a pod (or of a lone container) whose first container is `id`.
pub fn vm_name(namespace: &str, id: &str) -> String {
    fit(&format!("{namespace}.{id}"), MAX_VM_NAME)
}

/// The container object of `id` inside its VM.
pub fn container_name(id: &str) -> String {
    fit(id, MAX_NAME_LEN)
}

fn fit(raw: &str, max: usize) -> String {
    let mut clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name_problem(raw).is_none() && raw.len() <= max {
        return clean;
    }
    let hash = format!("{:016x}", fnv1a(raw.as_bytes()));
    clean.truncate(max - hash.len() - 2);
    format!("c{clean}-{hash}")
}

/// FNV-1a: stable across builds, so a later `delete` finds what an earlier shim named.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_keep_their_name() {
        assert_eq!(vm_name("default", "web"), "default.web");
        assert_eq!(container_name("web-1"), "web-1");
    }

    #[test]
    fn long_or_foreign_ids_are_cut_and_hashed() {
        let cri = "4f1c7e0b9a0e43c1b0f3d0a8a1f1e9c2d6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1";
        for name in [
            vm_name("k8s.io", cri),
            container_name(cri),
            container_name("_x"),
            container_name("a/b"),
        ] {
            assert_eq!(name_problem(&name), None, "{name}");
        }
        assert!(vm_name("k8s.io", cri).len() <= MAX_VM_NAME);
        assert_ne!(container_name(cri), container_name(&cri.replace('4', "5")));
        assert_eq!(container_name(cri), container_name(cri));
    }
}
