//! RPC errors: a gRPC status code, a message, and an [`ErrorDetail`](crate::pb::ErrorDetail)
//! carrying the guest errno and the request field the error is about.

use prost::Message;

use crate::pb;

/// Type URL of the `ErrorDetail` the agent puts into `Status.details`.
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/capsule.agent.v1.ErrorDetail";

/// gRPC status codes, as ttrpc uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code for a wire value; unknown values become [`Code::Unknown`].
    pub fn from_i32(v: i32) -> Code {
        use Code::*;
        match v {
            0 => Ok,
            1 => Cancelled,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => Unknown,
        }
    }

    /// The code an errno maps to.
    pub fn from_errno(errno: i32) -> Code {
        match errno {
            libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::ENXIO | libc::ENOKEY => {
                Code::NotFound
            }
            libc::EEXIST | libc::EADDRINUSE => Code::AlreadyExists,
            libc::EPERM | libc::EACCES | libc::EROFS => Code::PermissionDenied,
            libc::EINVAL
            | libc::ENAMETOOLONG
            | libc::ENOTDIR
            | libc::EISDIR
            | libc::ENOEXEC
            | libc::E2BIG
            | libc::EBADF
            | libc::EAFNOSUPPORT => Code::InvalidArgument,
            libc::ENOMEM | libc::ENOSPC | libc::EMFILE | libc::ENFILE | libc::EAGAIN => {
                Code::ResourceExhausted
            }
            libc::ENOSYS | libc::EOPNOTSUPP => Code::Unimplemented,
            libc::ETIMEDOUT => Code::DeadlineExceeded,
            libc::EBUSY | libc::ECHILD | libc::ENOTEMPTY => Code::FailedPrecondition,
            libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ECONNRESET => {
                Code::Unavailable
            }
            libc::EKEYREJECTED | libc::EKEYREVOKED | libc::EKEYEXPIRED => Code::PermissionDenied,
            _ => Code::Unknown,
        }
    }
}

/// The symbolic name of an errno ("ENOENT"), or `E<n>` for one not in the table.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENOKEY => "ENOKEY",
        libc::EKEYEXPIRED => "EKEYEXPIRED",
        libc::EKEYREVOKED => "EKEYREVOKED",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

/// An error answer of an RPC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}{}", errno_suffix(*errno))]
pub struct RpcError {
    pub code: Code,
    pub message: String,
    /// The guest errno behind the error, 0 if none.
    pub errno: i32,
    /// The request field the error is about, empty if none.
    pub field: String,
}

fn errno_suffix(errno: i32) -> String {
    if errno == 0 {
        String::new()
    } else {
        format!(" ({})", errno_name(errno))
    }
}

impl RpcError {
    /// An error without an errno.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            errno: 0,
            field: String::new(),
        }
    }

    /// An error from a guest errno; the code follows from the errno.
    pub fn from_errno(errno: i32, message: impl Into<String>) -> Self {
        RpcError {
            code: Code::from_errno(errno),
            message: message.into(),
            errno,
            field: String::new(),
        }
    }

    /// An INVALID_ARGUMENT error about `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        RpcError {
            code: Code::InvalidArgument,
            message: format!("{field}: {}", message.into()),
            errno: libc::EINVAL,
            field,
        }
    }

    /// Names the request field the error is about.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }

    /// The wire form.
    pub fn to_status(&self) -> pb::Status {
        let detail = pb::ErrorDetail {
            errno: self.errno,
            errno_name: if self.errno == 0 {
                String::new()
            } else {
                errno_name(self.errno)
            },
            field: self.field.clone(),
        };
        pb::Status {
            code: self.code as i32,
            message: self.message.clone(),
            details: vec![pb::Any {
                type_url: ERROR_DETAIL_TYPE_URL.to_string(),
                value: detail.encode_to_vec(),
            }],
        }
    }

    /// Reads an error from a non-OK status; `None` for an OK one. Details that are not a
    /// decodable `ErrorDetail` are ignored (a non-capsule ttrpc server sends none).
    pub fn from_status(status: &pb::Status) -> Option<RpcError> {
        if status.code == 0 {
            return None;
        }
        let mut err = RpcError::new(Code::from_i32(status.code), status.message.clone());
        if let Some(detail) = status
            .details
            .iter()
            .find(|d| d.type_url == ERROR_DETAIL_TYPE_URL)
            .and_then(|d| pb::ErrorDetail::decode(&d.value[..]).ok())
        {
            err.errno = detail.errno;
            err.field = detail.field;
        }
        Some(err)
    }
}

/// The status of a successful call.
pub fn ok_status() -> pb::Status {
    pb::Status {
        code: 0,
        message: String::new(),
        details: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_survives_the_wire() {
        let e = RpcError::from_errno(libc::ENOENT, "argv[0]: /nope: no such file")
            .with_field("argv[0]");
        assert_eq!(e.code, Code::NotFound);
        let wire = e.to_status().encode_to_vec();
        let back = RpcError::from_status(&pb::Status::decode(&wire[..]).unwrap()).unwrap();
        assert_eq!(back, e);
        assert!(back.to_string().contains("(ENOENT)"), "{back}");
    }

    #[test]
    fn ok_status_is_no_error_and_foreign_details_are_ignored() {
        assert!(RpcError::from_status(&ok_status()).is_none());
        let st = pb::Status {
            code: 12,
            message: "no such method".into(),
            details: vec![pb::Any {
                type_url: "type.googleapis.com/other.Thing".into(),
                value: vec![0xff, 0xff],
            }],
        };
        let e = RpcError::from_status(&st).unwrap();
        assert_eq!((e.code, e.errno), (Code::Unimplemented, 0));
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(Code::from_errno(libc::EEXIST), Code::AlreadyExists);
        assert_eq!(Code::from_errno(libc::EACCES), Code::PermissionDenied);
        assert_eq!(Code::from_errno(libc::ENOSYS), Code::Unimplemented);
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(4095), "E4095");
        assert_eq!(Code::from_i32(99), Code::Unknown);
    }
}
