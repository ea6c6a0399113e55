//! Graceful shutdown and zero-downtime upgrade (SPEC §5) with the real binary and real signals.

mod support;

use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{id, Gateway};

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// A consumer on a mock registry whose streamed answers take about `chunks * delay_ms`.
fn slow_stream_consumer(gw: &Gateway, chunks: u32, delay_ms: u64) -> (String, String) {
    let s = gw.seed_basic();
    let reg = format!("/v1/gateways/{}/registries/{}", s.gid, s.registry_id);
    let (st, v) = gw.admin(
        "PATCH",
        &reg,
        Some(json!({"options": {"chunks": chunks, "chunk_delay_ms": delay_ms}})),
    );
    assert_eq!(st, 200, "{v}");
    (s.slug, s.key)
}

fn stream_text(http: &reqwest::blocking::Client, url: &str, key: &str) -> String {
    http.post(url)
        .bearer_auth(key)
        .json(&json!({"stream": true, "messages": [{"role": "user", "content": "a long enough answer to stream"}]}))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

#[test]
fn sigterm_drains_then_finishes_streams_in_flight_and_exits_0() {
    let mut gw = Gateway::start_with(
        "shutdown: {drain_delay_ms: 600, grace_period_s: 4, shutdown_timeout_s: 1}",
    );
    let (slug, key) = slow_stream_consumer(&gw, 10, 150);
    let url = gw.proxy_url(&format!("/{slug}/v1/chat/completions"));
    let http = gw.http.clone();
    let stream = std::thread::spawn(move || stream_text(&http, &url, &key));
    std::thread::sleep(Duration::from_millis(200));
    signal(gw.pid(), "TERM");
    // At once: not ready (load balancers drain this host), still healthy.
    let deadline = Instant::now() + Duration::from_millis(400);
    loop {
        let r = gw.http.get(gw.proxy_url("/readyz")).send().unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz did not turn 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        gw.http
            .get(gw.proxy_url("/healthz"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let text = stream.join().unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the stream in flight was cut: {text}"
    );
    let status = {
        let child = gw.child_mut();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit after the grace period"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
}

#[test]
fn upgrade_hands_over_without_losing_a_request() {
    let mut gw = Gateway::start_with(
        "shutdown: {drain_delay_ms: 100, grace_period_s: 3, shutdown_timeout_s: 1}",
    );
    let (slug, key) = slow_stream_consumer(&gw, 8, 250);
    let url = gw.proxy_url(&format!("/{slug}/v1/chat/completions"));
    // A fresh connection per request, as a load balancer's probes would make.
    let fresh = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    let ok = AtomicUsize::new(0);
    let new_out = std::fs::File::create(gw.dir.path().join("b.log")).unwrap();
    let mut b = None;
    std::thread::scope(|s| {
        let (url2, key2, fresh2) = (url.clone(), key.clone(), fresh.clone());
        let stream = s.spawn(move || stream_text(&fresh2, &url2, &key2));
        let sender = s.spawn(|| {
            for i in 0..500 {
                let r = fresh
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({"messages": [{"role": "user", "content": format!("n{i}")}]}))
                    .send()
                    .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
                assert_eq!(r.status(), 200, "request {i}");
                assert_eq!(
                    r.json::<Value>().unwrap()["choices"][0]["message"]["content"],
                    format!("n{i}")
                );
                ok.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(8));
            }
            stop.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(300));
        // The new process waits for the sockets; then the old one is told to hand them over.
        b = Some(
            Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(["run", "--upgrade", "--config"])
                .arg(gw.config_path())
                .stdout(Stdio::from(new_out.try_clone().unwrap()))
                .stderr(Stdio::from(new_out))
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(500));
        signal(gw.pid(), "QUIT");
        let text = stream.join().unwrap();
        assert!(
            text.ends_with("data: [DONE]\n\n"),
            "the stream in flight during the upgrade was cut: {text}"
        );
        sender.join().unwrap();
    });
    assert_eq!(ok.load(Ordering::SeqCst), 500);
    // The old process exits; the new one serves the proxy and the admin API, store included.
    let old = gw.child_mut();
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut b = b.unwrap();
    assert!(
        b.try_wait().unwrap().is_none(),
        "the new process died: {}",
        std::fs::read_to_string(gw.dir.path().join("b.log")).unwrap()
    );
    assert_eq!(
        gw.http
            .get(gw.proxy_url("/readyz"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let created = gw.create("/v1/gateways", json!({"name": "after-upgrade"}));
    assert!(!id(&created).is_empty());
    let r = fresh
        .post(&url)
        .bearer_auth(&key)
        .json(&json!({"messages": [{"role": "user", "content": "still"}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = b.kill();
    let _ = b.wait();
}

/// A kept-alive connection waiting for its next request is closed once the drain ends, not
/// held until the process exits.
#[test]
fn sigterm_closes_idle_kept_alive_connections_after_the_drain() {
    use std::io::{Read, Write};
    let mut gw = Gateway::start_with(
        "shutdown: {drain_delay_ms: 300, grace_period_s: 5, shutdown_timeout_s: 1}",
    );
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", gw.proxy_port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut chunk = [0u8; 1024];
    let n = conn.read(&mut chunk).unwrap();
    let answer = String::from_utf8_lossy(&chunk[..n]).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("ok"),
        "{answer}"
    );
    let sent = Instant::now();
    signal(gw.pid(), "TERM");
    // The connection stays open and idle until the gateway closes it.
    assert_eq!(conn.read(&mut chunk).unwrap(), 0, "no second answer");
    let closed_after = sent.elapsed();
    assert!(
        gw.child_mut().try_wait().unwrap().is_none(),
        "the connection was closed only by the exit ({closed_after:?})"
    );
    assert!(
        closed_after >= Duration::from_millis(300) && closed_after < Duration::from_secs(3),
        "closed {closed_after:?} after SIGTERM"
    );
}
