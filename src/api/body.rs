//! Bounded reads of answer bodies. Every answer from outside (the API, IAM) is read chunk by
//! chunk up to a cap chosen per endpoint, well above any real answer, within a deadline: an
//! endless or oversized body costs at most the cap in memory and the deadline in time, never
//! the whole process.
//!
//! The caps, and why:
//! - [`START_LIMIT`], [`STATUS_LIMIT`], [`IAM_LIMIT`]: 1 MiB. A start answer is a record id, a
//!   job name and a short component list; a status answer one record with its steps; an IAM
//!   answer (with `nocatalog`) the token's user, project and roles. Each is a few KiB.
//! - [`PARAMS_LIMIT`]: 8 MiB. A record may hold 500 params of up to 8192 characters each
//!   (4.1 MB of values, plus keys and JSON punctuation).
//! - [`HISTORY_LIMIT`]: 4 MiB. A page is at most 100 records of about 300 bytes (30 KiB):
//!   two orders of magnitude of headroom for fields the service may add.

use std::time::Duration;

/// Cap of a start answer.
pub const START_LIMIT: usize = 1 << 20;
/// Cap of a status (`ShowDeployStatus`) answer.
pub const STATUS_LIMIT: usize = 1 << 20;
/// Cap of a params (`ShowExecutionParams`) answer.
pub const PARAMS_LIMIT: usize = 8 << 20;
/// Cap of a history page (100 records).
pub const HISTORY_LIMIT: usize = 4 << 20;
/// Cap of an IAM token answer.
pub const IAM_LIMIT: usize = 1 << 20;

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// More than `limit` bytes (the rest was not read; the connection is dropped).
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// No complete body within the deadline.
    TimedOut(Duration),
    /// The transport failed while reading.
    Transport(reqwest::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge { limit } => write!(
                f,
                "the answer is larger than {} (it was not read further)",
                human(*limit)
            ),
            Self::TimedOut(d) => write!(f, "the answer was not read whole within {d:?}"),
            Self::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// `1 MiB`, `512 KiB`, `100 B`.
pub fn human(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// Reads `response`'s body, at most `limit` bytes, within `deadline` (measured from now).
/// A `Content-Length` above the cap fails at once, without reading anything.
pub async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
    deadline: Duration,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
            if body.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut(deadline)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every connection with `head`, then `chunk` forever (chunked).
    async fn endless(head: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let _ = stream.read(&mut buf).await;
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
                    while stream.write_all(chunk.as_bytes()).await.is_ok() {}
                });
            }
        });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn an_endless_body_stops_at_the_cap() {
        let url = endless("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await;
        let response = reqwest::get(&url).await.expect("head");
        let err = read_limited(response, 1 << 20, Duration::from_secs(10))
            .await
            .expect_err("too large");
        assert!(
            matches!(err, BodyError::TooLarge { limit } if limit == 1 << 20),
            "{err}"
        );
        assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    }

    #[tokio::test]
    async fn a_slow_body_stops_at_the_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
                .await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let response = reqwest::get(format!("http://{addr}/")).await.expect("head");
        let started = std::time::Instant::now();
        let err = read_limited(response, 100, Duration::from_millis(300))
            .await
            .expect_err("timed out");
        assert!(matches!(err, BodyError::TimedOut(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_declared_length_above_the_cap_is_refused_unread() {
        let url = endless("HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n").await;
        let response = reqwest::get(&url).await.expect("head");
        let err = read_limited(response, 1000, Duration::from_secs(10))
            .await
            .expect_err("too large");
        assert!(matches!(err, BodyError::TooLarge { .. }), "{err}");
        assert_eq!(human(4 << 20), "4 MiB");
        assert_eq!(human(1000), "1000 B");
    }
}
