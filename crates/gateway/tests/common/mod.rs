//! Helpers shared by the gateway's integration tests.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Sends `request` (made HTTP/2) over h2c with prior knowledge, on a
/// connection of its own so that a reset cannot take other requests with
/// it: the answer's head and whole body, or why there is none (a stream
/// that did not end cleanly included). The `:path` is the target as
/// written, not normalized.
pub async fn h2c(
    addr: SocketAddr,
    mut request: Request<Empty<Bytes>>,
) -> Result<(axum::http::response::Parts, Bytes), String> {
    *request.version_mut() = Version::HTTP_2;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("h2: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("h2 body: {e:?}"))?
        .to_bytes();
    Ok((parts, body))
}
