//! The control plane's one error type. The admin API, the snapshotter and the admin client fail
//! with an [`Error`] that says what went wrong; each wire reads its code from one function:
//! [`Error::http_status`] for the admin API, [`Error::grpc_code`] for the snapshotter (the
//! codes containerd maps back to its errdefs). Engine errors come in through `From`, the only
//! place in the control plane that decodes an errno.
//!
//! Statuses of malformed HTTP (408, 413, 431, 501, 505) and of unknown routes (404, 405) are
//! the HTTP server's own business and stay in `admin::http` and `admin::routes`.

use std::fmt;

use tonic::{Code, Status};

/// What went wrong, with a message for the user (shown as is: `Display` is the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed: bad JSON, path, id, name, label or tar entry.
    Invalid(String),
    /// The named layer or snapshot does not exist.
    NotFound(String),
    /// The name is taken.
    Exists(String),
    /// The layer's state forbids it: it has children, is mounted, is not active.
    Busy(String),
    /// No space left on the device.
    NoSpace(String),
    /// Not now: the file system is read-only after an I/O error, or the daemon cannot be
    /// reached.
    Unavailable(String),
    /// Anything else: an I/O error, corrupt metadata, a bug.
    Internal(String),
}

impl Error {
    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::Invalid(m)
            | Error::NotFound(m)
            | Error::Exists(m)
            | Error::Busy(m)
            | Error::NoSpace(m)
            | Error::Unavailable(m)
            | Error::Internal(m) => m,
        }
    }

    /// The admin API's status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Invalid(_) => 400,
            Error::NotFound(_) => 404,
            // A conflict with the layer's name or its current state.
            Error::Exists(_) | Error::Busy(_) => 409,
            Error::NoSpace(_) => 507,
            Error::Unavailable(_) => 503,
            Error::Internal(_) => 500,
        }
    }

    /// The snapshotter's gRPC code for this error.
    pub fn grpc_code(&self) -> Code {
        match self {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::Exists(_) => Code::AlreadyExists,
            Error::Busy(_) => Code::FailedPrecondition,
            Error::NoSpace(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// The error an admin API answer with `status` (not 2xx) stands for, as the client reads
    /// it. 409 is read as [`Error::Busy`]: the status does not tell it from [`Error::Exists`].
    pub fn from_http(status: u16, message: String) -> Error {
        match status {
            404 => Error::NotFound(message),
            409 => Error::Busy(message),
            503 => Error::Unavailable(message),
            507 => Error::NoSpace(message),
            400..=499 => Error::Invalid(message),
            _ => Error::Internal(message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

impl From<engine::Error> for Error {
    fn from(e: engine::Error) -> Error {
        use engine::Error as E;
        let m = e.to_string();
        match e {
            E::NotFound(_) => Error::NotFound(m),
            E::Exists(_) => Error::Exists(m),
            E::Invalid(_) => Error::Invalid(m),
            E::Busy(_) => Error::Busy(m),
            E::NoSpace => Error::NoSpace(m),
            E::Poisoned => Error::Unavailable(m),
            // The file system operations OCI import runs say what failed with an errno.
            E::Errno(n) => match n {
                libc::ENOENT => Error::NotFound(m),
                libc::EEXIST => Error::Exists(m),
                libc::EINVAL | libc::ENAMETOOLONG => Error::Invalid(m),
                libc::EBUSY | libc::ENOTEMPTY => Error::Busy(m),
                // A layer's space or inode limit (engine::Limits).
                libc::ENOSPC | libc::EDQUOT => Error::NoSpace(m),
                libc::EROFS => Error::Unavailable(m),
                _ => Error::Internal(m),
            },
            _ => Error::Internal(m),
        }
    }
}

/// The snapshotter's answer.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.grpc_code(), e.message())
    }
}

/// For the CLI, whose errors are messages.
impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_message_and_map_to_one_kind() {
        let cases = [
            (
                engine::Error::NotFound("layer \"x\" does not exist".into()),
                404,
                Code::NotFound,
            ),
            (
                engine::Error::Exists("taken".into()),
                409,
                Code::AlreadyExists,
            ),
            (
                engine::Error::Invalid("bad id".into()),
                400,
                Code::InvalidArgument,
            ),
            (
                engine::Error::Busy("has children".into()),
                409,
                Code::FailedPrecondition,
            ),
            (engine::Error::NoSpace, 507, Code::ResourceExhausted),
            (engine::Error::Poisoned, 503, Code::Unavailable),
            (engine::Error::Errno(libc::ENOENT), 404, Code::NotFound),
            (
                engine::Error::Errno(libc::EDQUOT),
                507,
                Code::ResourceExhausted,
            ),
            (engine::Error::Errno(libc::EEXIST), 409, Code::AlreadyExists),
            (
                engine::Error::Errno(libc::ENAMETOOLONG),
                400,
                Code::InvalidArgument,
            ),
            (
                engine::Error::Errno(libc::ENOTEMPTY),
                409,
                Code::FailedPrecondition,
            ),
            (
                engine::Error::Errno(libc::ENOSPC),
                507,
                Code::ResourceExhausted,
            ),
            (engine::Error::Errno(libc::EROFS), 503, Code::Unavailable),
            (engine::Error::Errno(libc::EIO), 500, Code::Internal),
            (
                engine::Error::Corrupt {
                    what: "crc".into(),
                    block: 7,
                },
                500,
                Code::Internal,
            ),
        ];
        for (e, status, code) in cases {
            let msg = e.to_string();
            let c = Error::from(e);
            assert_eq!((c.http_status(), c.grpc_code()), (status, code), "{msg}");
            assert_eq!(c.to_string(), msg);
            let st = Status::from(c);
            assert_eq!((st.code(), st.message()), (code, msg.as_str()));
        }
    }

    #[test]
    fn the_client_reads_back_what_the_server_sent() {
        for e in [
            Error::Invalid("i".into()),
            Error::NotFound("n".into()),
            Error::Busy("b".into()),
            Error::NoSpace("s".into()),
            Error::Unavailable("u".into()),
            Error::Internal("x".into()),
        ] {
            assert_eq!(Error::from_http(e.http_status(), e.to_string()), e);
        }
        assert_eq!(
            Error::from_http(409, "exists".into()),
            Error::Busy("exists".into())
        );
    }
}
