//! Helpers of the hostile-input tests: a tiny HTTP/1.1 server whose every connection gets the
//! reply the test chooses (model downloads and a fake Kubernetes API alike), counting the
//! requests it got and the body bytes it managed to send.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// What a connection gets.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A complete answer.
    Full {
        /// HTTP status.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// The body (its Content-Length is sent).
        body: Vec<u8>,
    },
    /// A chunked 200 of `total` bytes without Content-Length, sent as fast as it is read.
    Chunked {
        /// Bytes the body would have.
        total: u64,
    },
    /// A 200 whose headers promise `length` bytes, then nothing, for ever.
    StallBody {
        /// Content-Length sent.
        length: u64,
    },
    /// Reads the request and never answers.
    Silent,
}

impl Reply {
    /// A 200 with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::Full {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// An empty answer with `status`.
    pub fn status(status: u16) -> Self {
        Self::Full {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self::Full {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    /// A redirect to `location`.
    pub fn redirect(location: &str) -> Self {
        Self::Full {
            status: 302,
            headers: vec![("Location".into(), location.into())],
            body: Vec::new(),
        }
    }

    /// A 200 that declares `length` bytes in Content-Length but is refused before its body.
    pub fn declared(length: u64) -> Self {
        Self::StallBody { length }
    }
}

/// A running server.
#[derive(Clone, Debug)]
pub struct Server {
    /// Where it listens.
    pub address: SocketAddr,
    /// Requests received.
    pub requests: Arc<AtomicUsize>,
    /// Body bytes written to the sockets (accepted by the kernel, not necessarily read).
    pub body_bytes_sent: Arc<AtomicU64>,
}

impl Server {
    /// `http://address{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Starts a server on 127.0.0.1 answering each request with `reply(path, index)`, `index`
/// counting requests from 0.
pub async fn serve(reply: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server {
        address: listener.local_addr().unwrap(),
        requests: Arc::default(),
        body_bytes_sent: Arc::default(),
    };
    let reply = Arc::new(reply);
    let counters = server.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (reply, counters) = (Arc::clone(&reply), counters.clone());
            tokio::spawn(async move {
                let _ = answer(stream, &*reply, &counters).await;
            });
        }
    });
    server
}

async fn answer(
    mut stream: TcpStream,
    reply: &(dyn Fn(&str, usize) -> Reply + Send + Sync),
    counters: &Server,
) -> std::io::Result<()> {
    let Some(path) = read_request_path(&mut stream).await? else {
        return Ok(());
    };
    let index = counters.requests.fetch_add(1, Ordering::SeqCst);
    match reply(&path, index) {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
                reason(status),
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
            counters
                .body_bytes_sent
                .fetch_add(body.len() as u64, Ordering::SeqCst);
        }
        Reply::Chunked { total } => {
            static CHUNK: [u8; 64 * 1024] = [0x5a; 64 * 1024];
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                )
                .await?;
            let mut sent = 0u64;
            while sent < total {
                let n = (total - sent).min(CHUNK.len() as u64) as usize;
                stream.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                stream.write_all(&CHUNK[..n]).await?;
                stream.write_all(b"\r\n").await?;
                sent += n as u64;
                counters
                    .body_bytes_sent
                    .fetch_add(n as u64, Ordering::SeqCst);
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
        Reply::StallBody { length } => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(b"ONNX").await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Reply::Silent => tokio::time::sleep(Duration::from_secs(3600)).await,
    }
    stream.shutdown().await
}

/// The request's path, once its head has arrived; None when the client went away first.
async fn read_request_path(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(None);
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    Ok(Some(path))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        403 => "Forbidden",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A Kubernetes `Status` answer (what the API server sends for a missing object).
pub fn kube_status(code: u16, reason: &str, message: &str) -> Reply {
    Reply::json(
        code,
        &serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code
        }),
    )
}

/// A minimal ONNX model: `x` `[batch, dims...]` float32 through Identity to `y`, encoded by
/// hand (ONNX is protobuf), for declarations no exporter would write.
pub fn identity_model(dims: &[i64]) -> Vec<u8> {
    let dimension = |d: i64| {
        if d < 0 {
            field_bytes(2, b"batch")
        } else {
            field_varint(1, d as u64)
        }
    };
    let mut shape = Vec::new();
    for d in std::iter::once(-1).chain(dims.iter().copied()) {
        shape.extend(field_bytes(1, &dimension(d)));
    }
    let tensor = [field_varint(1, 1), field_bytes(2, &shape)].concat();
    let value_type = field_bytes(1, &tensor);
    let value_info =
        |name: &str| [field_bytes(1, name.as_bytes()), field_bytes(2, &value_type)].concat();
    let node = [
        field_bytes(1, b"x"),
        field_bytes(2, b"y"),
        field_bytes(4, b"Identity"),
    ]
    .concat();
    let graph = [
        field_bytes(1, &node),
        field_bytes(2, b"g"),
        field_bytes(11, &value_info("x")),
        field_bytes(12, &value_info("y")),
    ]
    .concat();
    let opset = [field_bytes(1, b""), field_varint(2, 17)].concat();
    [
        field_varint(1, 8),
        field_bytes(8, &opset),
        field_bytes(7, &graph),
    ]
    .concat()
}

fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn field_varint(field: u64, value: u64) -> Vec<u8> {
    [varint(field << 3), varint(value)].concat()
}

fn field_bytes(field: u64, bytes: &[u8]) -> Vec<u8> {
    [
        varint((field << 3) | 2),
        varint(bytes.len() as u64),
        bytes.to_vec(),
    ]
    .concat()
}
