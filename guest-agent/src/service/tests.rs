//! The service against a test-double backend: validation before the backend, tables, errors.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use capsule_protocol::methods::{self as m, Method};
use capsule_protocol::{pb, Code, RpcError};
use prost::Message;

use super::Agent;
use crate::backend::{
    Backend, BackendError, Container, ContainerRow, CreateSpec, Device, Forked, MountSpec, NsShare,
};
use crate::lock::lock;
use crate::reaper::{ExitStatus, Reaper};
use crate::transport::Transport;

/// A backend that records what it is asked and forks nothing.
#[derive(Default)]
struct FakeBackend {
    log: Arc<Mutex<Vec<String>>>,
}

struct FakeContainer {
    log: Arc<Mutex<Vec<String>>>,
    frozen: AtomicBool,
}

impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn create(&self, spec: &CreateSpec, _: &Reaper) -> crate::backend::Result<Box<dyn Container>> {
        lock(&self.log).push(format!(
            "create {} {:#x} {:?}",
            spec.name, spec.flags, spec.root
        ));
        for share in &spec.shares {
            lock(&self.log).push(format!(
                "create-share {} from {}",
                share.ns_name, share.from
            ));
        }
        Ok(Box::new(FakeContainer {
            log: self.log.clone(),
            frozen: AtomicBool::new(false),
        }))
    }
    fn list(&self) -> Option<crate::backend::Result<Vec<ContainerRow>>> {
        None
    }
}

impl Container for FakeContainer {
    fn id(&self) -> u64 {
        7
    }
    fn init_pid(&self) -> libc::pid_t {
        42
    }
    fn take_init_exit(&mut self) -> Option<tokio::sync::oneshot::Receiver<ExitStatus>> {
        None
    }
    fn fork_into(&self, _: &Reaper, _: &mut dyn FnMut() -> i32) -> crate::backend::Result<Forked> {
        Err(BackendError::new(libc::EPERM, "fake cannot fork").field("container"))
    }
    fn session_keyring_name(&self) -> Option<&CString> {
        None
    }
    fn mount(&self, spec: &MountSpec, _: &Reaper) -> crate::backend::Result<()> {
        lock(&self.log).push(format!(
            "mount {} {} {}",
            spec.fstype, spec.source, spec.target
        ));
        Ok(())
    }
    fn socket(&self, _: i32, _: i32) -> crate::backend::Result<OwnedFd> {
        Err(BackendError::new(
            libc::EAFNOSUPPORT,
            "no sockets in the fake",
        ))
    }
    fn kill(&self, signal: i32) -> crate::backend::Result<()> {
        lock(&self.log).push(format!("kill {signal}"));
        Ok(())
    }
    fn freeze(&self) -> crate::backend::Result<()> {
        self.frozen.store(true, Ordering::Release);
        Ok(())
    }
    fn thaw(&self) -> crate::backend::Result<()> {
        self.frozen.store(false, Ordering::Release);
        Ok(())
    }
    fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }
    fn keyring(&self) -> crate::backend::Result<i32> {
        Err(BackendError::new(libc::ENOKEY, "no keyring in the fake"))
    }
    fn procs(&self) -> Vec<libc::pid_t> {
        vec![42]
    }
    fn cgroup_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    fn cleanup(&self) {}
    fn ns_fd(&self) -> crate::backend::Result<OwnedFd> {
        std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|_| BackendError::new(libc::EMFILE, "no fd"))
    }
    fn set_namespace(&self, share: &NsShare) -> crate::backend::Result<()> {
        lock(&self.log).push(format!(
            "setns {} {:#x} from {}",
            share.ns_name, share.nstype, share.from
        ));
        if share.ns_name == "pid" {
            return Err(BackendError::new(
                libc::EBUSY,
                "the pid namespace cannot be changed any more",
            ));
        }
        Ok(())
    }
    fn set_cgroup(&self, dir: &std::path::Path) -> crate::backend::Result<()> {
        lock(&self.log).push(format!("cgroup {}", dir.display()));
        Ok(())
    }
    fn set_root(&self, path: &str) -> crate::backend::Result<()> {
        lock(&self.log).push(format!("root {path}"));
        Ok(())
    }
    fn set_policy(&self, lsm: &str, policy: &[u8]) -> crate::backend::Result<()> {
        lock(&self.log).push(format!("policy {lsm} {}", String::from_utf8_lossy(policy)));
        Ok(())
    }
    fn set_devices(&self, devices: &[Device]) -> crate::backend::Result<()> {
        lock(&self.log).push(format!("devices {devices:?}"));
        Ok(())
    }
}

fn agent() -> (Arc<Agent>, Arc<Mutex<Vec<String>>>) {
    let b = FakeBackend::default();
    let log = b.log.clone();
    (
        Agent::new(
            Box::new(b),
            Arc::new(Reaper::new()),
            Transport::Unix("/nonexistent".into()),
        ),
        log,
    )
}

async fn call<M: Method>(a: &Arc<Agent>, req: M::Request) -> Result<M::Response, RpcError> {
    let out = a.handle(M::SERVICE, M::NAME, &req.encode_to_vec()).await?;
    Ok(M::Response::decode(&out[..]).unwrap())
}

fn create(name: &str, flags: u32) -> pb::CreateContainerRequest {
    pb::CreateContainerRequest {
        name: name.into(),
        flags,
        ..Default::default()
    }
}

#[tokio::test]
async fn create_validates_and_refuses_duplicates() {
    let (a, log) = agent();
    let r = call::<m::CreateContainer>(&a, create("web", 0x49))
        .await
        .unwrap();
    assert_eq!((r.id, r.init_pid), (7, 42));
    assert_eq!(lock(&log)[0], "create web 0x49 Shared");
    let e = call::<m::CreateContainer>(&a, create("web", 0))
        .await
        .unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (Code::AlreadyExists, "name"));
    let e = call::<m::CreateContainer>(&a, create("bad/name", 0))
        .await
        .unwrap_err();
    assert_eq!(e.field, "name");
    let e = call::<m::CreateContainer>(&a, create("f", 0x800))
        .await
        .unwrap_err();
    assert_eq!(e.field, "flags");
    let e = call::<m::CreateContainer>(&a, create("f", 0x3))
        .await
        .unwrap_err();
    assert_eq!(e.field, "flags");
    let mut block = create("b", 0);
    block.root = pb::RootKind::RootBlock as i32;
    block.root_source = "/dev/vdb".into();
    block.root_fstype = "ext4".into();
    assert_eq!(
        call::<m::CreateContainer>(&a, block.clone())
            .await
            .unwrap_err()
            .field,
        "flags"
    );
    block.flags = 0x1;
    call::<m::CreateContainer>(&a, block).await.unwrap();
    let mut none = create("n", 0);
    none.root = pb::RootKind::RootNone as i32;
    call::<m::CreateContainer>(&a, none).await.unwrap();
    assert!(
        lock(&log).iter().any(|l| l == "create n 0x2 None"),
        "{:?}",
        lock(&log)
    );
    assert_eq!(
        lock(&log).len(),
        3,
        "rejected requests must not reach the backend"
    );
}

#[tokio::test]
async fn virtiofs_roots_and_mounts_are_validated_by_tag() {
    let (a, log) = agent();
    let mut root = create("fs", 0);
    root.root = pb::RootKind::RootVirtiofs as i32;
    root.root_source = "capsule-root".into();
    root.root_options = "ro".into();
    let e = call::<m::CreateContainer>(&a, root.clone())
        .await
        .unwrap_err();
    assert_eq!(e.field, "flags", "a virtio-fs root needs NEW_FS_NS");
    root.flags = 0x1;
    for bad in ["", &"t".repeat(37), "a tag"] {
        let mut r = root.clone();
        r.root_source = bad.into();
        let e = call::<m::CreateContainer>(&a, r).await.unwrap_err();
        assert_eq!(e.field, "root_source", "tag {bad:?}");
    }
    call::<m::CreateContainer>(&a, root).await.unwrap();
    assert!(
        lock(&log)
            .iter()
            .any(|l| l.starts_with("create fs 0x1") && l.contains("virtiofs")),
        "{:?}",
        lock(&log)
    );
    let mount = |source: &str| pb::MountRequest {
        container: "fs".into(),
        fstype: "virtiofs".into(),
        source: source.into(),
        options: "ro".into(),
        target: "/srv".into(),
        mkdir: true,
        subdir: String::new(),
    };
    let e = call::<m::Mount>(&a, mount("")).await.unwrap_err();
    assert_eq!(e.field, "source");
    call::<m::Mount>(&a, mount("capsule-fs0")).await.unwrap();
}

#[tokio::test]
async fn list_has_current_first_and_the_table_after() {
    let (a, _) = agent();
    call::<m::CreateContainer>(&a, create("b", 0x40))
        .await
        .unwrap();
    call::<m::FreezeContainer>(
        &a,
        pb::ContainerRef {
            container: "b".into(),
        },
    )
    .await
    .unwrap();
    let l = call::<m::ListContainers>(&a, pb::ListContainersRequest {})
        .await
        .unwrap();
    assert_eq!(l.containers.len(), 2);
    assert!(l.containers[0].current && l.containers[0].name == "<current>");
    let b = &l.containers[1];
    assert_eq!(
        (b.name.as_str(), b.id, b.flags, b.state.as_str(), b.current),
        ("b", 7, 0x40, "frozen", false)
    );
    call::<m::ThawContainer>(
        &a,
        pb::ContainerRef {
            container: "b".into(),
        },
    )
    .await
    .unwrap();
    let l = call::<m::ListContainers>(&a, pb::ListContainersRequest {})
        .await
        .unwrap();
    assert_eq!(l.containers[1].state, "running");
}

#[tokio::test]
async fn exec_mount_kill_validate_before_the_backend() {
    let (a, log) = agent();
    let exec = |c: &str, argv: &[&str]| pb::ExecRequest {
        container: c.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let e = call::<m::Exec>(&a, exec("nope", &["true"]))
        .await
        .unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (Code::NotFound, "container"));
    call::<m::CreateContainer>(&a, create("c", 0x1))
        .await
        .unwrap();
    assert_eq!(
        call::<m::Exec>(&a, exec("c", &[])).await.unwrap_err().field,
        "argv"
    );
    let mut bad_env = exec("c", &["true"]);
    bad_env.env = vec!["NOEQUALS".into()];
    assert_eq!(
        call::<m::Exec>(&a, bad_env).await.unwrap_err().field,
        "env[0]"
    );
    let mut bad_cwd = exec("c", &["true"]);
    bad_cwd.cwd = "relative".into();
    assert_eq!(call::<m::Exec>(&a, bad_cwd).await.unwrap_err().field, "cwd");
    // A valid request reaches the backend, whose errno comes back with its field.
    let e = call::<m::Exec>(&a, exec("c", &["true"])).await.unwrap_err();
    assert_eq!((e.errno, e.field.as_str()), (libc::EPERM, "container"));

    let e = call::<m::Mount>(
        &a,
        pb::MountRequest {
            container: "c".into(),
            fstype: "tmpfs".into(),
            target: "rel".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "target");
    call::<m::Mount>(
        &a,
        pb::MountRequest {
            container: "c".into(),
            fstype: "tmpfs".into(),
            source: "none".into(),
            target: "/mnt".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(lock(&log).iter().any(|l| l == "mount tmpfs none /mnt"));

    assert_eq!(
        call::<m::KillContainer>(
            &a,
            pb::KillContainerRequest {
                container: "c".into(),
                signal: 65
            }
        )
        .await
        .unwrap_err()
        .field,
        "signal"
    );
    call::<m::KillContainer>(
        &a,
        pb::KillContainerRequest {
            container: "c".into(),
            signal: 0,
        },
    )
    .await
    .unwrap();
    assert!(lock(&log)
        .iter()
        .any(|l| l == &format!("kill {}", libc::SIGKILL)));

    let e = call::<m::ConnectSocket>(
        &a,
        pb::ConnectSocketRequest {
            container: "c".into(),
            family: 0,
            address: "::1".into(),
            port: 80,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "address");
    let e = call::<m::ConnectSocket>(
        &a,
        pb::ConnectSocketRequest {
            container: "c".into(),
            family: 0,
            address: "127.0.0.1".into(),
            port: 70000,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "port");
    let e = a
        .handle("capsule.agent.v1.Agent", "Nope", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Unimplemented);
}

fn share(ns: pb::NamespaceType, from: &str) -> pb::NamespaceShare {
    pb::NamespaceShare {
        ns: ns as i32,
        from_container: from.into(),
    }
}

#[tokio::test]
async fn create_shares_namespaces_and_sets_devices() {
    let (a, log) = agent();
    call::<m::CreateContainer>(&a, create("pod", 0x9d))
        .await
        .unwrap();
    let mut req = create("web", 0x9d);
    req.share_ns = vec![share(pb::NamespaceType::NsNet, "nope")];
    let e = call::<m::CreateContainer>(&a, req.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        (Code::NotFound, "share_ns[0].from_container")
    );
    req.share_ns = vec![share(pb::NamespaceType::NsUts, "pod")];
    req.hostname = "h".into();
    let e = call::<m::CreateContainer>(&a, req.clone())
        .await
        .unwrap_err();
    assert_eq!(e.field, "hostname");
    req.hostname.clear();
    req.devices = vec![pb::DeviceRule {
        kind: 0,
        major: 5000,
        minor: 0,
        any_minor: false,
    }];
    let e = call::<m::CreateContainer>(&a, req.clone())
        .await
        .unwrap_err();
    assert_eq!(e.field, "devices[0].major");
    req.devices = vec![pb::DeviceRule {
        kind: 0,
        major: 1,
        minor: 3,
        any_minor: false,
    }];
    req.share_ns.push(share(pb::NamespaceType::NsNet, "pod"));
    call::<m::CreateContainer>(&a, req).await.unwrap();
    let log = lock(&log).clone();
    assert!(
        log.contains(&"create-share uts from pod".to_string()),
        "{log:?}"
    );
    assert!(
        log.contains(&"create-share net from pod".to_string()),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("devices [Device { kind: 99, major: 1, minor: Some(3) }]")),
        "{log:?}"
    );
}

#[tokio::test]
async fn container_operations_validate_before_the_backend() {
    let (a, log) = agent();
    call::<m::CreateContainer>(&a, create("a", 0x1))
        .await
        .unwrap();
    call::<m::CreateContainer>(&a, create("b", 0x1))
        .await
        .unwrap();
    let setns = |c: &str, shares: Vec<pb::NamespaceShare>| pb::SetNamespacesRequest {
        container: c.into(),
        shares,
    };
    use pb::NamespaceType::*;
    let e = call::<m::SetNamespaces>(&a, setns("nope", vec![share(NsNet, "a")]))
        .await
        .unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (Code::NotFound, "container"));
    let e = call::<m::SetNamespaces>(&a, setns("b", vec![]))
        .await
        .unwrap_err();
    assert_eq!(e.field, "shares");
    let e = call::<m::SetNamespaces>(&a, setns("b", vec![share(NsNet, "b")]))
        .await
        .unwrap_err();
    assert_eq!(e.field, "shares[0].from_container");
    let e = call::<m::SetNamespaces>(&a, setns("b", vec![share(NsNet, "zz")]))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        (Code::NotFound, "shares[0].from_container")
    );
    call::<m::SetNamespaces>(&a, setns("b", vec![share(NsNet, "a"), share(NsIpc, "a")]))
        .await
        .unwrap();
    // The backend's refusal comes back with its errno and the entry it is about.
    let e = call::<m::SetNamespaces>(&a, setns("b", vec![share(NsUts, "a"), share(NsPid, "a")]))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.errno, e.field.as_str()),
        (Code::FailedPrecondition, libc::EBUSY, "shares[1]")
    );
    assert!(e.message.contains("cannot be changed any more"), "{e}");

    let e = call::<m::SetCgroup>(
        &a,
        pb::SetCgroupRequest {
            container: "b".into(),
            path: "/abs".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "path");
    let e = call::<m::SetRoot>(
        &a,
        pb::SetRootRequest {
            container: "b".into(),
            path: "rel".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "path");
    call::<m::SetRoot>(
        &a,
        pb::SetRootRequest {
            container: "b".into(),
            path: "/srv".into(),
        },
    )
    .await
    .unwrap();
    let policy = |lsm: &str, p: &[u8]| pb::SetPolicyRequest {
        container: "b".into(),
        lsm: lsm.into(),
        policy: p.to_vec(),
    };
    assert_eq!(
        call::<m::SetPolicy>(&a, policy("", b"mkdir"))
            .await
            .unwrap_err()
            .field,
        "lsm"
    );
    assert_eq!(
        call::<m::SetPolicy>(&a, policy("l", &[b'x'; 4097]))
            .await
            .unwrap_err()
            .field,
        "policy"
    );
    call::<m::SetPolicy>(&a, policy("container_test", b"mkdir"))
        .await
        .unwrap();
    let devices = |major| pb::SetDevicesRequest {
        container: "b".into(),
        devices: vec![pb::DeviceRule {
            kind: 1,
            major,
            minor: 0,
            any_minor: true,
        }],
    };
    assert_eq!(
        call::<m::SetDevices>(&a, devices(4096))
            .await
            .unwrap_err()
            .field,
        "devices[0].major"
    );
    call::<m::SetDevices>(&a, devices(254)).await.unwrap();
    let e = call::<m::RebootContainer>(
        &a,
        pb::ContainerRef {
            container: "nope".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (Code::NotFound, "container"));
    // The fake cannot reboot: the mainline answer, naming the operation.
    let e = call::<m::RebootContainer>(
        &a,
        pb::ContainerRef {
            container: "b".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, Code::Unimplemented);
    assert!(e.message.contains("rebooting a container"), "{e}");
    // ... and the container is still there.
    call::<m::SetRoot>(
        &a,
        pb::SetRootRequest {
            container: "b".into(),
            path: "/".into(),
        },
    )
    .await
    .unwrap();

    let log = lock(&log).clone();
    for want in [
        "setns net 0x40000000 from a",
        "setns ipc 0x8000000 from a",
        "root /srv",
        "policy container_test mkdir",
        "devices [Device { kind: 98, major: 254, minor: None }]",
    ] {
        assert!(log.iter().any(|l| l == want), "{want:?} not in {log:?}");
    }
    assert!(!log.iter().any(|l| l.starts_with("cgroup")), "{log:?}");
}

#[tokio::test]
async fn exec_privileges_are_checked_before_the_backend() {
    let (a, _) = agent();
    call::<m::CreateContainer>(&a, create("c", 0x1))
        .await
        .unwrap();
    let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let exec = |tweak: &dyn Fn(&mut pb::ExecRequest)| {
        let mut r = pb::ExecRequest {
            container: "c".into(),
            argv: vec!["true".into()],
            ..Default::default()
        };
        tweak(&mut r);
        r
    };
    let e = call::<m::Exec>(
        &a,
        exec(&|r| {
            r.capabilities = Some(pb::Capabilities {
                effective: names(&["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_BOGUS"]),
                permitted: names(&["CAP_CHOWN", "CAP_KILL", "CAP_SETUID"]),
                ..Default::default()
            })
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        (Code::InvalidArgument, "capabilities.effective[3]")
    );
    assert!(e.message.contains("CAP_BOGUS"), "{e}");
    let e = call::<m::Exec>(
        &a,
        exec(&|r| {
            r.rlimits = vec![pb::Rlimit {
                r#type: "RLIMIT_FILES".into(),
                soft: 1,
                hard: 1,
            }]
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(e.field, "rlimits[0].type");
    // Well-formed privileges reach the backend (which cannot fork).
    let e = call::<m::Exec>(
        &a,
        exec(&|r| {
            r.rlimits = vec![pb::Rlimit {
                r#type: "RLIMIT_NOFILE".into(),
                soft: 64,
                hard: 64,
            }];
            r.capabilities = Some(pb::Capabilities::default());
            r.no_new_privileges = true;
        }),
    )
    .await
    .unwrap_err();
    assert_eq!((e.errno, e.field.as_str()), (libc::EPERM, "container"));
}

#[tokio::test]
async fn finish_root_checks_paths_and_the_mount_namespace() {
    let (a, _) = agent();
    let finish = |c: &str, masked: &[&str], readonly: &[&str]| pb::FinishRootRequest {
        container: c.into(),
        masked_paths: masked.iter().map(|s| s.to_string()).collect(),
        readonly_paths: readonly.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let e = call::<m::FinishRoot>(&a, finish("nope", &[], &[]))
        .await
        .unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (Code::NotFound, "container"));
    call::<m::CreateContainer>(&a, create("shared", 0))
        .await
        .unwrap();
    call::<m::CreateContainer>(&a, create("own", 0x1))
        .await
        .unwrap();
    for (masked, readonly, field) in [
        (
            &["/proc/kcore", "proc/keys"][..],
            &[][..],
            "masked_paths[1]",
        ),
        (&[][..], &["/proc/../../etc"][..], "readonly_paths[0]"),
        (&[][..], &["/ok", "/a\0b"][..], "readonly_paths[1]"),
    ] {
        let e = call::<m::FinishRoot>(&a, finish("own", masked, readonly))
            .await
            .unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (Code::InvalidArgument, field));
    }
    // A container in the guest's own mount namespace would change the guest's mounts.
    let e = call::<m::FinishRoot>(&a, finish("shared", &["/proc/kcore"], &[]))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.field.as_str()),
        (Code::FailedPrecondition, "container")
    );
    // A valid request reaches the backend (which cannot fork).
    let e = call::<m::FinishRoot>(&a, finish("own", &["/proc/kcore"], &["/proc/sys"]))
        .await
        .unwrap_err();
    assert_eq!((e.errno, e.field.as_str()), (libc::EPERM, "container"));
}

#[tokio::test]
async fn oci_cgroup_mounts_are_cgroup2() {
    let (a, log) = agent();
    call::<m::CreateContainer>(&a, create("c", 0x1))
        .await
        .unwrap();
    call::<m::Mount>(
        &a,
        pb::MountRequest {
            container: "c".into(),
            fstype: "cgroup".into(),
            source: "cgroup".into(),
            options: "nosuid,noexec,nodev,relatime,ro".into(),
            target: "/sys/fs/cgroup".into(),
            mkdir: false,
            subdir: String::new(),
        },
    )
    .await
    .unwrap();
    assert!(
        lock(&log)
            .iter()
            .any(|l| l == "mount cgroup2 cgroup /sys/fs/cgroup"),
        "{:?}",
        lock(&log)
    );
}
