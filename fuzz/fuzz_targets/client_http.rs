//! The whole read path of the real `DeployClient`: the fuzz input is served, byte for byte, as
//! the HTTP answer of a server on a loopback socket (status line, headers, body: anything a
//! hostile or broken gateway could send), to a start call, a history page, a status query or
//! a params query (first byte, mod 4).
//!
//! The server reads the request (headers and `Content-Length` body), writes the input, closes
//! its sending side and drains until the client lets go. A new client per input keeps runs
//! reproducible (no pooled connection, no learned clock carried over).
//!
//! Oracles besides "no panic": every call ends within the request timeout plus a margin (a hang
//! is a finding), a started deployment has a record id, and a 2xx answer is never classified
//! as a certain refusal unless its body carries an error code.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use deployd::api::client::{ClientOptions, DeployClient, Endpoint};
use deployd::api::credentials::Credentials;
use deployd::api::types::StartOutcome;
use deployd::secret::Secret;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const TASK: &str = "d2dc947ec2424d8789bb3984bb3adf45";
const RECORD: &str = "3a9b1f0c5d7e4f2a8b6c0d1e2f3a4b5c";

struct Harness {
    rt: Runtime,
    listener: TcpListener,
    addr: SocketAddr,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        Harness { rt, listener, addr }
    })
}

/// Reads one request: up to the blank line, then `Content-Length` bytes of body.
async fn read_request(sock: &mut TcpStream) {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return;
            }
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn serve(listener: &TcpListener, answer: &[u8]) {
    let Ok((mut sock, _)) = listener.accept().await else {
        return;
    };
    read_request(&mut sock).await;
    let _ = sock.write_all(answer).await;
    let _ = sock.shutdown().await;
    // Drain (closing with unread bytes would reset the connection and lose the answer).
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = sock.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn call(client: DeployClient, kind: u8) {
    let day = NaiveDate::from_ymd_opt(2026, 5, 1).expect("date");
    match kind % 4 {
        0 => {
            let outcome = client.start_task(TASK, "{}").await;
            if let StartOutcome::Started { response, info } = &outcome {
                assert!(!response.id.is_empty(), "started without a record id");
                assert!(
                    info.http_status.is_some_and(|s| (200..300).contains(&s)),
                    "started on {:?}",
                    info.http_status
                );
            }
            if let StartOutcome::Final(info) = &outcome
                && info.http_status.is_some_and(|s| (200..300).contains(&s))
            {
                assert!(info.error_code.is_some(), "a 2xx refused without a code");
            }
        }
        1 => {
            let _ = client
                .history_page("0123456789abcdef0123456789abcdef", TASK, 1, 100, day, day)
                .await;
        }
        2 => {
            let _ = client.record_status(TASK, RECORD).await;
        }
        _ => {
            let _ = client.record_params(TASK, RECORD).await;
        }
    }
    // The client (and its pooled connection) is dropped here, which ends the server's drain.
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, answer)) = data.split_first() else {
        return;
    };
    let h = harness();
    let endpoint = Endpoint::parse(&format!("http://{}", h.addr)).expect("loopback endpoint");
    let client = DeployClient::new(
        endpoint,
        Credentials::Token(Secret::new("fuzz-token-0123456789")),
        ClientOptions {
            connect_timeout: Duration::from_secs(1),
            request_timeout: REQUEST_TIMEOUT,
            pool_idle_timeout: Duration::from_secs(1),
        },
    )
    .expect("client");
    let started = Instant::now();
    h.rt.block_on(async {
        let client_side = async {
            call(client, kind).await;
            started.elapsed()
        };
        let (took, ()) = tokio::join!(client_side, serve(&h.listener, answer));
        assert!(
            took < REQUEST_TIMEOUT + Duration::from_secs(3),
            "the call took {took:?}: the request timeout did not hold"
        );
    });
});
