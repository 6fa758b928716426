//! Keys: AddKey and ListKeys on a container's keyring, before or after it starts.

use std::sync::Arc;

use capsule_protocol::validate::{plain_string, MAX_KEY_DESC_LEN, MAX_KEY_PAYLOAD};
use capsule_protocol::{pb, RpcError};

use super::Agent;
use crate::backend::child::cstr;
use crate::{keyring, sys};

impl Agent {
    pub(super) async fn add_key(
        self: &Arc<Self>,
        r: pb::AddKeyRequest,
    ) -> Result<pb::AddKeyResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        if r.key_type.is_empty() || r.key_type.starts_with('.') {
            return Err(RpcError::invalid(
                "key_type",
                format!("key type {:?} cannot be added", r.key_type),
            ));
        }
        plain_string("key_type", &r.key_type, 32)?;
        if r.description.is_empty() {
            return Err(RpcError::invalid("description", "empty description"));
        }
        plain_string("description", &r.description, MAX_KEY_DESC_LEN)?;
        if r.payload.len() > MAX_KEY_PAYLOAD {
            return Err(RpcError::invalid(
                "payload",
                format!("{} bytes, more than {MAX_KEY_PAYLOAD}", r.payload.len()),
            ));
        }
        let ring = c.ops.keyring()?;
        let serial = sys::add_key(&cstr(&r.key_type), &cstr(&r.description), &r.payload, ring)
            .map_err(|e| {
                RpcError::from_errno(e, format!("add_key {}:{}", r.key_type, r.description))
                    .with_field("key_type")
            })?;
        Ok(pb::AddKeyResponse { serial })
    }

    pub(super) async fn list_keys(
        self: &Arc<Self>,
        r: pb::ContainerRef,
    ) -> Result<pb::ListKeysResponse, RpcError> {
        let c = self.container("container", &r.container)?;
        let ring = c.ops.keyring()?;
        let members = keyring::keyring_members(ring)
            .map_err(|e| RpcError::from_errno(e, "reading the container keyring"))?;
        let name_key = keyring::NAME_KEY.to_string_lossy();
        let keys = members
            .into_iter()
            .filter_map(|serial| {
                let d = keyring::describe(serial).ok()?;
                (d.description != name_key).then_some(pb::KeyInfo {
                    serial,
                    key_type: d.key_type,
                    description: d.description,
                    uid: d.uid,
                    gid: d.gid,
                    perm: d.perm,
                })
            })
            .collect();
        Ok(pb::ListKeysResponse { keys })
    }
}
