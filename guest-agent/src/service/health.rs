//! Health (`capsule.agent.v1.Health`): Check and Version.

use std::sync::Arc;

use capsule_protocol::{pb, RpcError};

use super::Agent;
use crate::sys;

impl Agent {
    pub(super) async fn check(
        self: &Arc<Self>,
        _: pb::CheckRequest,
    ) -> Result<pb::HealthCheckResponse, RpcError> {
        Ok(pb::HealthCheckResponse {
            status: pb::health_check_response::ServingStatus::Serving as i32,
        })
    }

    pub(super) async fn version(
        self: &Arc<Self>,
        _: pb::CheckRequest,
    ) -> Result<pb::VersionCheckResponse, RpcError> {
        let release = sys::kernel_release();
        Ok(pb::VersionCheckResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: capsule_protocol::PROTOCOL_VERSION,
            backend: self.backend.name().into(),
            kernel_release: release,
            max_message_size: capsule_protocol::MAX_MESSAGE_SIZE,
            stream_port: capsule_protocol::STREAM_PORT,
        })
    }
}
