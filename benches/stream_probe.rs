//! The measuring client of the load benchmark (`benches/load.sh`); raw HTTP/1.1 over tokio.
//! Every subcommand prints one JSON object on stdout.
//!
//! - `stream BASE TARGET...`: streams `--runs` times through each target (interleaved, each
//!   run in a rotated order) and records each event's transit time: its arrival minus the
//!   upstream's send time, which `fast_upstream` writes into the event's text as
//!   `@<unix nanos>;`. For every target it reports the time to first byte and, per event, the
//!   added latency over BASE (event i of run r through the target minus event i of run r from
//!   BASE): median and p99. BASE is the first target, or the one a target names after `@`.
//!   A target is `name[@base]=host:port/path[#key]`: several groups, each with its own base,
//!   can so take turns in one interleaved series.
//! - `hold TARGET --n N --pid PID [--h2c CONNS] [--prompt-bytes B]`: opens N concurrent streams
//!   (each asking with a B-byte prompt, if given) and reports PID's VmRSS before, and once
//!   every stream has delivered its first event. With `--h2c`, the streams share CONNS HTTP/2
//!   connections (prior knowledge), as from a load balancer.
//! - `admin host:port/path --token T --n N`: N sequential PATCHes (`{"headers": ...}`) on one
//!   keep-alive connection; latency percentiles.
//! - `ready host:port --since-ns T0`: polls `GET /readyz` until 200; milliseconds since T0.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[derive(Clone)]
struct Target {
    name: String,
    /// The target whose events this one's added latency is measured against.
    base: Option<String>,
    addr: String,
    path: String,
    key: Option<String>,
}

impl Target {
    fn parse(s: &str) -> Target {
        let (name, rest) = s.split_once('=').unwrap_or(("target", s));
        let (name, base) = match name.split_once('@') {
            Some((n, b)) => (n, Some(b.to_string())),
            None => (name, None),
        };
        let (rest, key) = match rest.split_once('#') {
            Some((r, k)) => (r, Some(k.to_string())),
            None => (rest, None),
        };
        let slash = rest.find('/').unwrap_or(rest.len());
        Target {
            name: name.into(),
            base,
            addr: rest[..slash].into(),
            path: if slash < rest.len() {
                rest[slash..].into()
            } else {
                "/".into()
            },
            key,
        }
    }

    fn request(&self, method: &str, body: &str, extra: &str) -> Vec<u8> {
        let auth = self
            .key
            .as_ref()
            .map(|k| format!("authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        format!(
            "{method} {} HTTP/1.1\r\nhost: {}\r\n{auth}{extra}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.path,
            self.addr,
            body.len()
        )
        .into_bytes()
    }
}

fn stream_body(model: &str) -> String {
    stream_body_with(model, "hi")
}

fn stream_body_with(model: &str, prompt: &str) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":1024,"messages":[{{"role":"user","content":"{prompt}"}}],"stream":true}}"#
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One HTTP/1.1 connection with a read buffer.
struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        Ok(Conn {
            sock,
            buf: Vec::with_capacity(8192),
        })
    }

    /// Reads more bytes into the buffer; false at EOF.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut tmp = [0u8; 16384];
        let n = self.sock.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n > 0)
    }

    /// The status and framing of the response head (consumed from the buffer).
    async fn head(&mut self) -> std::io::Result<(u16, Framing)> {
        let end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        self.buf.drain(..end);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let header = |n: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(n).map(|v| v.trim().to_string()))
        };
        let framing = if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            Framing::Chunked
        } else if let Some(len) = header("content-length:").and_then(|v| v.parse().ok()) {
            Framing::Length(len)
        } else {
            Framing::Close
        };
        Ok((status, framing))
    }

    /// Reads the body, handing each decoded piece to `on` with its arrival time (unix nanos).
    async fn body(
        &mut self,
        framing: Framing,
        mut on: impl FnMut(&[u8], i128),
    ) -> std::io::Result<()> {
        match framing {
            Framing::Length(mut left) => loop {
                let take = left.min(self.buf.len());
                if take > 0 {
                    on(&self.buf[..take], now_nanos());
                    self.buf.drain(..take);
                    left -= take;
                }
                if left == 0 || !self.fill().await? {
                    return Ok(());
                }
            },
            Framing::Close => loop {
                if !self.buf.is_empty() {
                    on(&self.buf, now_nanos());
                    self.buf.clear();
                }
                if !self.fill().await? {
                    return Ok(());
                }
            },
            Framing::Chunked => loop {
                // Deliver every complete chunk in the buffer, then read more.
                while let Some(le) = find(&self.buf, b"\r\n") {
                    let line = String::from_utf8_lossy(&self.buf[..le]).to_string();
                    let size =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                            .map_err(|_| {
                                std::io::Error::other(format!("bad chunk size {line:?}"))
                            })?;
                    if self.buf.len() < le + 2 + size + 2 {
                        break;
                    }
                    if size == 0 {
                        self.buf.drain(..le + 4);
                        return Ok(());
                    }
                    on(&self.buf[le + 2..le + 2 + size], now_nanos());
                    self.buf.drain(..le + 2 + size + 2);
                }
                if !self.fill().await? {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            },
        }
    }
}

/// The `@<nanos>;` stamps of the complete SSE events in `sse`, which is drained of them.
fn stamps(sse: &mut Vec<u8>) -> Vec<i128> {
    let mut out = Vec::new();
    while let Some(end) = find(sse, b"\n\n") {
        let ev = &sse[..end];
        if let Some(at) = ev.iter().position(|&b| b == b'@') {
            let digits: String = ev[at + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|&b| b as char)
                .collect();
            if let Ok(t) = digits.parse() {
                out.push(t);
            }
        }
        sse.drain(..end + 2);
    }
    out
}

struct Run {
    ttfb_us: f64,
    /// Transit time of each stamped event, in microseconds.
    transit_us: Vec<f64>,
}

async fn stream_once(t: &Target, model: &str) -> std::io::Result<Run> {
    let mut c = Conn::open(&t.addr).await?;
    let start = Instant::now();
    c.sock
        .write_all(&t.request("POST", &stream_body(model), "accept: text/event-stream\r\n"))
        .await?;
    // The time to first byte: until the first bytes of the answer arrive.
    while c.buf.is_empty() {
        if !c.fill().await? {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let ttfb_us = start.elapsed().as_secs_f64() * 1e6;
    let (status, framing) = c.head().await?;
    if status != 200 {
        return Err(std::io::Error::other(format!(
            "{}: status {status}",
            t.name
        )));
    }
    let mut sse = Vec::new();
    let mut transit_us = Vec::new();
    c.body(framing, |piece, at| {
        sse.extend_from_slice(piece);
        for sent in stamps(&mut sse) {
            transit_us.push((at - sent) as f64 / 1e3);
        }
    })
    .await?;
    Ok(Run {
        ttfb_us,
        transit_us,
    })
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[(((v.len() - 1) as f64) * p / 100.0).round() as usize]
}

async fn cmd_stream(args: &[String]) {
    let targets: Vec<Target> = args
        .iter()
        .take_while(|a| !a.starts_with("--"))
        .map(|s| Target::parse(s))
        .collect();
    let runs: usize = arg(args, "--runs", "5").parse().unwrap();
    let model = arg(args, "--model", "sse-500-1");
    // Each target's base, resolved before anything streams: a misspelt name fails at once.
    let bases: Vec<usize> = targets
        .iter()
        .map(|t| match &t.base {
            Some(b) => targets
                .iter()
                .position(|x| &x.name == b)
                .unwrap_or_else(|| panic!("{}: no target named {b}", t.name)),
            None => 0,
        })
        .collect();
    let mut results: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    // Each run starts one target later (ABC BCA CAB ...): the target that streams right after
    // another reads a few µs more per event, whichever build it is.
    for r in 0..runs {
        for k in 0..targets.len() {
            let i = (k + r) % targets.len();
            let t = &targets[i];
            let run = stream_once(t, &model)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", t.name));
            results[i].push(run);
        }
    }
    let expected: usize = model
        .split('-')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut out = serde_json::Map::new();
    for (i, t) in targets.iter().enumerate() {
        let mut ttfb: Vec<f64> = results[i].iter().map(|r| r.ttfb_us).collect();
        let mut transit: Vec<f64> = results[i]
            .iter()
            .flat_map(|r| r.transit_us.clone())
            .collect();
        let mut added = Vec::new();
        for (r, run) in results[i].iter().enumerate() {
            for (a, b) in run.transit_us.iter().zip(&results[bases[i]][r].transit_us) {
                added.push(a - b);
            }
        }
        let events_min = results[i]
            .iter()
            .map(|r| r.transit_us.len())
            .min()
            .unwrap_or(0);
        out.insert(
            t.name.clone(),
            serde_json::json!({
                "ttfb_p50_us": pct(&mut ttfb, 50.0),
                "transit_p50_us": pct(&mut transit, 50.0),
                "transit_p99_us": pct(&mut transit, 99.0),
                "added_p50_us": pct(&mut added, 50.0),
                "added_p99_us": pct(&mut added, 99.0),
                "events_per_run_min": events_min,
                "events_expected": expected,
            }),
        );
    }
    println!("{}", serde_json::Value::Object(out));
}

fn vm_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn cmd_hold(args: &[String]) {
    let t = Target::parse(&args[0]);
    let n: usize = arg(args, "--n", "2000").parse().unwrap();
    let pid = arg(args, "--pid", "0");
    let model = arg(args, "--model", "sse-60-500");
    // `--prompt-bytes N`: each request's user message is N bytes long (default: "hi").
    let body = match arg(args, "--prompt-bytes", "0").parse().unwrap() {
        0 => stream_body(&model),
        n => stream_body_with(&model, &"x".repeat(n)),
    };
    let before = vm_kib(&pid, "VmRSS:");
    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(100));
    let started = Instant::now();
    let h2c: usize = arg(args, "--h2c", "0").parse().unwrap();
    // With `--h2c`, CONNS connections carry the streams; else each stream has its own.
    let conns = if h2c > 0 { h2c } else { n };
    for c in 0..conns {
        let (t, body, opened, failed) = (t.clone(), body.clone(), opened.clone(), failed.clone());
        match n.checked_div(h2c) {
            None => {
                let gate = gate.clone();
                tokio::spawn(async move {
                    if h1_stream(&t, &body, &gate, &opened).await.is_err() {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            Some(per_conn) => {
                // Spread evenly: CONNS connections, the first ones one stream more.
                let share = per_conn + usize::from(c < n % h2c);
                tokio::spawn(async move {
                    if let Err(e) = h2c_streams(&t, &body, share, &opened).await {
                        eprintln!("h2c connection: {e}");
                        failed.fetch_add(share, Ordering::SeqCst);
                    }
                });
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while opened.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < n
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_s = started.elapsed().as_secs_f64();
    // Sample for 2 s while every stream is open, keep the largest.
    let mut during = 0;
    for _ in 0..20 {
        during = during.max(vm_kib(&pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open = opened.load(Ordering::SeqCst);
    println!(
        "{}",
        serde_json::json!({"streams": n, "h2c_connections": h2c, "open": open, "failed": failed.load(Ordering::SeqCst),
            "seconds_to_open": open_s, "rss_before_kib": before, "rss_during_kib": during,
            "kib_per_stream": (during as f64 - before as f64) / open.max(1) as f64})
    );
    std::process::exit(0);
}

/// One stream on its own HTTP/1.1 connection, opened while `gate` lets it (the probe opens at
/// most 100 at a time); counts into `opened` at its first event and is then read to its end.
async fn h1_stream(
    t: &Target,
    body: &str,
    gate: &Arc<tokio::sync::Semaphore>,
    opened: &Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let permit = gate.acquire().await.unwrap();
    let mut c = Conn::open(&t.addr).await?;
    c.sock.write_all(&t.request("POST", body, "")).await?;
    let (status, framing) = c.head().await?;
    if status != 200 {
        return Err(std::io::Error::other(format!("status {status}")));
    }
    drop(permit);
    let mut first = FirstEvent::new(opened);
    c.body(framing, |piece, _| first.feed(piece)).await
}

/// Counts a held stream into `opened` once, at its first stamped event.
struct FirstEvent {
    opened: Arc<AtomicUsize>,
    sse: Vec<u8>,
    counted: bool,
}

impl FirstEvent {
    fn new(opened: &Arc<AtomicUsize>) -> FirstEvent {
        FirstEvent {
            opened: opened.clone(),
            sse: Vec::new(),
            counted: false,
        }
    }

    fn feed(&mut self, piece: &[u8]) {
        self.sse.extend_from_slice(piece);
        if !self.counted && !stamps(&mut self.sse).is_empty() {
            self.counted = true;
            self.opened.fetch_add(1, Ordering::SeqCst);
        }
        self.sse.clear();
    }
}

/// `n` streams on one HTTP/2 connection, each sending `body`; each counts into `opened` at its
/// first event and is then read to its end. Returns once every stream has ended (or on the
/// first failure).
async fn h2c_streams(
    t: &Target,
    body: &str,
    n: usize,
    opened: &Arc<AtomicUsize>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let sock = TcpStream::connect(&t.addr).await?;
    sock.set_nodelay(true)?;
    let (client, conn) = h2::client::handshake(sock).await?;
    tokio::spawn(conn);
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut client = client.clone().ready().await?;
        let mut req = http::Request::post(format!("http://{}{}", t.addr, t.path))
            .header("content-type", "application/json");
        if let Some(k) = &t.key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let (answer, mut send) = client.send_request(req.body(())?, false)?;
        send.send_data(bytes::Bytes::copy_from_slice(body.as_bytes()), true)?;
        let opened = opened.clone();
        streams.spawn(async move {
            let answer = answer.await?;
            if answer.status() != 200 {
                return Err(format!("status {}", answer.status()).into());
            }
            let mut body = answer.into_body();
            let mut first = FirstEvent::new(&opened);
            while let Some(piece) = body.data().await {
                let piece = piece?;
                let _ = body.flow_control().release_capacity(piece.len());
                first.feed(&piece);
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    while let Some(done) = streams.join_next().await {
        done??;
    }
    Ok(())
}

async fn cmd_admin(args: &[String]) {
    let t = Target::parse(&args[0]);
    let token = arg(args, "--token", "");
    let n: usize = arg(args, "--n", "1000").parse().unwrap();
    let auth = format!("authorization: Bearer {token}\r\n");
    let mut conn: Option<Conn> = None;
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    let started = Instant::now();
    let start_ns = now_nanos();
    for i in 0..n {
        let body = format!(r#"{{"headers":{{"x-bench-rev":"{i}"}}}}"#);
        let req = t.request("PATCH", &body, &auth);
        let t0 = Instant::now();
        let mut c = match conn.take() {
            Some(c) => c,
            None => Conn::open(&t.addr).await.expect("admin connect"),
        };
        c.sock.write_all(&req).await.expect("admin write");
        let (status, framing) = c.head().await.expect("admin head");
        let close = matches!(framing, Framing::Close);
        c.body(framing, |_, _| {}).await.expect("admin body");
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
        if status != 200 {
            errors += 1;
        }
        if !close {
            conn = Some(c);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let mean = lat.iter().sum::<f64>() / lat.len().max(1) as f64;
    println!(
        "{}",
        serde_json::json!({"writes": n, "errors": errors, "seconds": secs, "start_ns": start_ns.to_string(),
            "p50_ms": pct(&mut lat, 50.0), "p99_ms": pct(&mut lat, 99.0), "max_ms": pct(&mut lat, 100.0), "mean_ms": mean})
    );
}

async fn cmd_ready(args: &[String]) {
    let addr = args[0].clone();
    let since: i128 = arg(args, "--since-ns", "0").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let t = Target {
        name: "ready".into(),
        base: None,
        addr,
        path: "/readyz".into(),
        key: None,
    };
    while Instant::now() < deadline {
        if let Ok(mut c) = Conn::open(&t.addr).await {
            if c.sock.write_all(&t.request("GET", "", "")).await.is_ok() {
                if let Ok((200, _)) = c.head().await {
                    let ms = (now_nanos() - since) as f64 / 1e6;
                    println!("{}", serde_json::json!({"ready_ms": ms}));
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!("{}", serde_json::json!({"ready_ms": null}));
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("stream") => cmd_stream(rest).await,
        Some("hold") => cmd_hold(rest).await,
        Some("admin") => cmd_admin(rest).await,
        Some("ready") => cmd_ready(rest).await,
        _ => {
            eprintln!("usage: stream_probe stream|hold|admin|ready ... (see the file's header)");
            std::process::exit(2);
        }
    }
}
