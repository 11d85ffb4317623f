//! What both REST backends share: the HTTPS client.

use std::path::Path;
use std::time::Duration;

use gate402_lightning::LightningError;

use crate::error::RemoteError;

/// How a node's certificate file is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trust {
    /// The node presents exactly this certificate (LND's `tls.cert`: one
    /// self-signed certificate with `CA:TRUE`, which webpki refuses as an
    /// end entity, so it is pinned byte for byte, whatever the host name).
    Pinned,
    /// The file is a CA that signed the node's own certificate (clnrest's
    /// `ca.pem`): the usual chain and host name checks, against it alone.
    Authority,
}

/// A client for the node: with a certificate file, that file alone is
/// trusted (see [`Trust`]); without one, the system roots.
///
/// # Errors
///
/// [`RemoteError`] when the file cannot be read or holds no certificate.
pub(crate) fn client(
    ca_pem_path: Option<&Path>,
    trust: Trust,
) -> Result<reqwest::Client, RemoteError> {
    let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    let Some(path) = ca_pem_path else {
        return builder
            .build()
            .map_err(|e| RemoteError::Client(e.to_string()));
    };
    let certs = crate::tls::read_pem(path)?;
    let tls = match trust {
        Trust::Pinned => crate::tls::pinned(path, certs),
        Trust::Authority => crate::tls::authority(certs),
    }
    .map_err(|e| RemoteError::Client(format!("{}: {e}", path.display())))?;
    builder
        .tls_backend_preconfigured(tls)
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

/// A transport failure, with its causes: reqwest's own text ("error
/// sending request") says nothing of a refused certificate.
pub(crate) fn unavailable(e: reqwest::Error) -> LightningError {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if e.is_timeout() {
        LightningError::Unavailable(format!("request timed out: {text}"))
    } else {
        LightningError::Unavailable(text)
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
