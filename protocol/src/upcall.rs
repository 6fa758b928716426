//! Upcalls: the guest's request-key helper calls `Upcall.RequestKey` on host port
//! [`UPCALL_PORT`](crate::UPCALL_PORT), one call per connection, in ttrpc framing.
//!
//! Guest side: [`call`]. Host side (the router): [`read_call`] then [`UpcallCall::answer`].

use std::io::{Read, Write};

use prost::Message;

use crate::client::ClientError;
use crate::frame::{self, FrameError, TYPE_REQUEST};
use crate::methods::{RequestKey, UPCALL_SERVICE};
use crate::rpc;
use crate::status::{Code, RpcError};
use crate::{pb, Method};

/// Largest upcall message (a key payload is at most 1 MiB, callout info one page).
pub const MAX_UPCALL_MESSAGE: u32 = 2 << 20;

/// Why an upcall could not be read on the host.
#[derive(Debug, thiserror::Error)]
pub enum UpcallError {
    #[error("reading the upcall request")]
    Frame(#[source] FrameError),
    #[error("upcall request refused")]
    Refused(#[source] RpcError),
    #[error("writing the upcall answer")]
    Write(#[source] std::io::Error),
}

/// One upcall received by the host, to be answered once.
#[derive(Debug, Clone, PartialEq)]
pub struct UpcallCall {
    pub stream_id: u32,
    pub request: pb::UpcallRequest,
}

/// Host side: reads the one request of an upcall connection. A request for another method,
/// an undecodable or oversized one is answered with an error on the connection and returned as
/// [`UpcallError::Refused`].
pub fn read_call<S: Read + Write>(conn: &mut S) -> Result<UpcallCall, UpcallError> {
    let refuse = |conn: &mut S, stream_id: u32, e: RpcError| {
        let _ = conn.write_all(&rpc::response_frame(
            stream_id,
            Err(e.clone()),
            MAX_UPCALL_MESSAGE,
        ));
        UpcallError::Refused(e)
    };
    let f = match frame::read_frame(conn, MAX_UPCALL_MESSAGE) {
        Ok(f) => f,
        Err(FrameError::Oversized {
            header,
            length,
            max,
            ..
        }) => {
            let e = RpcError::new(
                Code::ResourceExhausted,
                format!("upcall of {length} bytes exceeds {max}"),
            );
            return Err(refuse(conn, header.stream_id, e));
        }
        Err(e) => return Err(UpcallError::Frame(e)),
    };
    let id = f.header.stream_id;
    let envelope = match rpc::decode_request(&f) {
        Ok(r) => r,
        Err(e) => return Err(refuse(conn, id, e)),
    };
    if envelope.service != UPCALL_SERVICE || envelope.method != RequestKey::NAME {
        let e = rpc::unknown_method(&envelope.service, &envelope.method);
        return Err(refuse(conn, id, e));
    }
    let request: pb::UpcallRequest = match rpc::decode_message(&envelope.payload, "RequestKey") {
        Ok(r) => r,
        Err(e) => return Err(refuse(conn, id, e)),
    };
    if let Err(e) = validate_request(&request) {
        return Err(refuse(conn, id, e));
    }
    Ok(UpcallCall {
        stream_id: id,
        request,
    })
}

/// Checks the strings of an upcall request (the guest is not trusted either).
pub fn validate_request(r: &pb::UpcallRequest) -> Result<(), RpcError> {
    use crate::validate::*;
    if !r.container.is_empty() {
        container_name("container", &r.container)?;
    }
    plain_string("operation", &r.operation, 32)?;
    if r.key_type.is_empty() {
        return Err(RpcError::invalid("key_type", "empty key type"));
    }
    plain_string("key_type", &r.key_type, MAX_KEY_DESC_LEN)?;
    plain_string("description", &r.description, MAX_KEY_DESC_LEN)?;
    if r.callout_info.len() > MAX_KEY_DESC_LEN {
        return Err(RpcError::invalid(
            "callout_info",
            format!(
                "{} bytes, more than {MAX_KEY_DESC_LEN}",
                r.callout_info.len()
            ),
        ));
    }
    Ok(())
}

impl UpcallCall {
    /// Sends the answer: a payload to instantiate the key with, or an error (the guest then
    /// negates the key).
    pub fn answer<W: Write>(
        &self,
        conn: &mut W,
        answer: Result<pb::UpcallResponse, RpcError>,
    ) -> Result<(), UpcallError> {
        let buf = rpc::response_frame(
            self.stream_id,
            answer.map(|r| r.encode_to_vec()),
            MAX_UPCALL_MESSAGE,
        );
        conn.write_all(&buf).map_err(UpcallError::Write)?;
        conn.flush().map_err(UpcallError::Write)
    }
}

/// Guest side: sends `request` on a connected upcall stream and reads the answer. The caller
/// sets the stream's read timeout.
pub fn call<S: Read + Write>(
    conn: &mut S,
    request: &pb::UpcallRequest,
) -> Result<pb::UpcallResponse, ClientError> {
    let envelope = pb::Request {
        service: UPCALL_SERVICE.to_string(),
        method: RequestKey::NAME.to_string(),
        payload: request.encode_to_vec(),
        timeout_nano: 0,
        metadata: Vec::new(),
    };
    let buf = frame::encode_frame(
        1,
        TYPE_REQUEST,
        0,
        &envelope.encode_to_vec(),
        MAX_UPCALL_MESSAGE,
    )
    .map_err(ClientError::Frame)?;
    conn.write_all(&buf)
        .map_err(|e| ClientError::Frame(FrameError::Io(e)))?;
    let f = frame::read_frame(conn, MAX_UPCALL_MESSAGE).map_err(|e| match e {
        FrameError::Closed => ClientError::Disconnected,
        e => ClientError::Frame(e),
    })?;
    let payload = rpc::decode_response(&f).map_err(|source| ClientError::Rpc {
        method: "RequestKey".into(),
        source,
    })?;
    pb::UpcallResponse::decode(&payload[..]).map_err(|source| ClientError::Decode {
        method: "RequestKey".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn request() -> pb::UpcallRequest {
        pb::UpcallRequest {
            container: "web".into(),
            operation: "create".into(),
            key_type: "dns_resolver".into(),
            description: "example.org".into(),
            callout_info: b"ipv4".to_vec(),
            key_serial: 1234,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn guest_and_host_halves_talk() {
        let (mut guest, mut host) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let call = read_call(&mut host).unwrap();
            assert_eq!(call.request, request());
            call.answer(
                &mut host,
                Ok(pb::UpcallResponse {
                    payload: b"93.184.215.14".to_vec(),
                    ..Default::default()
                }),
            )
            .unwrap();
        });
        let resp = call(&mut guest, &request()).unwrap();
        assert_eq!(resp.payload, b"93.184.215.14");
        assert!(!resp.negate);
        server.join().unwrap();
    }

    #[test]
    fn host_error_reaches_the_guest() {
        let (mut guest, mut host) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let call = read_call(&mut host).unwrap();
            call.answer(
                &mut host,
                Err(RpcError::new(Code::NotFound, "no helper for dns_resolver")),
            )
            .unwrap();
        });
        let err = call(&mut guest, &request()).unwrap_err();
        assert_eq!(err.rpc().unwrap().code, Code::NotFound);
        server.join().unwrap();
    }

    #[test]
    fn wrong_method_and_bad_strings_are_refused_with_an_answer() {
        let (mut guest, mut host) = UnixStream::pair().unwrap();
        let envelope = pb::Request {
            service: UPCALL_SERVICE.into(),
            method: "Other".into(),
            ..Default::default()
        };
        guest
            .write_all(
                &frame::encode_frame(3, TYPE_REQUEST, 0, &envelope.encode_to_vec(), 1024).unwrap(),
            )
            .unwrap();
        assert!(
            matches!(read_call(&mut host), Err(UpcallError::Refused(e)) if e.code == Code::Unimplemented)
        );
        let f = frame::read_frame(&mut guest, 1024).unwrap();
        assert_eq!(f.header.stream_id, 3);
        assert_eq!(
            rpc::decode_response(&f).unwrap_err().code,
            Code::Unimplemented
        );

        let mut bad = request();
        bad.container = "../etc".into();
        assert_eq!(validate_request(&bad).unwrap_err().field, "container");
        let mut bad = request();
        bad.key_type.clear();
        assert_eq!(validate_request(&bad).unwrap_err().field, "key_type");
    }
}
