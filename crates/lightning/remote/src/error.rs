//! Why a REST backend could not be set up, and reading the files its
//! config names.

use std::path::{Path, PathBuf};

/// Why a REST backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A credential or certificate file could not be read. The reason is
    /// said in the message, not chained as a source: an error printed
    /// with its causes would say it twice.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// The config names no credential: set one of these keys.
    #[error("no credential: set {0}")]
    NoCredential(&'static str),
    /// A certificate that is not PEM.
    #[error("{0} is not a PEM certificate")]
    Certificate(PathBuf),
    /// A URL that is not `http(s)://host:port`.
    #[error("invalid node URL {0:?}")]
    Url(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Reads a credential or certificate file named in the config.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, RemoteError> {
    std::fs::read(path).map_err(|reason| RemoteError::Read {
        path: path.to_owned(),
        reason,
    })
}
