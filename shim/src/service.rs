//! The task service containerd calls (shim API v2): one shim per pod, one VM per pod, one
//! container object per container. Create boots the VM (for a pod's sandbox, or a container
//! without CRI annotations) or adds a container object to it (a pod's other containers);
//! Start runs the process; the rest map onto the agent's RPCs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use capsule_host::containers::ContainerSpec;
use capsule_host::exec::Process;
use capsule_host::machine::MachineChoice;
use capsule_host::network;
use capsule_host::share;
use capsule_host::vm::{self, CreateRequest, Vm};
use capsule_protocol::methods::{
    CloseStdin, FreezeContainer, KillContainer, ListProcesses, Mount, SignalProcess, ThawContainer,
};
use capsule_protocol::{pb, Client};
use containerd_shim::api;
use containerd_shim::protos::events::task as ev;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::Status;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use log::{info, warn};

use crate::oci::{self, SpecError};
use crate::process::{Exit, TaskProcess};
use crate::record::Record;
use crate::rootfs::{ContainerFiles, PodDir};
use crate::stdio::{self, Fifos};
use crate::{names, topics, translate};

/// CRI's annotations that place a container in a pod.
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// How long one agent call may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a VM may take to boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn error(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

/// An error with its causes, the way the CLI prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn invalid(e: SpecError) -> ttrpc::Error {
    error(Code::INVALID_ARGUMENT, e.to_string())
}

/// Where a container goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// It makes the VM: a pod's sandbox, or a container on its own.
    NewVm,
    /// Into the VM of the pod whose sandbox is named.
    Pod { sandbox: String },
}

impl Placement {
    pub fn of(spec: &oci::Spec) -> Placement {
        match (
            spec.annotation(CRI_CONTAINER_TYPE),
            spec.annotation(CRI_SANDBOX_ID),
        ) {
            (Some("container"), Some(sandbox)) => Placement::Pod {
                sandbox: sandbox.to_string(),
            },
            _ => Placement::NewVm,
        }
    }

    /// The shim a container is served by: its pod's (by sandbox id), or its own.
    pub fn grouping(spec: &oci::Spec, id: &str) -> String {
        spec.annotation(CRI_SANDBOX_ID).unwrap_or(id).to_string()
    }
}

/// The VM of this shim's pod.
struct Pod {
    vm: Vm,
    client: Arc<Client>,
    dir: PodDir,
    /// The container id that made the VM, and its container object's name.
    owner: String,
    owner_container: String,
}

struct Task {
    bundle: PathBuf,
    /// The container object's name in the VM.
    container: String,
    files: ContainerFiles,
    init: TaskProcess,
    execs: HashMap<String, TaskProcess>,
    paused: bool,
}

#[derive(Default)]
struct State {
    pod: Option<Pod>,
    tasks: HashMap<String, Task>,
}

/// The program that supervises VMs (`capsule`, installed next to this shim).
fn capsule_program() -> Result<PathBuf, ttrpc::Error> {
    let me = std::env::current_exe()
        .map_err(|e| error(Code::INTERNAL, format!("cannot find the shim binary: {e}")))?;
    let capsule = me.with_file_name("capsule");
    if !capsule.is_file() {
        return Err(error(
            Code::FAILED_PRECONDITION,
            format!(
                "{} is missing: the shim needs capsule's CLI next to it (scripts/setup.sh installs both)",
                capsule.display()
            ),
        ));
    }
    Ok(capsule)
}

/// Where pod directories live: `$CAPSULE_POD_DIR`, else `/run/capsule-pods`.
fn pods_root() -> PathBuf {
    std::env::var_os("CAPSULE_POD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/capsule-pods"))
}

/// The backend the shim's VMs use: `$CAPSULE_BACKEND` (auto, kvm, qemu-tcg, qemu-kvm).
fn machine_choice() -> Result<MachineChoice, ttrpc::Error> {
    match std::env::var("CAPSULE_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(MachineChoice::Auto),
        Ok("kvm") => Ok(MachineChoice::Kvm),
        Ok("qemu-tcg") => Ok(MachineChoice::QemuTcg),
        Ok("qemu-kvm") => Ok(MachineChoice::QemuKvm),
        Ok(other) => Err(error(
            Code::INVALID_ARGUMENT,
            format!("CAPSULE_BACKEND={other:?}: expected auto, kvm, qemu-tcg or qemu-kvm"),
        )),
    }
}

pub struct Service {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    state: Arc<Mutex<State>>,
    exit: Arc<ExitSignal>,
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            namespace: namespace.to_string(),
            publisher: Arc::new(publisher),
            state: Arc::new(Mutex::new(State::default())),
            exit,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.namespace, topic, event);
    }
}

fn publish(publisher: &RemotePublisher, namespace: &str, topic: &str, event: Box<dyn MessageDyn>) {
    if let Err(e) = publisher.publish(Context::default(), topic, namespace, event) {
        warn!("cannot publish {topic}: {e}");
    }
}

fn not_found(id: &str) -> ttrpc::Error {
    error(Code::NOT_FOUND, format!("no task {id} in this shim"))
}

impl State {
    fn task(&mut self, id: &str) -> Result<&mut Task, ttrpc::Error> {
        self.tasks.get_mut(id).ok_or_else(|| not_found(id))
    }

    fn client(&self) -> Result<Arc<Client>, ttrpc::Error> {
        self.pod
            .as_ref()
            .map(|p| p.client.clone())
            .ok_or_else(|| error(Code::FAILED_PRECONDITION, "this shim has no VM"))
    }
}

impl Task {
    fn process(&mut self, exec_id: &str) -> Result<&mut TaskProcess, ttrpc::Error> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| error(Code::NOT_FOUND, format!("no exec {exec_id}")))
    }
}

fn rpc_error(what: &str, e: &dyn std::error::Error) -> ttrpc::Error {
    error(Code::UNKNOWN, format!("{what}: {}", chain(e)))
}

/// Mounts, finishes and limits a container's root once its container object exists.
fn set_up_container(
    vm: &Vm,
    client: &Client,
    spec: &oci::Spec,
    name: &str,
    files: &ContainerFiles,
) -> Result<(), ttrpc::Error> {
    for m in translate::mounts(spec).map_err(invalid)? {
        let req = match m {
            translate::GuestMount::Fs {
                fstype,
                source,
                options,
                target,
            } => pb::MountRequest {
                container: name.to_string(),
                fstype,
                source,
                options,
                target,
                mkdir: true,
                subdir: String::new(),
            },
            translate::GuestMount::HostBind {
                index,
                source,
                target,
                read_only,
            } => {
                files
                    .bind(index, Path::new(&source), read_only)
                    .map_err(|e| rpc_error("host bind mount", &e))?;
                pb::MountRequest {
                    container: name.to_string(),
                    fstype: "virtiofs".into(),
                    source: share::tag(0, true),
                    options: if read_only { "ro" } else { "" }.into(),
                    target,
                    mkdir: true,
                    subdir: files.bind_rel(index),
                }
            }
        };
        let target = req.target.clone();
        client
            .call::<Mount>(&req)
            .map_err(|e| rpc_error(&format!("mount on {target} in the guest"), &e))?;
    }
    vm.finish_root(translate::finish_root(spec, name))
        .map_err(|e| rpc_error("finishing the container's root", &e))?;
    if let Some(limits) = translate::resources(spec, name) {
        vm.set_resources(&limits)
            .map_err(|e| rpc_error("linux.resources", &e))?;
    }
    Ok(())
}

impl Service {
    /// Boots the pod's VM with `id` as its first container.
    fn create_vm(
        &self,
        id: &str,
        record: &Record,
        spec: &oci::Spec,
        req: &api::CreateTaskRequest,
    ) -> Result<(Pod, ContainerFiles), ttrpc::Error> {
        let vm_name = record.vm.clone();
        let container = record.container.clone();
        let dir = PodDir::create(&record.pod_dir).map_err(|e| rpc_error("pod directory", &e))?;
        let files = ContainerFiles::new(&dir, &record.files);
        let fail = |e: ttrpc::Error, files: &ContainerFiles, dir: &PodDir| {
            let _ = files.remove();
            let _ = dir.remove();
            e
        };
        files
            .mount_rootfs(&req.rootfs, &spec.root_dir(Path::new(&req.bundle)))
            .map_err(|e| fail(rpc_error("root file system", &e), &files, &dir))?;
        let (cpus, memory_mib) =
            translate::vm_size(spec).map_err(|e| fail(invalid(e), &files, &dir))?;
        let network = match spec.namespace("network") {
            Some(path) if !path.is_empty() => Some(network::Join::Netns(path.into())),
            Some(_) => None,
            None => Some(network::Join::Network(network::AttachRequest {
                network: network::DEFAULT_NETWORK.to_string(),
                address: None,
                publish: Vec::new(),
            })),
        };
        let devices = translate::devices(spec).map_err(|e| fail(invalid(e), &files, &dir))?;
        let request = CreateRequest {
            name: vm_name.clone(),
            kernel: None,
            initrd: None,
            rootfs: None,
            rootfs_dir: Some(dir.path().to_path_buf()),
            rootfs_subdir: Some(files.rootfs_rel()),
            rootfs_writable: true,
            hostname: (!spec.hostname.is_empty()).then(|| spec.hostname.clone()),
            volumes: Vec::new(),
            shares: Vec::new(),
            flags: translate::container_flags(spec),
            devices,
            keys: Vec::new(),
            cpus,
            memory_mib,
            machine: machine_choice().map_err(|e| fail(e, &files, &dir))?,
            upcalls: Default::default(),
            upcall_timeout: Duration::from_secs(10),
            seccomp: true,
            jail: true,
            network,
            cmdline: String::new(),
            boot_timeout: BOOT_TIMEOUT,
            agent_timeout: AGENT_TIMEOUT,
            program: capsule_program().map_err(|e| fail(e, &files, &dir))?,
        };
        info!("{id}: booting VM {vm_name} ({cpus} vCPU, {memory_mib} MiB)");
        let vm = vm::create(request, |_| {})
            .map_err(|e| fail(rpc_error(&format!("VM {vm_name}"), &e), &files, &dir))?;
        let cleanup = |e: ttrpc::Error, vm: Vm| {
            let _ = vm.remove(true);
            fail(e, &files, &dir)
        };
        let client = match vm.agent() {
            Ok(c) => Arc::new(c),
            Err(e) => return Err(cleanup(rpc_error("guest agent", &e), vm)),
        };
        if let Err(e) = set_up_container(&vm, &client, spec, &container, &files) {
            return Err(cleanup(e, vm));
        }
        let pod = Pod {
            vm,
            client,
            dir: dir.clone(),
            owner: id.to_string(),
            owner_container: container,
        };
        Ok((pod, files))
    }

    /// Adds `id` to the running pod VM as a further container object.
    fn add_to_pod(
        pod: &Pod,
        record: &Record,
        spec: &oci::Spec,
        req: &api::CreateTaskRequest,
    ) -> Result<ContainerFiles, ttrpc::Error> {
        let name = record.container.clone();
        let files = ContainerFiles::new(&pod.dir, &record.files);
        files
            .mount_rootfs(&req.rootfs, &spec.root_dir(Path::new(&req.bundle)))
            .map_err(|e| rpc_error("root file system", &e))?;
        let result = (|| {
            let container = ContainerSpec {
                name: name.clone(),
                flags: translate::container_flags(spec),
                root_dir: None,
                root_in_share: Some(files.rootfs_rel()),
                read_only_root: false,
                hostname: spec.hostname.clone(),
                share_ns: translate::shared_namespaces(spec, &pod.owner_container),
                devices: translate::devices(spec).map_err(invalid)?,
            };
            pod.vm
                .add_container(&container)
                .map_err(|e| rpc_error(&format!("container {name}"), &e))?;
            set_up_container(&pod.vm, &pod.client, spec, &name, &files)
        })();
        if let Err(e) = result {
            let _ = pod.client.call::<KillContainer>(&pb::KillContainerRequest {
                container: name.clone(),
                signal: libc::SIGKILL,
            });
            let _ = files.remove();
            return Err(e);
        }
        Ok(files)
    }

    /// Starts a created process and the thread that reports its exit.
    fn start_process(
        &self,
        client: Arc<Client>,
        container_id: &str,
        container: &str,
        proc_: &mut TaskProcess,
    ) -> Result<u32, ttrpc::Error> {
        if proc_.started.is_some() {
            return Err(error(Code::FAILED_PRECONDITION, "already started"));
        }
        let process = Process::start(client.clone(), container, proc_.spec.clone())
            .map_err(|e| rpc_error("start", &e))?;
        let streams = match process.attach() {
            Ok(s) => s,
            Err(e) => {
                let _ = client.call::<SignalProcess>(&pb::SignalProcessRequest {
                    container: container.to_string(),
                    exec_id: process.id(),
                    signal: libc::SIGKILL,
                });
                return Err(rpc_error("attach", &e));
            }
        };
        let copying = stdio::connect(streams, &proc_.fifos);
        proc_.stdin = copying.stdin_closer();
        let pid = process.pid().max(0) as u32;
        proc_.started = Some(process.clone());
        let exit = proc_.exit.clone();
        let (publisher, namespace) = (self.publisher.clone(), self.namespace.clone());
        let (cid, exec_id, cname) = (
            container_id.to_string(),
            proc_.exec_id.clone(),
            container.to_string(),
        );
        std::thread::spawn(move || {
            let status = match process.wait() {
                Ok(st) => u32::from(st.shell_code()),
                Err(e) => {
                    warn!("{cid}: lost process {exec_id}: {}", chain(&e));
                    137
                }
            };
            if exec_id.is_empty() {
                // The task ends with its process, as a container ends with its pid 1: what is
                // left of it (and holds its output open) goes too.
                let _ = client.call::<KillContainer>(&pb::KillContainerRequest {
                    container: cname.clone(),
                    signal: libc::SIGKILL,
                });
            }
            copying.finish();
            if exec_id.is_empty() {
                let oom = client
                    .call::<capsule_protocol::methods::ContainerStats>(&pb::ContainerRef {
                        container: cname,
                    })
                    .is_ok_and(|s| s.memory_events_oom_kill > 0);
                if oom {
                    let e = ev::TaskOOM {
                        container_id: cid.clone(),
                        ..Default::default()
                    };
                    publish(&publisher, &namespace, topics::OOM, Box::new(e));
                }
            }
            let at = Exit::now(status);
            exit.set(at);
            let e = ev::TaskExit {
                container_id: cid.clone(),
                id: if exec_id.is_empty() {
                    cid.clone()
                } else {
                    exec_id
                },
                pid,
                exit_status: status,
                exited_at: Some(at.timestamp()).into(),
                ..Default::default()
            };
            publish(&publisher, &namespace, topics::EXIT, Box::new(e));
        });
        Ok(pid)
    }
}

fn status_of(p: &TaskProcess, paused: bool) -> Status {
    match (p.exit.get(), &p.started) {
        (Some(_), _) => Status::STOPPED,
        (None, None) => Status::CREATED,
        (None, Some(_)) if paused => Status::PAUSED,
        (None, Some(_)) => Status::RUNNING,
    }
}

/// Parses an exec's process (`spec` of ExecProcessRequest: the OCI process as JSON).
fn exec_process(spec: &Any) -> Result<oci::Process, ttrpc::Error> {
    oci::Spec::parse_process(&spec.value).map_err(invalid)
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let id = req.id.clone();
        if !req.checkpoint.is_empty() {
            return Err(error(
                Code::UNIMPLEMENTED,
                "checkpoint/restore is not supported",
            ));
        }
        let spec = oci::Spec::load(Path::new(&req.bundle)).map_err(invalid)?;
        let process = spec.process();
        let init_spec = translate::exec_spec(&process, !req.stdin.is_empty()).map_err(invalid)?;
        if process.oom_score_adj.is_some() {
            info!("{id}: process.oomScoreAdj applies to the guest's OOM killer only as the VM's");
        }
        let fifos = Fifos {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut state = self.state();
        if state.tasks.contains_key(&id) {
            return Err(error(Code::ALREADY_EXISTS, format!("task {id} exists")));
        }
        // Written first, so that a shim that dies half-way still gets cleaned up after.
        let record = match Placement::of(&spec) {
            Placement::NewVm => {
                if state.pod.is_some() {
                    return Err(error(
                        Code::FAILED_PRECONDITION,
                        format!("this shim's VM already runs; {id} carries no {CRI_SANDBOX_ID}"),
                    ));
                }
                let vm = names::vm_name(&self.namespace, &id);
                Record {
                    pod_dir: pods_root().join(&vm),
                    container: vm.clone(),
                    vm,
                    files: names::container_name(&id),
                    owns_vm: true,
                }
            }
            Placement::Pod { sandbox } => {
                let pod = state
                    .pod
                    .as_ref()
                    .filter(|p| p.owner == sandbox)
                    .ok_or_else(|| {
                        error(
                            Code::FAILED_PRECONDITION,
                            format!("sandbox {sandbox} of {id} does not run in this shim"),
                        )
                    })?;
                Record {
                    vm: pod.vm.name().to_string(),
                    container: names::container_name(&id),
                    files: names::container_name(&id),
                    pod_dir: pod.dir.path().to_path_buf(),
                    owns_vm: false,
                }
            }
        };
        record.write(Path::new(&req.bundle)).map_err(|e| {
            error(
                Code::INTERNAL,
                format!("cannot write {}/capsule-shim.json: {e}", req.bundle),
            )
        })?;
        let (container, files) = if record.owns_vm {
            let (pod, files) = self.create_vm(&id, &record, &spec, &req)?;
            state.pod = Some(pod);
            (record.container.clone(), files)
        } else {
            let pod = state.pod.as_ref().ok_or_else(|| not_found(&id))?;
            let files = Self::add_to_pod(pod, &record, &spec, &req)?;
            (record.container.clone(), files)
        };
        state.tasks.insert(
            id.clone(),
            Task {
                bundle: PathBuf::from(&req.bundle),
                container,
                files,
                init: TaskProcess::new("", init_spec, fifos),
                execs: HashMap::new(),
                paused: false,
            },
        );
        drop(state);
        let pid = std::process::id();
        self.publish(
            topics::CREATE,
            Box::new(ev::TaskCreate {
                container_id: id,
                bundle: req.bundle,
                rootfs: req.rootfs,
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let mut state = self.state();
        let client = state.client()?;
        let task = state.task(&req.id)?;
        let container = task.container.clone();
        let proc_ = task.process(&req.exec_id)?;
        let pid = self.start_process(client, &req.id, &container, proc_)?;
        drop(state);
        if req.exec_id.is_empty() {
            self.publish(
                topics::START,
                Box::new(ev::TaskStart {
                    container_id: req.id,
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            self.publish(
                topics::EXEC_STARTED,
                Box::new(ev::TaskExecStarted {
                    container_id: req.id,
                    exec_id: req.exec_id,
                    pid,
                    ..Default::default()
                }),
            );
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let mut state = self.state();
        let task = state.task(&req.id)?;
        let (paused, bundle) = (task.paused, task.bundle.display().to_string());
        let p = task.process(&req.exec_id)?;
        let exit = p.exit.get();
        Ok(api::StateResponse {
            id: req.id,
            bundle,
            pid: p.pid(),
            status: status_of(p, paused).into(),
            stdin: p.fifos.stdin.clone(),
            stdout: p.fifos.stdout.clone(),
            stderr: p.fifos.stderr.clone(),
            terminal: p.fifos.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.timestamp()).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let process = exec_process(req.spec.as_ref().unwrap_or(&Any::new()))?;
        let spec = translate::exec_spec(&process, !req.stdin.is_empty()).map_err(invalid)?;
        let mut state = self.state();
        let task = state.task(&req.id)?;
        if task.init.exit.get().is_some() {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("task {} has exited", req.id),
            ));
        }
        if req.exec_id.is_empty() || task.execs.contains_key(&req.exec_id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("exec id {:?} is empty or taken", req.exec_id),
            ));
        }
        let fifos = Fifos {
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            terminal: req.terminal,
        };
        task.execs.insert(
            req.exec_id.clone(),
            TaskProcess::new(&req.exec_id, spec, fifos),
        );
        drop(state);
        self.publish(
            topics::EXEC_ADDED,
            Box::new(ev::TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let mut state = self.state();
        let p = state.task(&req.id)?.process(&req.exec_id)?;
        if let Some(started) = &p.started {
            started
                .resize(pb::TtySize {
                    rows: req.height,
                    cols: req.width,
                })
                .map_err(|e| rpc_error("resize", &e))?;
        }
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let mut state = self.state();
        let client = state.client()?;
        let task = state.task(&req.id)?;
        let container = task.container.clone();
        let p = task.process(&req.exec_id)?;
        if req.stdin {
            p.stdin.close();
            if let Some(started) = &p.started {
                let _ = client.call::<CloseStdin>(&pb::CloseStdinRequest {
                    container,
                    exec_id: started.id(),
                });
            }
        }
        Ok(api::Empty::new())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| error(Code::INVALID_ARGUMENT, format!("signal {}", req.signal)))?;
        let mut state = self.state();
        let client = state.client()?;
        let task = state.task(&req.id)?;
        let container = task.container.clone();
        if req.all && req.exec_id.is_empty() {
            if task.init.exit.get().is_some() {
                // The container went with its process.
                return Ok(api::Empty::new());
            }
            client
                .call::<KillContainer>(&pb::KillContainerRequest { container, signal })
                .map_err(|e| rpc_error("kill", &e))?;
            return Ok(api::Empty::new());
        }
        let p = task.process(&req.exec_id)?;
        match (&p.started, p.exit.get()) {
            (_, Some(_)) => Err(error(Code::NOT_FOUND, "process already finished")),
            (None, None) => {
                // A process that never ran ends with the signal.
                let exit = Exit::now(128 + signal as u32);
                p.exit.set(exit);
                Ok(api::Empty::new())
            }
            (Some(started), None) => {
                client
                    .call::<SignalProcess>(&pb::SignalProcessRequest {
                        container,
                        exec_id: started.id(),
                        signal,
                    })
                    .map_err(|e| rpc_error("kill", &e))?;
                Ok(api::Empty::new())
            }
        }
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let exit = {
            let mut state = self.state();
            state.task(&req.id)?.process(&req.exec_id)?.exit.clone()
        };
        let e = exit.wait();
        Ok(api::WaitResponse {
            exit_status: e.status,
            exited_at: Some(e.timestamp()).into(),
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut state = self.state();
        let task = state.task(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = task.process(&req.exec_id)?;
            if p.started.is_some() && p.exit.get().is_none() {
                return Err(error(Code::FAILED_PRECONDITION, "the exec still runs"));
            }
            let p = task
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| not_found(&req.id))?;
            let exit = p.exit.get().unwrap_or_else(|| Exit::now(0));
            return Ok(api::DeleteResponse {
                pid: p.pid(),
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            });
        }
        if task.init.started.is_some() && task.init.exit.get().is_none() {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("task {} still runs", req.id),
            ));
        }
        let task = state
            .tasks
            .remove(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        let exit = task.init.exit.get().unwrap_or_else(|| Exit::now(0));
        let pid = task.init.pid();
        let owner = state.pod.as_ref().is_some_and(|p| p.owner == req.id);
        let mut problems = Vec::new();
        if owner {
            // The pod's VM goes with the task that made it, and every container left in it.
            for (_, other) in state.tasks.drain() {
                if let Err(e) = other.files.remove() {
                    problems.push(chain(&e));
                }
            }
            if let Some(pod) = state.pod.take() {
                if let Err(e) = pod.vm.remove(true) {
                    problems.push(chain(&e));
                }
                if let Err(e) = task.files.remove() {
                    problems.push(chain(&e));
                }
                if let Err(e) = pod.dir.remove() {
                    problems.push(chain(&e));
                }
            }
        } else {
            if let Ok(client) = state.client() {
                let _ = client.call::<KillContainer>(&pb::KillContainerRequest {
                    container: task.container.clone(),
                    signal: libc::SIGKILL,
                });
            }
            if let Err(e) = task.files.remove() {
                problems.push(chain(&e));
            }
        }
        drop(state);
        if !problems.is_empty() {
            warn!("{}: cleanup: {}", req.id, problems.join("; "));
        }
        self.publish(
            topics::DELETE,
            Box::new(ev::TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                id: req.id,
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let mut state = self.state();
        let client = state.client()?;
        let container = state.task(&req.id)?.container.clone();
        drop(state);
        let list = client
            .call::<ListProcesses>(&pb::ContainerRef { container })
            .map_err(|e| rpc_error("pids", &e))?;
        Ok(api::PidsResponse {
            processes: list
                .processes
                .iter()
                .filter(|p| p.state != "exited")
                .map(|p| containerd_shim::protos::types::task::ProcessInfo {
                    pid: p.pid.max(0) as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.freeze(&req.id, true)?;
        self.publish(
            topics::PAUSED,
            Box::new(ev::TaskPaused {
                container_id: req.id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.freeze(&req.id, false)?;
        self.publish(
            topics::RESUMED,
            Box::new(ev::TaskResumed {
                container_id: req.id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        use prost::Message;
        let mut state = self.state();
        let container = state.task(&req.id)?.container.clone();
        let pod = state.pod.as_ref().ok_or_else(|| not_found(&req.id))?;
        let stats = pod
            .vm
            .container_stats(&container)
            .map_err(|e| rpc_error("stats", &e))?;
        let mut any = Any::new();
        any.type_url = crate::metrics::TYPE_URL.to_string();
        any.value = crate::metrics::Metrics::from(&stats).encode_to_vec();
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let mut state = self.state();
        let container = state.task(&req.id)?.container.clone();
        let spec = oci::Spec::with_resources(&resources).map_err(invalid)?;
        let pod = state.pod.as_ref().ok_or_else(|| not_found(&req.id))?;
        if let Some(limits) = translate::resources(&spec, &container) {
            pod.vm
                .set_resources(&limits)
                .map_err(|e| rpc_error("update", &e))?;
        }
        Ok(api::Empty::new())
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let mut state = self.state();
        let pid = state.task(&req.id)?.init.pid();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.state().tasks.is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}

impl Service {
    fn freeze(&self, id: &str, freeze: bool) -> Result<(), ttrpc::Error> {
        let mut state = self.state();
        let client = state.client()?;
        let task = state.task(id)?;
        let req = pb::ContainerRef {
            container: task.container.clone(),
        };
        let result = if freeze {
            client.call::<FreezeContainer>(&req).map(drop)
        } else {
            client.call::<ThawContainer>(&req).map(drop)
        };
        result.map_err(|e| rpc_error(if freeze { "pause" } else { "resume" }, &e))?;
        task.paused = freeze;
        Ok(())
    }
}

/// What `delete` does when the shim is gone: removes the VM (if the container made it), the
/// container's host mounts and, with the VM, the pod directory. Returns the exit status to
/// report (137: killed).
pub fn clean_up_after_shim(bundle: &Path) -> Result<u32, String> {
    let Some(record) = Record::read(bundle) else {
        return Ok(137);
    };
    let dir = PodDir::open(&record.pod_dir);
    let files = ContainerFiles::new(&dir, &record.files);
    let mut problems = Vec::new();
    if record.owns_vm {
        match Vm::open(&record.vm, AGENT_TIMEOUT) {
            Ok(vm) => {
                if let Err(e) = vm.remove(true) {
                    problems.push(chain(&e));
                }
            }
            Err(e) => info!("VM {}: {}", record.vm, chain(&e)),
        }
        if let Err(e) = dir.remove() {
            problems.push(chain(&e));
        }
    } else if let Err(e) = files.remove() {
        problems.push(chain(&e));
    }
    if problems.is_empty() {
        Ok(137)
    } else {
        Err(problems.join("; "))
    }
}
