//! What a failed operation tells its front end: words a client can show,
//! and an [`ErrorKind`] that picks the front end's code.

use alloc::string::String;

/// Which kind of failure, so each front end can answer with its own code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong: a bad value, an unknown name.
    InvalidParams,
    /// The request is fine but the appliance cannot do it now or here.
    InvalidState,
    /// The code SPDK answers this failure with (negative errno values and
    /// JSON-RPC codes), for clients that match on it.
    Code(i64),
}

/// A failed operation; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    /// [`ErrorKind::InvalidParams`] with `message`.
    pub fn params(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::InvalidParams,
            message: message.into(),
        }
    }

    /// [`ErrorKind::InvalidState`] with `message`.
    pub fn state(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::InvalidState,
            message: message.into(),
        }
    }
}

pub type Result<T> = core::result::Result<T, Error>;

// The engines' configuration errors: `Invalid` is the request's fault,
// `Busy` the current state's.
impl From<ironbay_iscsi::config::ConfigError> for Error {
    fn from(e: ironbay_iscsi::config::ConfigError) -> Self {
        use ironbay_iscsi::config::ConfigError as E;
        match e {
            E::Invalid(m) => Error::params(m),
            E::Busy(m) => Error::state(m),
        }
    }
}

impl From<ironbay_nvmf::config::ConfigError> for Error {
    fn from(e: ironbay_nvmf::config::ConfigError) -> Self {
        use ironbay_nvmf::config::ConfigError as E;
        match e {
            E::Invalid(m) => Error::params(m),
            E::Busy(m) => Error::state(m),
        }
    }
}
