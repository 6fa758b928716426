//! Helpers the commands share: opening a VM, reaching its agent, parsing specs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use capsule_host::vm::{Key, SharedDir, Vm, Volume};
use capsule_protocol::Client;

/// How long one agent call may take before the CLI gives up (override: CAPSULE_AGENT_TIMEOUT,
/// in seconds).
pub fn agent_timeout() -> Duration {
    std::env::var("CAPSULE_AGENT_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(30))
}

/// Opens VM `name`.
pub fn open_vm(name: &str) -> Result<Vm> {
    Ok(Vm::open(name, agent_timeout())?)
}

/// Opens VM `name` and connects to its agent; fails with the VM's state when it is not running.
pub fn agent(name: &str) -> Result<(Vm, Client)> {
    let vm = open_vm(name)?;
    let client = vm.agent()?;
    Ok((vm, client))
}

use capsule_protocol::container::{self as wire, flags};
use capsule_protocol::pb;

/// `--container`/`-c`: the container of VM `vm` a command acts on; by default the VM's own
/// (the one `create` made, named like the VM).
pub fn container_or_vm<'a>(vm: &'a str, container: &'a Option<String>) -> &'a str {
    container.as_deref().unwrap_or(vm)
}

/// Parses `--share-ns TYPE=CONTAINER[,...]` (`net=pod,ipc=pod,uts=pod`).
pub fn parse_share_ns(spec: &str) -> Result<Vec<pb::NamespaceShare>> {
    wire::parse_share_ns(spec).map_err(|why| anyhow::anyhow!("invalid --share-ns: {why}"))
}

/// Parses a device list (`c 1:3,c 136:*,b 254:0`; `all` or empty: no list).
pub fn parse_devices(option: &str, spec: &str) -> Result<Vec<pb::DeviceRule>> {
    if spec.trim() == "all" {
        return Ok(Vec::new());
    }
    wire::parse_device_rules(spec).map_err(|why| anyhow::anyhow!("invalid {option}: {why}"))
}

/// The help text of a device-list argument.
pub const DEVICES_HELP: &str = "Device numbers the container's members may open: \
    comma-separated TYPE MAJOR:MINOR rules, TYPE c (character) or b (block), MINOR a number or \
    * for every minor, e.g. 'c 1:3,c 1:5,c 136:*'; opening any other device node fails with \
    EPERM inside the container. 'all' (or empty) removes the list.";
pub use capsule_protocol::container::{DEFAULT_FLAGS, FLAG_NAMES};

/// Parses `--flags`: comma-separated names from [`FLAG_NAMES`], or a number (0x... or decimal).
pub fn parse_flags(spec: &str) -> Result<u32> {
    let spec = spec.trim();
    let bits = if let Some(hex) = spec.strip_prefix("0x") {
        u32::from_str_radix(hex, 16).with_context(|| format!("invalid --flags {spec:?}"))?
    } else if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        spec.parse()
            .with_context(|| format!("invalid --flags {spec:?}"))?
    } else {
        let mut bits = 0;
        for name in spec.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some((_, bit)) = FLAG_NAMES.iter().find(|(n, _)| *n == name) else {
                let known: Vec<_> = FLAG_NAMES.iter().map(|(n, _)| *n).collect();
                bail!(
                    "invalid --flags: unknown flag {name:?} (known: {})",
                    known.join(", ")
                );
            };
            bits |= bit;
        }
        bits
    };
    if bits & !flags::MASK != 0 {
        bail!(
            "invalid --flags {spec:?}: unknown bits {:#x}",
            bits & !flags::MASK
        );
    }
    if bits & flags::NEW_FS_NS != 0 && bits & flags::NEW_EMPTY_FS_NS != 0 {
        bail!("invalid --flags {spec:?}: fs (copy the mount namespace) and empty-fs exclude each other");
    }
    Ok(bits)
}

/// Parses a `TYPE:DESCRIPTION=FILE` key specification, reading the file.
pub fn parse_key(spec: &str) -> Result<Key> {
    let bad = || format!("invalid key {spec:?}: expected TYPE:DESCRIPTION=FILE");
    let (type_desc, file) = spec.split_once('=').with_context(bad)?;
    let (key_type, description) = type_desc.split_once(':').with_context(bad)?;
    if key_type.is_empty() || description.is_empty() || file.is_empty() {
        bail!(bad());
    }
    let payload = std::fs::read(file)
        .with_context(|| format!("cannot read the payload of key {type_desc:?} from {file}"))?;
    Ok(Key {
        key_type: key_type.to_string(),
        description: description.to_string(),
        payload,
    })
}

/// Parses a `IMAGE:/path[:ro]` volume.
pub fn parse_volume(spec: &str) -> Result<Volume> {
    let (rest, read_only) = match spec.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (spec.strip_suffix(":rw").unwrap_or(spec), false),
    };
    let Some((image, target)) = rest.rsplit_once(':') else {
        bail!("invalid --volume {spec:?}: expected IMAGE:/path[:ro]");
    };
    if !target.starts_with('/') || image.is_empty() {
        bail!(
            "invalid --volume {spec:?}: the target must be an absolute path inside the container"
        );
    }
    Ok(Volume {
        image: PathBuf::from(image),
        target: target.to_string(),
        read_only,
    })
}

/// Parses a `HOST_DIR:/path[:ro]` share (the library checks the directory and the target).
pub fn parse_share(spec: &str) -> Result<SharedDir> {
    let (rest, read_only) = match spec.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (spec.strip_suffix(":rw").unwrap_or(spec), false),
    };
    let Some((host_dir, target)) = rest.rsplit_once(':') else {
        bail!("invalid --share {spec:?}: expected HOST_DIR:/path[:ro]");
    };
    if host_dir.is_empty() {
        bail!("invalid --share {spec:?}: the host directory is empty");
    }
    Ok(SharedDir {
        host_dir: PathBuf::from(host_dir),
        target: target.to_string(),
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_by_name_and_number() {
        assert_eq!(parse_flags(DEFAULT_FLAGS).unwrap(), 0x0dd);
        assert_eq!(parse_flags("0x140").unwrap(), 0x140);
        assert_eq!(parse_flags("8").unwrap(), 8);
        assert_eq!(parse_flags("").unwrap(), 0);
        assert!(parse_flags("pid,bogus")
            .unwrap_err()
            .to_string()
            .contains("bogus"));
        assert!(parse_flags("0x800")
            .unwrap_err()
            .to_string()
            .contains("unknown bits"));
        assert!(parse_flags("fs,empty-fs").is_err());
    }

    #[test]
    fn share_ns_and_devices_name_the_option() {
        assert_eq!(parse_share_ns("net=pod,ipc=pod").unwrap().len(), 2);
        let e = parse_share_ns("time=pod").unwrap_err().to_string();
        assert!(e.contains("--share-ns") && e.contains("time"), "{e}");
        assert_eq!(
            parse_devices("--devices", "c 1:3, b 254:*").unwrap().len(),
            2
        );
        assert!(parse_devices("--devices", "all").unwrap().is_empty());
        let e = parse_devices("--devices", "c 1:3 rw")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--devices") && e.contains("c 1:3 rw"), "{e}");
        assert_eq!(container_or_vm("vm", &None), "vm");
        assert_eq!(container_or_vm("vm", &Some("web".into())), "web");
    }

    #[test]
    fn volumes() {
        assert_eq!(
            parse_volume("/img/data.ext4:/data:ro").unwrap(),
            Volume {
                image: "/img/data.ext4".into(),
                target: "/data".into(),
                read_only: true
            }
        );
        assert!(!parse_volume("d.img:/x").unwrap().read_only);
        assert!(parse_volume("d.img").is_err());
        assert!(parse_volume("d.img:relative").is_err());
    }

    #[test]
    fn shares() {
        assert_eq!(
            parse_share("./site:/srv:ro").unwrap(),
            SharedDir {
                host_dir: "./site".into(),
                target: "/srv".into(),
                read_only: true
            }
        );
        let rw = parse_share("/a:b:/data").unwrap();
        assert_eq!((rw.host_dir.to_str(), rw.read_only), (Some("/a:b"), false));
        assert!(parse_share("/site").is_err());
        assert!(parse_share(":/srv").is_err());
        // A relative target is the library's to refuse (VmSpec::check), with the share named.
        assert_eq!(parse_share("/site:srv").unwrap().target, "srv");
    }

    #[test]
    fn keys_need_type_description_and_a_readable_file() {
        assert!(parse_key("user:x").is_err());
        assert!(parse_key(":x=/etc/hostname").is_err());
        let err = parse_key("user:x=/nonexistent/file").unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/file"));
    }
}
