//! Running a real `braid serve` from the integration tests: [`Server::start`] spawns the built binary
//! on a free loopback port (`--port 0`; the port is read from its "listening on" log line), on the
//! CPU, and waits until `/health` answers 200. Its stderr is drained on a thread (a full pipe would
//! block the server's logging) and kept for failure messages. Dropping a `Server` kills a process
//! still running. [`request`] is a minimal HTTP/1.1 client on `std::net` (`Connection: close`, the
//! whole response read), so the tests see exactly the bytes the server sent.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a server may take to load the model and warm up.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// A running `braid serve`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// `braid serve --device cpu --port 0 EXTRA...`, ready.
    pub fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_braid"))
            .args([
                "serve",
                "--device",
                "cpu",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
            ])
            .args(extra)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("BRAID_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("braid serve starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (found, listening) = mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("listening on http://") {
                    let addr = line[at + "listening on http://".len()..].trim().to_string();
                    let _ = found.send(addr);
                }
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = listening
            .recv_timeout(READY_LIMIT)
            .unwrap_or_else(|_| panic!("no 'listening on' line: {}", log.lock().unwrap()));
        let server = Self {
            child,
            addr: addr.parse().expect("a socket address"),
            log,
        };
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = request(server.addr, "GET", "/health", &[], b"") {
                return server;
            }
            assert!(start.elapsed() < READY_LIMIT, "not ready: {}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "still running {limit:?} after the signal: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 request (`Connection: close`): the status and the body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // The server may answer (413) and close before it has read a large body: that is not an error.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let status_line = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {status_line}")))?;
    Ok((status, response[split + 4..].to_vec()))
}

/// POSTs JSON; the status and the body as JSON (`Value::Null` when it is not JSON).
pub fn post_json(addr: SocketAddr, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let (status, bytes) = request(addr, "POST", path, &headers, body.to_string().as_bytes())
        .expect("the server answers");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The golden fixture's cases: (text, token ids, embedding).
pub fn golden() -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../model/tests/fixtures/minilm-golden.json"
    );
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            (
                case["text"].as_str().unwrap().to_string(),
                serde_json::from_value(case["ids"].clone()).unwrap(),
                serde_json::from_value(case["embedding"].clone()).unwrap(),
            )
        })
        .collect()
}
