//! capsule under Kubernetes' CRI: containerd's CRI plugin with capsule as the runtime class
//! handler `capsule`, driven over CRI's gRPC API (the `k8s-cri` crate as the client, since
//! `crictl` is not a Debian package). A pod sandbox with two containers runs as one VM, its
//! containers as container objects that share the pod's network namespace: they reach each
//! other on localhost, and the container has the pod IP CNI assigned (CNI's bridge plugin on
//! a bridge the test makes and removes).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use capsule_tests::containerd::{self, Containerd, CriConfig, TEST_IMAGE};
use capsule_tests::tier::{run_backend_tests, Backend, BackendTest};
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// The pod sandbox image (busybox that waits), imported like the test image.
const PAUSE_IMAGE: &str = "localhost/capsule-pause:1";
/// CNI's bridge, on a subnet of its own.
const CNI_BRIDGE: &str = "capsule-cri0";
const CNI_SUBNET: &str = "10.231.0.0/24";

fn cni_config(dir: &Path, ipam_dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let conf = format!(
        r#"{{"cniVersion": "0.4.0", "name": "capsule-cri-test", "plugins": [{{
            "type": "bridge", "bridge": "{CNI_BRIDGE}", "isGateway": true, "ipMasq": false,
            "ipam": {{"type": "host-local", "subnet": "{CNI_SUBNET}", "dataDir": "{}",
                      "routes": [{{"dst": "0.0.0.0/0"}}]}}
        }}]}}"#,
        ipam_dir.display()
    );
    std::fs::write(dir.join("10-capsule.conflist"), conf).map_err(|e| e.to_string())
}

/// Removes CNI's bridge (the plugin leaves it behind when its last pod goes).
struct Bridge;

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", CNI_BRIDGE])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

async fn client(socket: PathBuf) -> Result<RuntimeServiceClient<Channel>, String> {
    let channel = Endpoint::try_from("http://[::]:0")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let s = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| format!("connecting to containerd's CRI: {e}"))?;
    Ok(RuntimeServiceClient::new(channel))
}

fn container(name: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: TEST_IMAGE.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

async fn exec(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
) -> Result<cri::ExecSyncResponse, String> {
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 60,
    })
    .await
    .map(|r| r.into_inner())
    .map_err(|e| format!("ExecSync {cmd:?}: {e}"))
}

async fn pod(c: &Containerd) -> Result<(), String> {
    let mut rt = client(c.socket().to_path_buf()).await?;
    let logs = c.scratch().join("pod-logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "capsule-test-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web".into(),
        log_directory: logs.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: "capsule".into(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {e}\n{}", c.log()))?
        .into_inner()
        .pod_sandbox_id;
    // The pod goes whatever the checks found: CNI's teardown removes its veth and netns.
    let checked = checks(c, &mut rt, &pod_id, &sandbox_config, &logs).await;
    if let Err(e) = &checked {
        eprintln!("the pod failed its checks (tearing it down): {e}");
    }
    let stop = rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    });
    let stopped = match tokio::time::timeout(Duration::from_secs(120), stop).await {
        Ok(r) => r
            .map(drop)
            .map_err(|e| format!("StopPodSandbox: {e}\n{}", c.log())),
        Err(_) => Err(format!("StopPodSandbox took over 2 minutes\n{}", c.log())),
    };
    let removed = rt
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .map_err(|e| format!("RemovePodSandbox: {e}\n{}", c.log()));
    checked.and(stopped).and(removed).map(drop)
}

async fn checks(
    c: &Containerd,
    rt: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    sandbox_config: &cri::PodSandboxConfig,
    logs: &Path,
) -> Result<(), String> {
    let mut ids = Vec::new();
    for (name, cmd) in [
        (
            "server",
            &[
                "sh",
                "-c",
                "echo pod-hello > /tmp/index.html && exec httpd -f -p 8080 -h /tmp",
            ][..],
        ),
        ("client", &["sleep", "600"][..]),
    ] {
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.to_string(),
                config: Some(container(name, cmd)),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
            .map_err(|e| format!("CreateContainer {name}: {e}\n{}", c.log()))?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .map_err(|e| format!("StartContainer {name}: {e}\n{}", c.log()))?;
        ids.push(id);
    }
    // One VM holds the pod: its sandbox and both containers are container objects in it.
    let vms = c.cli.run(&["ls"])?;
    let names: Vec<&str> = vms
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if names.len() != 1 {
        return Err(format!("the pod should be one VM\n{}", vms.describe()));
    }
    let objects = c.cli.run(&["container", "ls", names[0]])?;
    objects.expect_code(0)?;
    let rows = objects
        .stdout
        .lines()
        .skip(1)
        .filter(|l| l.contains("running"))
        .count();
    if rows < 3 {
        return Err(format!(
            "the VM should hold the sandbox and two containers\n{}",
            objects.describe()
        ));
    }
    // The client reaches the server on localhost: they share the pod's network namespace.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = exec(
            rt,
            &ids[1],
            &["wget", "-qO-", "http://127.0.0.1:8080/index.html"],
        )
        .await?;
        if r.exit_code == 0 && String::from_utf8_lossy(&r.stdout) == "pod-hello\n" {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(logs.join("server.log")).unwrap_or_default();
            let seen = format!("server's log:\n{log}");
            return Err(format!(
                "wget from the client to the server on localhost: exit {}, {:?} {:?}\n{seen}",
                r.exit_code,
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The pod IP CNI assigned is the containers' address.
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_string(),
            verbose: false,
        })
        .await
        .map_err(|e| format!("PodSandboxStatus: {e}"))?
        .into_inner();
    let ip = status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    if !ip.starts_with("10.231.0.") {
        return Err(format!("the pod has no address from CNI: {ip:?}"));
    }
    let addrs = exec(rt, &ids[1], &["ip", "-4", "addr"]).await?;
    let text = String::from_utf8_lossy(&addrs.stdout);
    if !text.contains(&format!("inet {ip}/")) {
        return Err(format!("the client does not have the pod IP {ip}:\n{text}"));
    }
    Ok(())
}

fn pod_of_two_containers_in_one_vm(backend: Backend) -> Result<(), String> {
    if let Some(reason) = containerd::unavailable_reason() {
        return Err(reason);
    }
    let _bridge = Bridge;
    let scratch = capsule_tests::guests::ScratchDir::new("cni")?;
    cni_config(&scratch.join("conf"), &scratch.join("ipam"))?;
    let c = Containerd::start(
        backend,
        Some(&CriConfig {
            sandbox_image: PAUSE_IMAGE.into(),
            cni_conf_dir: scratch.join("conf"),
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
        }),
    )?;
    c.import_image("k8s.io", TEST_IMAGE, &["/bin/sh"])?;
    c.import_image(
        "k8s.io",
        PAUSE_IMAGE,
        &["sh", "-c", "while :; do sleep 3600; done"],
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(pod(&c))?;
    c.expect_clean()
}

fn main() {
    run_backend_tests(vec![BackendTest::linux(
        "pod_of_two_containers_in_one_vm",
        pod_of_two_containers_in_one_vm,
    )])
}
