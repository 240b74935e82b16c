//! A running `glimpse serve` and a plain HTTP client for tests: start it on a free
//! loopback port, follow its log, send requests, read raw responses.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bin;

/// A running `glimpse serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(bin("glimpse"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("GLIMPSE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("glimpse serve starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("  [serve] {line}");
                    if let Some(rest) = line.strip_prefix("glimpse serve: listening on http://") {
                        let addr = rest.split_whitespace().next().unwrap().to_string();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("glimpse serve did not start: {:#?}", log.lock().unwrap());
            }
        };
        Server { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits until a stderr line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                t0.elapsed() < timeout,
                "no log line with {needle:?} within {timeout:?}: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < timeout,
                "glimpse serve did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Status, headers of interest and JSON (or text) body of one request.
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub www_authenticate: Option<String>,
    pub content_type: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

pub fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>, what: &str) -> Reply {
    let mut r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
    let h = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("").to_string())
    };
    let (retry_after, www_authenticate, content_type) = (
        h("retry-after"),
        h("www-authenticate"),
        h("content-type").unwrap_or_default(),
    );
    Reply {
        status: r.status().as_u16(),
        retry_after,
        www_authenticate,
        content_type,
        body: r.body_mut().read_to_string().unwrap(),
    }
}

pub fn get(a: &ureq::Agent, url: &str, token: Option<&str>) -> Reply {
    get_with(a, url, token, &[])
}

/// `get` with more request headers.
pub fn get_with(
    a: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = a.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    reply(req.call(), &format!("GET {url}"))
}

pub fn post(
    a: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Reply {
    let mut req = a.post(url).header("Content-Type", content_type);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    reply(
        req.send(body),
        &format!("POST {url} ({} bytes)", body.len()),
    )
}

/// `PUT` of `body` with more request headers.
pub fn put(
    a: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut req = a.put(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    reply(req.send(body), &format!("PUT {url} ({} bytes)", body.len()))
}

/// A connection to `addr` from the local address `from` (another loopback address such as
/// 127.0.0.2 makes another peer).
pub fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("binding to {from}: {e}"));
    s.connect(&addr.into())
        .unwrap_or_else(|e| panic!("connecting from {from} to {addr}: {e}"));
    s.into()
}

/// Reads one HTTP/1.1 response (headers and Content-Length body) from a raw socket.
pub fn read_response(s: &mut TcpStream) -> (u16, String) {
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Sends one raw request, its whole body first, and only then reads the answer, as
/// Python's urllib and many embedded clients do; panics if the server stops reading
/// before the body is sent (the client would see a reset, not the answer).
pub fn send_then_read(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut request = head.as_bytes().to_vec();
    request.extend_from_slice(body);
    std::io::Write::write_all(&mut s, &request)
        .unwrap_or_else(|e| panic!("sending {} bytes: {e} ({head:?})", request.len()));
    read_response(&mut s)
}

/// A multipart form with a text field and `bytes` as the file field `field`.
pub fn multipart(field: &str, filename: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "glimpse-test-boundary-7d0f";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The value of one sample line (`name{labels} value`) in a metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
