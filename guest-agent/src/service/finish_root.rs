//! FinishRoot: the last step of an OCI container's root after its mounts — default devices,
//! read-only and masked paths, a read-only root ([`crate::backend::finish_root`] does them in
//! a child inside the container).

use std::sync::Arc;

use capsule_protocol::validate;
use capsule_protocol::{pb, Code, RpcError};

use super::Agent;
use crate::backend::finish_root::{device_name, FinishError, FinishRoot, Step};
use crate::backend::flags;

impl Agent {
    pub(super) async fn finish_root(
        self: &Arc<Self>,
        r: pb::FinishRootRequest,
    ) -> Result<pb::Empty, RpcError> {
        let c = self.container("container", &r.container)?;
        validate::root_paths("masked_paths", &r.masked_paths)?;
        validate::root_paths("readonly_paths", &r.readonly_paths)?;
        c.require_root()?;
        if c.flags & (flags::NEW_FS_NS | flags::NEW_EMPTY_FS_NS) == 0 {
            return Err(RpcError::new(
                Code::FailedPrecondition,
                format!(
                    "container {:?} shares the guest's mount namespace: its root cannot be \
                     finished without changing the guest's",
                    c.name
                ),
            )
            .with_field("container"));
        }
        let plan = FinishRoot::new(
            r.default_devices,
            &r.readonly_paths,
            &r.masked_paths,
            r.readonly_root,
        );
        let this = self.clone();
        Self::blocking(move || {
            plan.run_in(c.ops.as_ref(), &this.reaper)
                .map_err(|e| finish_error(&r, e))
        })
        .await?;
        Ok(pb::Empty {})
    }
}

/// The RPC error of a failed FinishRoot, naming the field and the path.
fn finish_error(r: &pb::FinishRootRequest, e: FinishError) -> RpcError {
    let f = match e {
        FinishError::Backend(e) => return RpcError::from(e),
        FinishError::Step(f) => f,
    };
    let path = |list: &[String]| list.get(f.index as usize).cloned().unwrap_or_default();
    let what = match f.step {
        Step::DevNotTmpfs => {
            return RpcError::new(
                Code::FailedPrecondition,
                "default devices need a tmpfs on /dev: mount one there first",
            )
            .with_field("default_devices")
        }
        Step::Dev => "opening /dev".to_string(),
        Step::Device => format!("creating /dev/{}", device_name(f.index)),
        Step::Readonly => format!("making {} read-only", path(&r.readonly_paths)),
        Step::Masked => format!("masking {}", path(&r.masked_paths)),
        Step::DevNull => format!(
            "masking {}: a file is masked with the container's /dev/null, which is missing or \
             not the null device (use default_devices)",
            path(&r.masked_paths)
        ),
        Step::RootReadonly => "making the root read-only".to_string(),
    };
    RpcError::from_errno(
        f.errno,
        format!("{what}: {}", std::io::Error::from_raw_os_error(f.errno)),
    )
    .with_field(f.step.field(f.index))
}
