//! Container networks on the host: a bridge per network with the gateway address, NAT to the
//! outside and published ports through nftables ([`firewall`]), addresses from the network's
//! subnet ([`ipam`]) recorded as leases ([`store`]), and one TAP per VM on the bridge
//! ([`link`]).
//!
//! Lifetimes: a network's definition lives until `capsule network rm`; a VM's lease from its
//! create to its rm; its TAP and published ports while it runs ([`activate`] /
//! [`deactivate`], called by its supervisor). A bridge and its rules exist only while some VM
//! of the network runs, so an idle host has nothing of capsule's on it. The network `default`
//! (bridge `capsule0`, 10.88.0.0/16) is defined on first use.

pub mod firewall;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod publish;
pub mod store;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use ipam::{IpamError, Subnet};
use publish::{Publish, PublishError};
use store::{Lease, Locked, NetworkSpec, Store, StoreError};

pub use firewall::FirewallError;
pub use link::LinkError;

/// The network a VM joins unless told otherwise.
pub const DEFAULT_NETWORK: &str = "default";
/// The default network's bridge and subnet.
pub const DEFAULT_BRIDGE: &str = "capsule0";
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
/// MTU of every capsule network.
pub const MTU: u32 = 1500;

/// Why a network operation failed; each names the network, address or port.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("invalid network name {0:?}: use 1 to 32 of a-z, 0-9 and -, starting with a letter or digit")]
    Name(String),
    #[error("network {0} does not exist (`capsule network ls` lists them)")]
    Unknown(String),
    #[error("network {0} exists")]
    Exists(String),
    #[error("subnet {subnet} overlaps network {other} ({other_subnet})")]
    OverlapsNetwork {
        subnet: Subnet,
        other: String,
        other_subnet: Subnet,
    },
    #[error("subnet {subnet} overlaps the host's route to {route} on {device}")]
    OverlapsRoute {
        subnet: Subnet,
        route: String,
        device: String,
    },
    #[error("no free /24 left in 10.89.0.0/16 for a new network: give one with --subnet")]
    NoFreeSubnet,
    #[error("network {network} is used by VM(s) {vms}: remove them first (`capsule rm`)")]
    InUse { network: String, vms: String },
    #[error("--ip needs a network (it was given with --net none)")]
    AddressWithoutNetwork,
    #[error("--publish needs a network (it was given with --net none)")]
    PublishWithoutNetwork,
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
}

/// A VM's place on a network, kept in its `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub bridge: String,
    pub subnet: Subnet,
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mac: [u8; 6],
    pub tap: String,
    #[serde(default)]
    pub publish: Vec<Publish>,
    pub mtu: u32,
    /// A network namespace made by someone else (`--netns`): the VM's TAP is joined to its
    /// interface (`bridge` names it) and takes its address; no lease, bridge or rule.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

/// What a create asks of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub network: String,
    pub address: Option<Ipv4Addr>,
    pub publish: Vec<Publish>,
}

/// Where a new VM's NIC goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Join {
    /// A capsule network (`--net`).
    Network(AttachRequest),
    /// A network namespace made by someone else (`--netns`).
    Netns(PathBuf),
}

impl Join {
    /// Checks without changing anything ([`check`], or the namespace's interface).
    pub fn check(&self, store: &Store) -> Result<(), NetworkError> {
        match self {
            Join::Network(req) => check(store, req),
            Join::Netns(path) => netns::inspect(path).map(drop).map_err(Into::into),
        }
    }

    /// The VM's attachment: a lease on the network ([`reserve`]), or the namespace's
    /// interface.
    pub fn attach(
        &self,
        store: &Store,
        vm: &str,
        state_dir: &Path,
    ) -> Result<Attachment, NetworkError> {
        match self {
            Join::Network(req) => reserve(store, req, vm, state_dir),
            Join::Netns(path) => netns_attachment(path),
        }
    }
}

/// A network and who uses it, for `capsule network ls`.
#[derive(Debug, Clone)]
pub struct NetworkInfo {
    pub spec: NetworkSpec,
    /// (VM, address) of every lease.
    pub vms: Vec<(String, Ipv4Addr)>,
    /// Whether its bridge is up.
    pub active: bool,
}

/// Network names: like VM names, but short enough for the kernel's 15-byte link names.
pub fn validate_network_name(name: &str) -> Result<(), NetworkError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NetworkError::Name(name.to_string()))
    }
}

/// The host's routes with a prefix of /8 or longer, as (`address/prefix`, device), from
/// /proc/net/route (a default route overlaps everything and is no conflict).
fn host_routes() -> Vec<(Ipv4Addr, u8, String)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // The kernel prints each address as the native-endian value of its network-order
            // bytes.
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            let prefix = mask.count_ones() as u8;
            (prefix >= ipam::MIN_PREFIX)
                .then(|| (Ipv4Addr::from(dest.to_ne_bytes()), prefix, f[0].to_string()))
        })
        .collect()
}

/// Checks that `subnet` overlaps no other network and no host route except the network's own
/// bridge.
fn check_subnet(
    locked: &Locked<'_>,
    name: &str,
    subnet: Subnet,
    bridge: &str,
) -> Result<(), NetworkError> {
    for other in locked.networks()? {
        if other.name != name && other.subnet.overlaps(&subnet) {
            return Err(NetworkError::OverlapsNetwork {
                subnet,
                other: other.name,
                other_subnet: other.subnet,
            });
        }
    }
    let bridges: BTreeSet<String> = locked.networks()?.into_iter().map(|n| n.bridge).collect();
    for (addr, prefix, device) in host_routes() {
        if device != bridge && !bridges.contains(&device) && subnet.overlaps_range(addr, prefix) {
            return Err(NetworkError::OverlapsRoute {
                subnet,
                route: format!("{addr}/{prefix}"),
                device,
            });
        }
    }
    Ok(())
}

fn free_bridge_name(locked: &Locked<'_>) -> Result<String, NetworkError> {
    let used: BTreeSet<String> = locked.networks()?.into_iter().map(|n| n.bridge).collect();
    Ok((1..)
        .map(|n| format!("capsule{n}"))
        .find(|b| !used.contains(b) && !link::exists(b))
        .expect("an unused bridge name"))
}

fn define(
    locked: &Locked<'_>,
    name: &str,
    subnet: Option<Subnet>,
) -> Result<NetworkSpec, NetworkError> {
    let bridge = if name == DEFAULT_NETWORK {
        DEFAULT_BRIDGE.to_string()
    } else {
        free_bridge_name(locked)?
    };
    let subnet = match subnet {
        Some(s) => s,
        None if name == DEFAULT_NETWORK => DEFAULT_SUBNET.parse().expect("default subnet"),
        None => (0..=255u8)
            .map(|n| Subnet::new(Ipv4Addr::new(10, 89, n, 0), 24).expect("a /24"))
            .find(|s| check_subnet(locked, name, *s, &bridge).is_ok())
            .ok_or(NetworkError::NoFreeSubnet)?,
    };
    check_subnet(locked, name, subnet, &bridge)?;
    let spec = NetworkSpec {
        name: name.to_string(),
        subnet,
        bridge,
    };
    locked.write_network(&spec)?;
    Ok(spec)
}

/// Reclaims leases whose VM is gone (its state directory was removed, or wiped by a reboot).
fn reclaim_stale(locked: &Locked<'_>, network: &NetworkSpec) -> Result<Vec<Lease>, NetworkError> {
    let mut live = Vec::new();
    for lease in locked.leases(&network.name)? {
        if lease.state_dir.is_dir() {
            live.push(lease);
        } else {
            log::info!(
                "network {}: reclaiming {} of VM {} (its state is gone)",
                network.name,
                lease.address,
                lease.vm
            );
            link::delete(&lease.tap)?;
            locked.remove_lease(&network.name, lease.address)?;
        }
    }
    Ok(live)
}

/// The network directory of this host.
pub fn store() -> Store {
    Store::new(Store::default_dir())
}

/// `capsule network create NAME [--subnet CIDR]`.
pub fn create(
    store: &Store,
    name: &str,
    subnet: Option<Subnet>,
) -> Result<NetworkSpec, NetworkError> {
    validate_network_name(name)?;
    let locked = store.lock()?;
    if locked.network(name)?.is_some() {
        return Err(NetworkError::Exists(name.to_string()));
    }
    define(&locked, name, subnet)
}

/// `capsule network ls`.
pub fn list(store: &Store) -> Result<Vec<NetworkInfo>, NetworkError> {
    let locked = store.lock()?;
    let mut out = Vec::new();
    for spec in locked.networks()? {
        let vms = reclaim_stale(&locked, &spec)?
            .into_iter()
            .map(|l| (l.vm, l.address))
            .collect();
        let active = link::exists(&spec.bridge);
        out.push(NetworkInfo { spec, vms, active });
    }
    Ok(out)
}

/// `capsule network rm NAME`: refused while a VM has an address on it.
pub fn remove(store: &Store, name: &str) -> Result<(), NetworkError> {
    let locked = store.lock()?;
    let spec = locked
        .network(name)?
        .ok_or_else(|| NetworkError::Unknown(name.to_string()))?;
    let live = reclaim_stale(&locked, &spec)?;
    if !live.is_empty() {
        let vms = live.iter().map(|l| l.vm.as_str()).collect::<Vec<_>>();
        return Err(NetworkError::InUse {
            network: name.to_string(),
            vms: vms.join(", "),
        });
    }
    link::delete(&spec.bridge)?;
    locked.remove_network(name)?;
    sync_firewall(&locked)
}

/// Checks a request without changing anything: the network exists (or is the default), the
/// address fits and is free, the published ports are free.
pub fn check(store: &Store, req: &AttachRequest) -> Result<(), NetworkError> {
    let locked = store.lock()?;
    plan(&locked, req, None).map(drop)
}

/// Picks the address and the TAP; checks everything [`check`] does.
fn plan(
    locked: &Locked<'_>,
    req: &AttachRequest,
    state_dir: Option<&Path>,
) -> Result<(NetworkSpec, Ipv4Addr), NetworkError> {
    validate_network_name(&req.network)?;
    let spec = match locked.network(&req.network)? {
        Some(spec) => spec,
        None if req.network == DEFAULT_NETWORK => match state_dir {
            Some(_) => define(locked, DEFAULT_NETWORK, None)?,
            // A check only: the default network would be defined like this.
            None => {
                let subnet: Subnet = DEFAULT_SUBNET.parse().expect("default subnet");
                check_subnet(locked, DEFAULT_NETWORK, subnet, DEFAULT_BRIDGE)?;
                NetworkSpec {
                    name: DEFAULT_NETWORK.into(),
                    subnet,
                    bridge: DEFAULT_BRIDGE.into(),
                }
            }
        },
        None => return Err(NetworkError::Unknown(req.network.clone())),
    };
    publish::check_unique(&req.publish)?;
    // Ports published by any VM of any network.
    for net in locked.networks()? {
        for lease in locked.leases(&net.name)? {
            if !lease.state_dir.is_dir() {
                continue;
            }
            for p in &req.publish {
                if lease
                    .publish
                    .iter()
                    .any(|q| q.host_port == p.host_port && q.protocol == p.protocol)
                {
                    return Err(PublishError::Published {
                        port: p.host_side(),
                        owner: lease.vm.clone(),
                    }
                    .into());
                }
            }
        }
    }
    for p in &req.publish {
        p.check_host_port_free()?;
    }
    let leases: Vec<Lease> = locked
        .leases(&spec.name)?
        .into_iter()
        .filter(|l| l.state_dir.is_dir())
        .collect();
    let address = match req.address {
        Some(addr) => {
            spec.subnet.check_vm_address(addr, &spec.name)?;
            if let Some(owner) = leases.iter().find(|l| l.address == addr) {
                return Err(IpamError::Taken {
                    addr,
                    network: spec.name.clone(),
                    owner: owner.vm.clone(),
                }
                .into());
            }
            addr
        }
        None => {
            let taken = leases.iter().map(|l| l.address).collect();
            spec.subnet.first_free(&taken, &spec.name)?
        }
    };
    Ok((spec, address))
}

/// The TAP of a VM with `address`: `capt` and the address in hex, unique on the host because
/// networks do not overlap, and within the kernel's 15 bytes.
pub fn tap_name(address: Ipv4Addr) -> String {
    format!("capt{:08x}", u32::from(address))
}

/// Gives VM `vm` (state directory `state_dir`) its address: writes its lease.
pub fn reserve(
    store: &Store,
    req: &AttachRequest,
    vm: &str,
    state_dir: &Path,
) -> Result<Attachment, NetworkError> {
    let locked = store.lock()?;
    if let Some(spec) = locked.network(&req.network)? {
        reclaim_stale(&locked, &spec)?;
    }
    let (spec, address) = plan(&locked, req, Some(state_dir))?;
    let tap = tap_name(address);
    locked.write_lease(
        &spec.name,
        &Lease {
            address,
            vm: vm.to_string(),
            state_dir: state_dir.to_path_buf(),
            tap: tap.clone(),
            publish: req.publish.clone(),
            active: false,
        },
    )?;
    Ok(Attachment {
        network: spec.name.clone(),
        bridge: spec.bridge.clone(),
        subnet: spec.subnet,
        address,
        gateway: spec.subnet.gateway(),
        mac: ipam::mac_for(address),
        tap,
        publish: req.publish.clone(),
        mtu: MTU,
        netns: None,
    })
}

/// A VM's place in the network namespace at `path` (`--netns`): the interface of its default
/// route, whose address and MAC the guest takes.
pub fn netns_attachment(path: &Path) -> Result<Attachment, NetworkError> {
    let pod = netns::inspect(path)?;
    Ok(Attachment {
        network: format!("netns {}", path.display()),
        bridge: pod.name.clone(),
        subnet: pod.subnet,
        address: pod.address,
        gateway: pod.gateway,
        mac: pod.mac,
        tap: tap_name(pod.address),
        publish: Vec::new(),
        mtu: pod.mtu,
        netns: Some(path.to_path_buf()),
    })
}

fn pod_interface(att: &Attachment) -> netns::PodInterface {
    netns::PodInterface {
        name: att.bridge.clone(),
        mac: att.mac,
        address: att.address,
        subnet: att.subnet,
        gateway: att.gateway,
        mtu: att.mtu,
    }
}

/// Brings the VM's side up before its machine starts: the bridge (and its rules) if it was
/// down, the VM's TAP on it, its published ports.
pub fn activate(store: &Store, att: &Attachment) -> Result<(), NetworkError> {
    if let Some(path) = &att.netns {
        return netns::attach(path, &pod_interface(att), &att.tap).map_err(Into::into);
    }
    let locked = store.lock()?;
    let result = (|| {
        link::bridge_up(&att.bridge, att.gateway, att.subnet.prefix())?;
        link::tap_add(&att.tap, &att.bridge)?;
        set_active(&locked, att, true)?;
        sync_firewall(&locked)
    })();
    if result.is_err() {
        let _ = set_active(&locked, att, false);
        let _ = teardown(&locked, att);
    }
    result
}

/// Takes the VM's side down once its machine ended: its TAP and ports, and the bridge with its
/// rules when no other VM of the network runs.
pub fn deactivate(store: &Store, att: &Attachment) -> Result<(), NetworkError> {
    if let Some(path) = &att.netns {
        return netns::detach(path, &pod_interface(att), &att.tap).map_err(Into::into);
    }
    let locked = store.lock()?;
    set_active(&locked, att, false)?;
    teardown(&locked, att)
}

/// Gives the VM's address back (at `capsule rm`), after taking its side down.
pub fn release(store: &Store, att: &Attachment) -> Result<(), NetworkError> {
    if att.netns.is_some() {
        return deactivate(store, att);
    }
    let locked = store.lock()?;
    let _ = set_active(&locked, att, false);
    let down = teardown(&locked, att);
    locked.remove_lease(&att.network, att.address)?;
    down
}

fn set_active(locked: &Locked<'_>, att: &Attachment, active: bool) -> Result<(), NetworkError> {
    let lease = locked
        .leases(&att.network)?
        .into_iter()
        .find(|l| l.address == att.address && l.tap == att.tap);
    match lease {
        Some(mut lease) => {
            lease.active = active;
            locked.write_lease(&att.network, &lease)?;
            Ok(())
        }
        None if !active => Ok(()),
        None => Err(NetworkError::Unknown(format!(
            "{} (no lease for {})",
            att.network, att.address
        ))),
    }
}

fn teardown(locked: &Locked<'_>, att: &Attachment) -> Result<(), NetworkError> {
    link::delete(&att.tap)?;
    let others_run = locked.leases(&att.network)?.iter().any(|l| l.active);
    if !others_run && link::bridge_is_empty(&att.bridge) {
        link::delete(&att.bridge)?;
    }
    sync_firewall(locked)
}

/// Rewrites capsule's nftables table from the store: every network whose bridge is up and
/// every published port of a running VM.
fn sync_firewall(locked: &Locked<'_>) -> Result<(), NetworkError> {
    let mut networks = Vec::new();
    let mut publishes = Vec::new();
    for spec in locked.networks()? {
        if !link::exists(&spec.bridge) {
            continue;
        }
        for lease in locked.leases(&spec.name)? {
            if lease.active {
                publishes.extend(lease.publish.iter().map(|p| firewall::ActivePublish {
                    address: lease.address,
                    publish: *p,
                }));
            }
        }
        networks.push(firewall::ActiveNetwork {
            bridge: spec.bridge,
            subnet: spec.subnet,
        });
    }
    let script = firewall::script(&networks, &publishes);
    // With nothing active and no nft installed there is nothing to remove.
    if networks.is_empty() && publishes.is_empty() {
        return match firewall::apply(&script) {
            Err(FirewallError::Missing) => Ok(()),
            other => other.map_err(Into::into),
        };
    }
    firewall::apply(&script).map_err(Into::into)
}

/// The host's DNS servers a VM can reach through the NAT: the `nameserver` lines of the host's
/// resolv.conf, without loopback ones (a local stub resolver is not reachable from a VM).
pub fn host_nameservers(resolv_conf: &Path) -> Vec<Ipv4Addr> {
    std::fs::read_to_string(resolv_conf)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next())?
        })
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// Where the network state of tests and tools lives by default.
pub fn default_dir() -> PathBuf {
    Store::default_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_link_rules() {
        assert!(validate_network_name("web-1").is_ok());
        for bad in ["", "-a", "A", "a_b", &"x".repeat(33)] {
            assert!(validate_network_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tap_names_are_unique_and_short() {
        let t = tap_name(Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(t, "capt0a580002");
        assert!(t.len() <= link::MAX_IFNAME);
    }

    #[test]
    fn nameservers_skip_loopback() {
        let dir = std::env::temp_dir().join(format!("capsule-resolv-{}", std::process::id()));
        std::fs::write(
            &dir,
            "# x\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nsearch lan\nnameserver ::1\n",
        )
        .unwrap();
        assert_eq!(
            host_nameservers(&dir),
            vec![Ipv4Addr::new(10, 255, 255, 53)]
        );
        std::fs::remove_file(dir).unwrap();
    }

    /// A store in a scratch directory, and VM state directories that exist.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("capsule-net-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("vms")).unwrap();
            Scratch(dir)
        }

        fn store(&self) -> Store {
            Store::new(self.0.join("networks"))
        }

        fn vm(&self, name: &str) -> PathBuf {
            let d = self.0.join("vms").join(name);
            std::fs::create_dir_all(&d).unwrap();
            d
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn on(network: &str, address: Option<&str>) -> AttachRequest {
        AttachRequest {
            network: network.into(),
            address: address.map(|a| a.parse().unwrap()),
            publish: Vec::new(),
        }
    }

    // Only definitions and leases are touched below: nothing creates links or rules.
    #[test]
    fn leases_are_unique_named_and_reclaimed() {
        let s = Scratch::new("leases");
        let store = s.store();
        create(&store, "n", Some("10.77.200.0/30".parse().unwrap())).unwrap();
        let a = reserve(&store, &on("n", None), "a", &s.vm("a")).unwrap();
        assert_eq!(a.address, Ipv4Addr::new(10, 77, 200, 2));
        assert_eq!(a.gateway, Ipv4Addr::new(10, 77, 200, 1));
        assert_eq!(a.tap, "capt0a4dc802");
        let full = reserve(&store, &on("n", None), "b", &s.vm("b")).unwrap_err();
        assert_eq!(
            full.to_string(),
            "network n (10.77.200.0/30) has no free address left"
        );
        let taken = check(&store, &on("n", Some("10.77.200.2"))).unwrap_err();
        assert_eq!(
            taken.to_string(),
            "address 10.77.200.2 of network n is taken by VM a"
        );
        let outside = check(&store, &on("n", Some("10.77.201.2"))).unwrap_err();
        assert!(
            outside.to_string().contains("outside network n's subnet"),
            "{outside}"
        );
        let gw = check(&store, &on("n", Some("10.77.200.1"))).unwrap_err();
        assert!(gw.to_string().contains("the gateway address"), "{gw}");
        let unknown = check(&store, &on("nope", None)).unwrap_err();
        assert!(matches!(unknown, NetworkError::Unknown(_)));
        let in_use = remove(&store, "n").unwrap_err();
        assert_eq!(
            in_use.to_string(),
            "network n is used by VM(s) a: remove them first (`capsule rm`)"
        );
        // The VM's state goes (a reboot, or rm): its address is free again.
        std::fs::remove_dir_all(s.vm("a")).unwrap();
        let b = reserve(&store, &on("n", None), "b", &s.vm("b")).unwrap();
        assert_eq!(b.address, a.address);
    }

    #[test]
    fn published_ports_are_unique_across_vms() {
        let s = Scratch::new("publish");
        let store = s.store();
        create(&store, "p", Some("10.77.201.0/24".parse().unwrap())).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut req = on("p", None);
        req.publish = vec![format!("{port}:80").parse().unwrap()];
        reserve(&store, &req, "web", &s.vm("web")).unwrap();
        let again = check(&store, &req).unwrap_err();
        assert_eq!(
            again.to_string(),
            format!("host port {port}/tcp is already published by VM web")
        );
    }

    #[test]
    fn definitions_refuse_overlaps_and_duplicates() {
        let s = Scratch::new("define");
        let store = s.store();
        let a = create(&store, "a", Some("10.77.202.0/24".parse().unwrap())).unwrap();
        assert!(a.bridge.starts_with("capsule") && a.bridge.len() <= link::MAX_IFNAME);
        assert!(matches!(
            create(&store, "a", None),
            Err(NetworkError::Exists(_))
        ));
        let e = create(&store, "b", Some("10.77.0.0/16".parse().unwrap())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet 10.77.0.0/16 overlaps network a (10.77.202.0/24)"
        );
        let auto = create(&store, "c", None).unwrap();
        assert_eq!(auto.subnet.prefix(), 24);
        assert_ne!(auto.bridge, a.bridge);
    }

    #[test]
    fn host_routes_parse_proc_net_route() {
        // Whatever the host has, every parsed route is a valid subnet with prefix >= 8.
        for (addr, prefix, dev) in host_routes() {
            assert!(
                (ipam::MIN_PREFIX..=32).contains(&prefix),
                "{addr}/{prefix} on {dev}"
            );
        }
    }
}
