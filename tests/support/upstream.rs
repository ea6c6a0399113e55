//! A scriptable fake provider: HTTP/1.1 with keep-alive on a loopback port, one thread per
//! connection. It records every request it receives and answers with whatever the test's
//! handler returns: JSON, an SSE stream (paced), a stall, a reset or a cut.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// Which accepted connection carried it (0, 1, 2, ...).
    pub conn: usize,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub enum Reply {
    Json(u16, serde_json::Value),
    /// Status, extra headers, body (sent with content-length).
    Raw(u16, Vec<(String, String)>, Vec<u8>),
    /// SSE events (each already framed, e.g. `data: {..}\n\n`), sent `delay` apart, chunked.
    Sse {
        events: Vec<String>,
        delay: Duration,
    },
    /// SSE events, then the connection is cut without the final chunk.
    SseThenCut {
        events: Vec<String>,
        delay: Duration,
    },
    /// Sleeps, then answers.
    Delay(Duration, Box<Reply>),
    /// Closes the connection without answering.
    Reset,
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

pub struct FakeUpstream {
    pub port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// Streams the fake gave up writing because the peer went away.
    pub aborted_streams: Arc<AtomicUsize>,
    /// When each stream's last event was written.
    pub last_event_sent: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

impl FakeUpstream {
    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = FakeUpstream {
            port,
            requests: Arc::default(),
            aborted_streams: Arc::default(),
            last_event_sent: Arc::default(),
            stop: Arc::default(),
        };
        let handler: Arc<Handler> = Arc::new(handler);
        let (requests, aborted, last, stop) = (
            fake.requests.clone(),
            fake.aborted_streams.clone(),
            fake.last_event_sent.clone(),
            fake.stop.clone(),
        );
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, r, a, l) = (
                    handler.clone(),
                    requests.clone(),
                    aborted.clone(),
                    last.clone(),
                );
                std::thread::spawn(move || serve(conn, n, &*h, &r, &a, &l));
            }
        });
        fake
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Recorded {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
        conn: 0,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve(
    conn: TcpStream,
    n: usize,
    handler: &Handler,
    requests: &Mutex<Vec<Recorded>>,
    aborted: &AtomicUsize,
    last_sent: &Mutex<Vec<Instant>>,
) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some(mut req) = read_request(&mut reader) {
        req.conn = n;
        requests.lock().unwrap().push(req.clone());
        let mut reply = handler(&req);
        while let Reply::Delay(d, inner) = reply {
            std::thread::sleep(d);
            reply = *inner;
        }
        let ok = match reply {
            Reply::Json(status, v) => {
                let body = v.to_string();
                write!(
                    writer,
                    "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: upstream-req-1\r\n\r\n{body}",
                    reason(status),
                    body.len()
                )
                .is_ok()
            }
            Reply::Raw(status, headers, body) => {
                let mut head = format!(
                    "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\n",
                    reason(status),
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                writer
                    .write_all(head.as_bytes())
                    .and_then(|_| writer.write_all(&body))
                    .is_ok()
            }
            Reply::Sse { events, delay } => {
                stream(&mut writer, &events, delay, true, aborted, last_sent)
            }
            Reply::SseThenCut { events, delay } => {
                stream(&mut writer, &events, delay, false, aborted, last_sent);
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
            Reply::Delay(..) | Reply::Reset => {
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
        };
        if !ok {
            return;
        }
    }
}

fn stream(
    w: &mut TcpStream,
    events: &[String],
    delay: Duration,
    finish: bool,
    aborted: &AtomicUsize,
    last_sent: &Mutex<Vec<Instant>>,
) -> bool {
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    if w.write_all(head.as_bytes()).is_err() {
        return false;
    }
    for (i, e) in events.iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let chunk = format!("{:x}\r\n{e}\r\n", e.len());
        if w.write_all(chunk.as_bytes())
            .and_then(|_| w.flush())
            .is_err()
        {
            aborted.fetch_add(1, Ordering::SeqCst);
            return false;
        }
    }
    last_sent.lock().unwrap().push(Instant::now());
    if finish {
        return w.write_all(b"0\r\n\r\n").is_ok();
    }
    true
}

/// An OpenAI chat completion body.
pub fn chat_completion(model: &str, text: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    })
}

/// OpenAI chat chunks for `pieces`, ending with a finish chunk and `[DONE]`.
pub fn chat_stream(model: &str, pieces: &[&str]) -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut out = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        serde_json::Value::Null,
    )];
    for p in pieces {
        out.push(chunk(
            serde_json::json!({"content": p}),
            serde_json::Value::Null,
        ));
    }
    out.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
    out.push("data: [DONE]\n\n".to_string());
    out
}
