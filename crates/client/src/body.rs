//! Bounded reads of the bodies the client reads for itself (a refusal's
//! problem, a session's close, the sandbox payer's answer, a 402 after
//! paying): a server that sends one without end, or a byte at a time,
//! cannot hold the client or fill its memory. `--read-timeout` alone
//! would not do: it gives up only on silence.

use std::time::Duration;

/// The most of such a body that is read, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long reading such a body may take in all.
pub const BODY_WITHIN: Duration = Duration::from_secs(30);

/// The first [`BODY_LIMIT`] bytes of `response`'s body, or what came of
/// it within [`BODY_WITHIN`]; the rest is not read.
///
/// # Errors
///
/// The HTTP client's error when the body broke off.
pub async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    let read = async {
        while let Some(chunk) = response.chunk().await? {
            let room = BODY_LIMIT - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == BODY_LIMIT {
                break;
            }
        }
        Ok::<_, reqwest::Error>(())
    };
    if let Ok(read) = tokio::time::timeout(BODY_WITHIN, read).await {
        read?;
    }
    Ok(body)
}
