//! Test harness: the server in-process on a free loopback port with a tiny checkpoint on the
//! CPU, and a minimal HTTP/1.1 client over `std::net::TcpStream` (no client dependency).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use phi3v_server::{ModelOptions, ModelService, RunningServer, ServerConfig, spawn};
use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The repository's `tests/fixtures`, or `PHI3V_FIXTURES` (a test binary run on another machine).
pub fn fixtures() -> PathBuf {
    std::env::var_os("PHI3V_FIXTURES").map_or_else(|| root().join("tests/fixtures"), PathBuf::from)
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub fn image_path(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// `data:image/png;base64,…` of a fixture image.
pub fn data_url(name: &str) -> String {
    use base64::Engine as _;
    let bytes = std::fs::read(image_path(name)).expect("fixture image");
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Starts a server on 127.0.0.1:0 for `model` on the CPU (or `PHI3V_SERVER_TEST_DEVICE`, in
/// `PHI3V_SERVER_TEST_DTYPE`); `configure` adjusts its settings.
pub fn start(model: &str, configure: impl FnOnce(&mut ModelOptions, &mut ServerConfig)) -> RunningServer {
    let device = std::env::var("PHI3V_SERVER_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let mut options = ModelOptions::new(model_dir(model), device);
    options.dtype = std::env::var("PHI3V_SERVER_TEST_DTYPE").ok();
    // Service settings that need the model are applied after loading; start from defaults.
    let mut probe = ServerConfig {
        served_model_name: model.to_string(),
        api_key: None,
        allow_local_images: false,
        max_body_bytes: 32 << 20,
        default_max_tokens: 16,
    };
    configure(&mut options, &mut probe);
    let service = Arc::new(ModelService::load(&options).expect("load the test model"));
    spawn(service, probe, "127.0.0.1:0".parse().unwrap()).expect("bind a loopback port")
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `data:` payloads of a server-sent event stream, in order.
    pub fn sse_data(&self) -> Vec<String> {
        sse_data(&self.text())
    }
}

pub fn sse_data(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| d.trim_start().to_string()).collect()
}

/// Writes one request (`Connection: close`) and returns the open stream.
pub fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    // A server that answers early (413) may close before reading everything.
    let _ = s.write_all(body);
    s
}

/// Reads a whole response from a stream opened by [`send`] (or from its bytes).
pub fn read_response(s: impl Read) -> Response {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).expect("chunk size");
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).expect("chunk size");
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk).expect("chunk");
            body.extend(chunk);
            line.clear();
            r.read_line(&mut line).expect("chunk end");
        }
    } else {
        r.read_to_end(&mut body).expect("body");
    }
    Response { status, headers, body }
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    read_response(send(addr, method, path, headers, body))
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

pub fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Response {
    request(addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
}

/// The concatenated text of a chat (`delta.content`) or completion (`text`) stream, and the
/// parsed chunks (without `[DONE]`); panics unless the stream ends with `[DONE]`.
pub fn stream_text(events: &[String]) -> (String, Vec<Value>) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "stream must end with [DONE]: {events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("chunk not JSON ({err}): {e}")))
        .collect();
    let mut text = String::new();
    for c in &chunks {
        assert!(c.get("error").is_none(), "error in stream: {c}");
        if let Some(choice) = c["choices"].get(0) {
            if let Some(t) = choice["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if let Some(t) = choice["text"].as_str() {
                text.push_str(t);
            }
        }
    }
    (text, chunks)
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A metric's value from `/metrics` text (the first sample whose name and labels match).
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {sample} not in:\n{text}"))
}
