//! Engine errors. Every failure is a value: bad input, I/O errors, corrupt metadata and
//! ENOSPC come back to the caller; the FUSE front maps them to errno in one place.

use std::fmt;
use std::io;

/// An engine error, with enough context to find the cause.
#[derive(Debug)]
pub enum Error {
    /// A POSIX-level failure of an operation (ENOENT, EEXIST, ENOTEMPTY, ...).
    Errno(i32),
    /// The device failed an I/O.
    Io {
        op: &'static str,
        offset: u64,
        source: io::Error,
    },
    /// On-disk data did not pass its checks.
    Corrupt { what: String, block: u64 },
    /// A file data block read from the device does not match its checksum (EIO to the
    /// reader: the data is never returned).
    Checksum { block: u64 },
    /// The device is not a Strata image (or a newer format).
    NotStrata(String),
    /// The device cannot be used as asked (no O_DIRECT, read-only, in use, too small).
    Unusable(String),
    /// An earlier write or flush failed; the engine refuses further changes.
    Poisoned,
    /// No space left on the device.
    NoSpace,
    /// A named object (layer) does not exist.
    NotFound(String),
    /// A named object (layer) already exists.
    Exists(String),
    /// A request is malformed (bad name, bad argument).
    Invalid(String),
    /// The request conflicts with the object's state (has children, not active, in use).
    Busy(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The errno this error is reported as at the FUSE boundary.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Errno(e) => *e,
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::Corrupt { .. } => libc::EUCLEAN,
            Error::Checksum { .. } => libc::EIO,
            Error::NotStrata(_) => libc::EINVAL,
            Error::Unusable(_) => libc::EINVAL,
            Error::Poisoned => libc::EROFS,
            Error::NoSpace => libc::ENOSPC,
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) => libc::EEXIST,
            Error::Invalid(_) => libc::EINVAL,
            Error::Busy(_) => libc::EBUSY,
        }
    }

    pub fn io(op: &'static str, offset: u64, source: io::Error) -> Self {
        Error::Io { op, offset, source }
    }

    pub fn corrupt(what: impl Into<String>, block: u64) -> Self {
        Error::Corrupt {
            what: what.into(),
            block,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Errno(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
            Error::Io { op, offset, source } => {
                write!(f, "device {op} at byte {offset} failed: {source}")
            }
            Error::Corrupt { what, block } => write!(f, "corrupt metadata at block {block}: {what}"),
            Error::Checksum { block } => write!(
                f,
                "data block {block} does not match its checksum (the device returned bad data)"
            ),
            Error::NotStrata(why) => write!(f, "not a Strata image: {why}"),
            Error::Unusable(why) => write!(f, "{why}"),
            Error::Poisoned => write!(
                f,
                "an earlier device write or flush failed; the file system is read-only until remounted"
            ),
            Error::NoSpace => write!(f, "no space left on device"),
            Error::NotFound(w) | Error::Exists(w) | Error::Invalid(w) | Error::Busy(w) => write!(f, "{w}"),
        }
    }
}

impl std::error::Error for Error {}

pub(crate) fn errno(e: i32) -> Error {
    Error::Errno(e)
}
