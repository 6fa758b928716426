//! `containerd-shim-capsule-v2`: containerd's runtime v2 shim for capsule (runtime name
//! `io.containerd.capsule.v2`). A front end of capsule's host library: a pod is one microVM,
//! each of its containers a kernel container object inside it. containerd runs this binary
//! with `start` (spawn or reuse the pod's shim and print its socket), `delete` (clean up after
//! a shim that died), and without an action as the shim server itself.

mod metrics;
mod names;
mod oci;
mod process;
mod record;
mod rootfs;
mod service;
mod stdio;
mod translate;

use std::path::Path;
use std::sync::Arc;

use containerd_shim::{api, ExitSignal, Flags, StartOpts};

/// The runtime name containerd knows capsule by.
const RUNTIME_ID: &str = "io.containerd.capsule.v2";
/// Annotations that size a pod's VM.
pub const ANNOTATION_CPUS: &str = "io.capsule.vm.cpus";
pub const ANNOTATION_MEMORY: &str = "io.capsule.vm.memory-mib";

/// The event topics the shim publishes.
mod topics {
    pub use containerd_shim::protos::topics::{
        TASK_CREATE_EVENT_TOPIC as CREATE, TASK_DELETE_EVENT_TOPIC as DELETE,
        TASK_EXEC_ADDED_EVENT_TOPIC as EXEC_ADDED, TASK_EXEC_STARTED_EVENT_TOPIC as EXEC_STARTED,
        TASK_EXIT_EVENT_TOPIC as EXIT, TASK_OOM_EVENT_TOPIC as OOM,
        TASK_PAUSED_EVENT_TOPIC as PAUSED, TASK_RESUMED_EVENT_TOPIC as RESUMED,
        TASK_START_EVENT_TOPIC as START,
    };
}

struct CapsuleShim {
    namespace: String,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for CapsuleShim {
    type T = service::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        CapsuleShim {
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim per pod: a pod's containers name their sandbox; others get their own.
        let grouping = oci::Spec::load(Path::new("."))
            .map(|spec| service::Placement::grouping(&spec, &opts.id))
            .unwrap_or_else(|_| opts.id.clone());
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<api::DeleteResponse> {
        let bundle = std::env::current_dir().map_err(|e| containerd_shim::Error::IoError {
            context: "the bundle directory".into(),
            err: e,
        })?;
        let status =
            service::clean_up_after_shim(&bundle).map_err(containerd_shim::Error::Other)?;
        let exit = process::Exit::now(status);
        Ok(api::DeleteResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(
        &self,
        publisher: containerd_shim::publisher::RemotePublisher,
    ) -> Self::T {
        service::Service::new(&self.namespace, publisher, self.exit.clone())
    }
}

fn main() {
    // The host library runs `ip`, `nft` and the VM's supervisor and waits for each itself:
    // the framework's reaper would steal their exit statuses.
    let config = containerd_shim::Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<CapsuleShim>(RUNTIME_ID, Some(config));
}
