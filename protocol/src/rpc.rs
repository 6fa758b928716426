//! Server-side pieces of the ttrpc protocol: decode a request frame, encode a response frame.
//! The agent (and the host's upcall router) build their dispatch on these.

use prost::Message;

use crate::frame::{encode_frame, Frame, TYPE_REQUEST, TYPE_RESPONSE};
use crate::pb;
use crate::status::{ok_status, Code, RpcError};

/// Decodes the `Request` envelope of a request frame.
pub fn decode_request(frame: &Frame) -> Result<pb::Request, RpcError> {
    if frame.header.kind != TYPE_REQUEST {
        return Err(RpcError::new(
            Code::InvalidArgument,
            format!("frame type {} is not a request", frame.header.kind),
        ));
    }
    pb::Request::decode(&frame.payload[..]).map_err(|e| {
        RpcError::new(
            Code::InvalidArgument,
            format!("request envelope is not valid protobuf: {e}"),
        )
    })
}

/// Decodes a method's request message.
pub fn decode_message<M: Message + Default>(payload: &[u8], method: &str) -> Result<M, RpcError> {
    M::decode(payload).map_err(|e| {
        RpcError::new(
            Code::InvalidArgument,
            format!("{method}: request payload is not valid protobuf: {e}"),
        )
    })
}

/// The error for a (service, method) the server does not serve.
pub fn unknown_method(service: &str, method: &str) -> RpcError {
    RpcError::new(
        Code::Unimplemented,
        format!("unknown method {service}/{method}"),
    )
}

/// Encodes a response frame for `stream_id`. A result whose encoding would exceed `max` is
/// replaced by a RESOURCE_EXHAUSTED error, so the answer always fits.
pub fn response_frame(stream_id: u32, result: Result<Vec<u8>, RpcError>, max: u32) -> Vec<u8> {
    let response = match result {
        Ok(payload) => pb::Response {
            status: Some(ok_status()),
            payload,
        },
        Err(e) => pb::Response {
            status: Some(e.to_status()),
            payload: Vec::new(),
        },
    };
    let bytes = response.encode_to_vec();
    match encode_frame(stream_id, TYPE_RESPONSE, 0, &bytes, max) {
        Ok(frame) => frame,
        Err(_) => {
            let e = RpcError::new(
                Code::ResourceExhausted,
                format!(
                    "response of {} bytes exceeds the maximum message size of {max} bytes",
                    bytes.len()
                ),
            );
            let bytes = pb::Response {
                status: Some(e.to_status()),
                payload: Vec::new(),
            }
            .encode_to_vec();
            let mut frame = crate::frame::FrameHeader {
                length: bytes.len() as u32,
                stream_id,
                kind: TYPE_RESPONSE,
                flags: 0,
            }
            .encode()
            .to_vec();
            frame.extend_from_slice(&bytes);
            frame
        }
    }
}

/// Decodes a response frame's envelope into the method's payload or its error.
pub fn decode_response(frame: &Frame) -> Result<Vec<u8>, RpcError> {
    if frame.header.kind != TYPE_RESPONSE {
        return Err(RpcError::new(
            Code::Internal,
            format!("frame type {} is not a response", frame.header.kind),
        ));
    }
    let resp = pb::Response::decode(&frame.payload[..]).map_err(|e| {
        RpcError::new(
            Code::Internal,
            format!("response envelope is not valid protobuf: {e}"),
        )
    })?;
    match resp.status.as_ref().and_then(RpcError::from_status) {
        Some(err) => Err(err),
        None => Ok(resp.payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::read_frame;

    #[test]
    fn response_round_trips_ok_and_error() {
        let buf = response_frame(9, Ok(vec![1, 2, 3]), 1024);
        let f = read_frame(&mut &buf[..], 1024).unwrap();
        assert_eq!(f.header.stream_id, 9);
        assert_eq!(decode_response(&f).unwrap(), vec![1, 2, 3]);

        let e = unknown_method("capsule.agent.v1.Agent", "Frobnicate");
        let buf = response_frame(11, Err(e.clone()), 1024);
        let f = read_frame(&mut &buf[..], 1024).unwrap();
        let got = decode_response(&f).unwrap_err();
        assert_eq!(got.code, Code::Unimplemented);
        assert_eq!(got, e);
    }

    #[test]
    fn oversized_response_becomes_resource_exhausted() {
        let buf = response_frame(1, Ok(vec![0u8; 4096]), 1024);
        let f = read_frame(&mut &buf[..], 1024).unwrap();
        assert_eq!(
            decode_response(&f).unwrap_err().code,
            Code::ResourceExhausted
        );
    }

    #[test]
    fn garbage_envelope_is_invalid_argument() {
        let frame = Frame {
            header: crate::frame::FrameHeader {
                length: 3,
                stream_id: 1,
                kind: TYPE_REQUEST,
                flags: 0,
            },
            payload: vec![0xff, 0xff, 0xff],
        };
        assert_eq!(
            decode_request(&frame).unwrap_err().code,
            Code::InvalidArgument
        );
        let mut resp = frame.clone();
        resp.header.kind = TYPE_RESPONSE;
        assert_eq!(
            decode_request(&resp).unwrap_err().code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn request_envelope_matches_ttrpc_field_numbers() {
        // containerd/ttrpc: service=1, method=2, payload=3, timeout_nano=4, metadata=5.
        let req = pb::Request {
            service: "s".into(),
            method: "m".into(),
            payload: vec![7],
            timeout_nano: 1,
            metadata: vec![],
        };
        assert_eq!(
            req.encode_to_vec(),
            vec![0x0a, 1, b's', 0x12, 1, b'm', 0x1a, 1, 7, 0x20, 1]
        );
    }
}
