//! What both REST backends share: the HTTPS client and its errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gate402_lightning::LightningError;

/// Why a REST backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A credential or certificate file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
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

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, RemoteError> {
    std::fs::read(path).map_err(|source| RemoteError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A client that trusts the node's own (usually self-signed) certificate
/// when one is given, the system roots otherwise.
pub(crate) fn client(ca_pem_path: Option<&Path>) -> Result<reqwest::Client, RemoteError> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(path) = ca_pem_path {
        let pem = read(path)?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|_| RemoteError::Certificate(path.to_owned()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| RemoteError::Client(e.to_string()))
}

pub(crate) fn base_url(url: &str) -> Result<String, RemoteError> {
    let trimmed = url.trim_end_matches('/');
    if !(trimmed.starts_with("https://") || trimmed.starts_with("http://")) {
        return Err(RemoteError::Url(url.to_owned()));
    }
    Ok(trimmed.to_owned())
}

/// A transport failure.
pub(crate) fn unavailable(e: reqwest::Error) -> LightningError {
    if e.is_timeout() {
        LightningError::Unavailable(format!("request timed out: {e}"))
    } else {
        LightningError::Unavailable(e.to_string())
    }
}

/// Reads newline-delimited JSON objects from a streaming response, calling
/// `each` until it returns `Some`.
pub(crate) async fn read_json_lines<T>(
    mut response: reqwest::Response,
    mut each: impl FnMut(serde_json::Value) -> Option<T>,
) -> Result<Option<T>, LightningError> {
    let mut buffer = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value = serde_json::from_slice(&line)
                .map_err(|e| LightningError::Protocol(format!("stream line: {e}")))?;
            if let Some(done) = each(value) {
                return Ok(Some(done));
            }
        }
    }
    if !buffer.iter().all(u8::is_ascii_whitespace) {
        let value = serde_json::from_slice(&buffer)
            .map_err(|e| LightningError::Protocol(format!("stream line: {e}")))?;
        return Ok(each(value));
    }
    Ok(None)
}
