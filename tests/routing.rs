//! Selection, fallback, circuit breakers and `/v1/status` (SPEC §3 steps 7 and 9), against
//! fake providers that fail on command.

mod support;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::upstream::{chat_completion, chat_stream, FakeUpstream, Reply};
use support::{id, Gateway};

struct Env {
    gid: String,
    key: String,
    slug: String,
    consumer_id: String,
    regs: Vec<String>,
}

/// Registries (given as JSON), one key, one consumer using them with `consumer` fields.
fn setup(gw: &Gateway, registries: Vec<Value>, consumer: impl Fn(&[String]) -> Value) -> Env {
    let gid = id(&gw.create("/v1/gateways", json!({"name": "g"})));
    let g = |c: &str| format!("/v1/gateways/{gid}/{c}");
    let regs: Vec<String> = registries
        .into_iter()
        .map(|r| id(&gw.create(&g("registries"), r)))
        .collect();
    let auth = gw.create(&g("auths"), json!({"name": "k", "type": "api_key"}));
    let mut body = consumer(&regs);
    body["name"] = json!("app");
    body["auth_ids"] = json!([id(&auth)]);
    let c = gw.create(&g("consumers"), body);
    Env {
        gid,
        key: auth["key"].as_str().unwrap().to_string(),
        slug: c["slug"].as_str().unwrap().to_string(),
        consumer_id: id(&c),
        regs,
    }
}

fn fake_reg(name: &str, fake: &FakeUpstream, extra: Value) -> Value {
    let mut r =
        json!({"name": name, "provider": "openai", "base_url": format!("{}/v1", fake.base_url())});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        r[k] = v;
    }
    r
}

fn weighted(regs: &[String], weights: &[u32]) -> Vec<Value> {
    regs.iter()
        .zip(weights)
        .map(|(r, w)| json!({"id": r, "weight": w}))
        .collect()
}

/// (status, registry, attempts, body)
fn send(gw: &Gateway, e: &Env, body: Value) -> (u16, String, String, Value) {
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{}/v1/chat/completions", e.slug)))
        .bearer_auth(&e.key)
        .json(&body)
        .send()
        .unwrap();
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (reg, attempts) = (h("x-switchyard-registry"), h("x-switchyard-attempts"));
    let status = r.status().as_u16();
    (status, reg, attempts, r.json().unwrap_or(Value::Null))
}

fn msg(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[test]
fn weights_split_traffic_and_changes_apply_to_the_next_request() {
    let gw = Gateway::start();
    let e = setup(
        &gw,
        vec![
            json!({"name": "a", "provider": "mock"}),
            json!({"name": "b", "provider": "mock"}),
        ],
        |r| json!({"registries": weighted(r, &[80, 20])}),
    );
    let counts: HashMap<String, usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut c = HashMap::new();
                    for _ in 0..2500 {
                        let (st, reg, _, _) = send(&gw, &e, msg("m"));
                        assert_eq!(st, 200);
                        *c.entry(reg).or_insert(0usize) += 1;
                    }
                    c
                })
            })
            .collect();
        let mut total = HashMap::new();
        for h in handles {
            for (k, v) in h.join().unwrap() {
                *total.entry(k).or_insert(0) += v;
            }
        }
        total
    });
    let a = counts["a"] as f64 / 10_000.0;
    assert!(
        (0.78..=0.82).contains(&a),
        "a got {a} of 10,000: {counts:?}"
    );

    // Equal weights alternate.
    let c = format!("/v1/gateways/{}/consumers/{}", e.gid, e.consumer_id);
    let (st, _) = gw.admin(
        "PATCH",
        &c,
        Some(json!({"registries": weighted(&e.regs, &[1, 1])})),
    );
    assert_eq!(st, 200);
    let seq: Vec<String> = (0..10).map(|_| send(&gw, &e, msg("m")).1).collect();
    for w in seq.windows(2) {
        assert_ne!(w[0], w[1], "{seq:?}");
    }
    // A weight change through the attach sub-resource applies to the very next request.
    let (st, _) = gw.admin(
        "PUT",
        &format!("{c}/registries/{}", e.regs[1]),
        Some(json!({"weight": 100})),
    );
    assert_eq!(st, 200);
    let next: Vec<String> = (0..20).map(|_| send(&gw, &e, msg("m")).1).collect();
    assert_eq!(next[0], "b");
    assert!(next.iter().filter(|r| *r == "b").count() >= 19, "{next:?}");
}

#[test]
fn least_latency_prefers_the_fast_registry_and_follows_a_change() {
    let fast_delay = Arc::new(AtomicU64::new(5));
    let d = fast_delay.clone();
    let fast = FakeUpstream::start(move |_| {
        Reply::Delay(
            Duration::from_millis(d.load(Ordering::Relaxed)),
            Box::new(Reply::Json(200, chat_completion("m", "fast"))),
        )
    });
    let slow = FakeUpstream::start(|_| {
        Reply::Delay(
            Duration::from_millis(50),
            Box::new(Reply::Json(200, chat_completion("m", "slow"))),
        )
    });
    let gw = Gateway::start();
    let e = setup(
        &gw,
        vec![
            fake_reg("fast", &fast, json!({})),
            fake_reg("slow", &slow, json!({})),
        ],
        |r| json!({"registries": weighted(r, &[1, 1]), "lb_config": {"algorithm": "least_latency"}}),
    );
    let to_fast = (0..1000)
        .filter(|_| send(&gw, &e, msg("m")).1 == "fast")
        .count();
    assert!(
        to_fast >= 900,
        "{to_fast} of 1000 went to the fast registry"
    );
    // The fast one turns slow: traffic moves within 200 requests.
    fast_delay.store(150, Ordering::Relaxed);
    let after: Vec<String> = (0..200).map(|_| send(&gw, &e, msg("m")).1).collect();
    let tail = &after[100..];
    let moved = tail.iter().filter(|r| *r == "slow").count();
    assert!(moved >= 85, "only {moved} of the last 100 moved: {after:?}");
}

#[test]
fn other_algorithms_round_robin_least_connections_cost() {
    let gw = Gateway::start();
    let mocks = vec![
        json!({"name": "a", "provider": "mock", "pricing": {"m": {"input_per_mtok": 5.0, "output_per_mtok": 15.0}}}),
        json!({"name": "b", "provider": "mock", "pricing": {"m": {"input_per_mtok": 0.5, "output_per_mtok": 1.5}}}),
        json!({"name": "c", "provider": "mock"}),
    ];
    let e = setup(
        &gw,
        mocks,
        |r| json!({"registries": weighted(r, &[90, 5, 5]), "lb_config": {"algorithm": "round_robin"}}),
    );
    let seq: Vec<String> = (0..9).map(|_| send(&gw, &e, msg("m")).1).collect();
    assert_eq!(
        seq[..3]
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "round robin ignores weights: {seq:?}"
    );
    assert_eq!(seq[..3], seq[3..6]);
    let c = format!("/v1/gateways/{}/consumers/{}", e.gid, e.consumer_id);
    gw.admin(
        "PATCH",
        &c,
        Some(json!({"lb_config": {"algorithm": "cost"}})),
    );
    for _ in 0..5 {
        assert_eq!(send(&gw, &e, msg("m")).1, "b", "cheapest priced registry");
    }
    gw.admin(
        "PATCH",
        &c,
        Some(json!({"lb_config": {"algorithm": "least_connections"}})),
    );
    let seen: std::collections::BTreeSet<String> =
        (0..30).map(|_| send(&gw, &e, msg("m")).1).collect();
    assert_eq!(
        seen.len(),
        3,
        "idle registries share sequential traffic: {seen:?}"
    );
}

/// One fake per behaviour, chosen by the request's model.
fn behaviours(log: Arc<AtomicUsize>) -> FakeUpstream {
    FakeUpstream::start(move |r| {
        let n = log.fetch_add(1, Ordering::SeqCst);
        let model = r.json()["model"].as_str().unwrap_or("").to_string();
        match model.as_str() {
            "flaky-once" if n == 0 => Reply::Json(500, json!({"error": {"message": "once", "type": "server_error", "param": null, "code": null}})),
            "down" => Reply::Json(503, json!({"error": {"message": "down", "type": "server_error", "param": null, "code": null}})),
            "busy-short" if n == 0 => Reply::Raw(429, vec![("retry-after".into(), "0.2".into()), ("content-type".into(), "application/json".into())], br#"{"error":{"message":"busy","type":"rate_limit_error","param":null,"code":null}}"#.to_vec()),
            "busy-long" => Reply::Raw(429, vec![("retry-after".into(), "30".into()), ("content-type".into(), "application/json".into())], br#"{"error":{"message":"busy long","type":"rate_limit_error","param":null,"code":null}}"#.to_vec()),
            "busy-bare" => Reply::Json(429, json!({"error": {"message": "busy bare", "type": "rate_limit_error", "param": null, "code": null}})),
            "slow" => Reply::Delay(Duration::from_millis(1500), Box::new(Reply::Json(200, chat_completion("slow", "late")))),
            "reset" => Reply::Reset,
            "context" => Reply::Json(400, json!({"error": {"message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}})),
            "policy" => Reply::Json(400, json!({"error": {"message": "flagged", "type": "invalid_request_error", "param": null, "code": "content_filter"}})),
            "bad" => Reply::Json(400, json!({"error": {"message": "bad request", "type": "invalid_request_error", "param": null, "code": null}})),
            "stream-fail" => Reply::Json(500, json!({"error": {"message": "no stream", "type": "server_error", "param": null, "code": null}})),
            _ => Reply::Json(200, chat_completion(&model, "primary ok")),
        }
    })
}

#[test]
fn fallback_for_each_trigger_and_none_for_policy_or_plain_400s() {
    let primary_calls = Arc::new(AtomicUsize::new(0));
    let primary = behaviours(primary_calls.clone());
    let backup = FakeUpstream::start(|r| {
        if r.json()["stream"] == json!(true) {
            Reply::Sse {
                events: chat_stream("backup", &["from ", "backup"]),
                delay: Duration::ZERO,
            }
        } else {
            Reply::Json(
                200,
                chat_completion(r.json()["model"].as_str().unwrap_or(""), "backup ok"),
            )
        }
    });
    let gw = Gateway::start();
    let dead = format!("http://127.0.0.1:{}/v1", support::free_port());
    let e = setup(
        &gw,
        vec![
            fake_reg(
                "primary",
                &primary,
                json!({"timeouts": {"first_byte_ms": 300}, "circuit_breaker": {"failure_threshold": 1000, "cooldown_ms": 1}}),
            ),
            fake_reg("backup", &backup, json!({})),
            json!({"name": "dead", "provider": "openai", "base_url": dead, "circuit_breaker": {"failure_threshold": 1000, "cooldown_ms": 1}}),
        ],
        |r| {
            json!({"registries": weighted(&r[..1], &[1]),
                   "fallback": {"chain": [r[1]], "triggers": ["5xx", "429", "timeout", "connect_error", "context_length"], "retry_same": 1}})
        },
    );
    let reset = |n| primary_calls.store(n, Ordering::SeqCst);
    // 500 once, then 200 on the same registry.
    reset(0);
    let (st, reg, attempts, body) = send(&gw, &e, msg("flaky-once"));
    assert_eq!(
        (st, reg.as_str(), attempts.as_str()),
        (200, "primary", "2"),
        "{body}"
    );
    // 503 persistent: same registry once more, then the chain.
    let (st, reg, attempts, _) = send(&gw, &e, msg("down"));
    assert_eq!((st, reg.as_str(), attempts.as_str()), (200, "backup", "3"));
    // 429 with a short retry-after: waited out on the same registry.
    reset(0);
    let t = Instant::now();
    let (st, reg, attempts, _) = send(&gw, &e, msg("busy-short"));
    assert_eq!((st, reg.as_str(), attempts.as_str()), (200, "primary", "2"));
    assert!(t.elapsed() >= Duration::from_millis(200));
    // 429 without retry-after: retried once on the same registry, then the chain.
    let (st, reg, attempts, _) = send(&gw, &e, msg("busy-bare"));
    assert_eq!((st, reg.as_str(), attempts.as_str()), (200, "backup", "3"));
    // First-byte timeout, reset before headers, context-length 400: each falls back.
    for model in ["slow", "context"] {
        let (st, reg, attempts, _) = send(&gw, &e, msg(model));
        assert_eq!(
            (st, reg.as_str(), attempts.as_str()),
            (200, "backup", "2"),
            "{model}"
        );
    }
    let (st, reg, attempts, _) = send(&gw, &e, msg("reset"));
    assert_eq!(
        (st, reg.as_str(), attempts.as_str()),
        (200, "backup", "3"),
        "reset: same once, then chain"
    );
    // Content-policy and other 400s go straight to the client.
    for (model, code) in [("policy", "content_filter"), ("bad", "")] {
        let (st, reg, attempts, body) = send(&gw, &e, msg(model));
        assert_eq!(
            (st, reg.as_str(), attempts.as_str()),
            (400, "primary", "1"),
            "{model}"
        );
        if !code.is_empty() {
            assert_eq!(body["error"]["code"], code);
        }
    }
    // A streaming request falls back before its first byte.
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{}/v1/chat/completions", e.slug)))
        .bearer_auth(&e.key)
        .json(&json!({"model": "stream-fail", "stream": true, "messages": []}))
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-switchyard-registry"], "backup");
    let text = r.text().unwrap();
    assert!(
        text.contains("backup") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    // 429 with a long retry-after: the registry sits out, the next request skips it.
    let (st, reg, _, _) = send(&gw, &e, msg("busy-long"));
    assert_eq!((st, reg.as_str()), (200, "backup"));
    let before = primary.count();
    let (st, reg, attempts, _) = send(&gw, &e, msg("fine"));
    assert_eq!(
        (st, reg.as_str(), attempts.as_str()),
        (200, "backup", "1"),
        "primary sits out its retry-after"
    );
    assert_eq!(primary.count(), before);

    // Connect refused, with the dead registry first and `4xx` as a trigger.
    let c = format!("/v1/gateways/{}/consumers/{}", e.gid, e.consumer_id);
    let (st, v) = gw.admin(
        "PATCH",
        &c,
        Some(json!({"registries": weighted(&e.regs[2..], &[1]),
        "fallback": {"chain": [e.regs[1]], "triggers": ["connect_error", "4xx"]}})),
    );
    assert_eq!(st, 200, "{v}");
    let (st, reg, attempts, _) = send(&gw, &e, msg("fine"));
    assert_eq!((st, reg.as_str(), attempts.as_str()), (200, "backup", "2"));
}

#[test]
fn budgets_chain_order_and_fallback_models() {
    let calls: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let mk = |name: &'static str, ok: bool| {
        let calls = calls.clone();
        FakeUpstream::start(move |r| {
            calls.lock().unwrap().push(format!(
                "{name}:{}",
                r.json()["model"].as_str().unwrap_or("")
            ));
            if ok {
                Reply::Json(
                    200,
                    chat_completion(r.json()["model"].as_str().unwrap_or(""), name),
                )
            } else {
                Reply::Delay(
                    Duration::from_millis(150),
                    Box::new(Reply::Json(
                        503,
                        json!({"error": {"message": format!("{name} down"), "type": "server_error", "param": null, "code": null}}),
                    )),
                )
            }
        })
    };
    let (a, b, c, d) = (
        mk("a", false),
        mk("b", false),
        mk("c", false),
        mk("d", true),
    );
    let gw = Gateway::start();
    let no_cb = json!({"circuit_breaker": {"failure_threshold": 1000, "cooldown_ms": 1}});
    let mut regs = vec![
        fake_reg("a", &a, no_cb.clone()),
        fake_reg("b", &b, no_cb.clone()),
        fake_reg("c", &c, no_cb.clone()),
        fake_reg("d", &d, json!({"models": ["other-model"]})),
    ];
    regs[2]["models"] = json!(["m"]);
    let e = setup(&gw, regs, |r| {
        json!({"registries": weighted(&r[..1], &[1]),
               "model_policies": [{"registry_id": r[3], "allowed": [], "default": "other-model"}],
               "fallback": {"chain": [r[2], r[1], r[3]], "retry_same": 0, "budget": {"max_attempts": 3}}})
    });
    // max_attempts 3: a, then the chain in its order c, b; d is never reached.
    let (st, reg, attempts, body) = send(&gw, &e, msg("m"));
    assert_eq!((st, reg.as_str(), attempts.as_str()), (503, "b", "3"));
    assert_eq!(
        body["error"]["message"], "b down",
        "the client gets the last upstream error"
    );
    assert_eq!(*calls.lock().unwrap(), vec!["a:m", "c:m", "b:m"]);
    // With a 4th attempt allowed, d answers with its default model (it cannot serve `m`).
    calls.lock().unwrap().clear();
    let cp = format!("/v1/gateways/{}/consumers/{}", e.gid, e.consumer_id);
    let (st, v) = gw.admin("PATCH", &cp, Some(json!({"fallback": {"chain": [e.regs[2], e.regs[1], e.regs[3]], "retry_same": 0, "budget": {"max_attempts": 4}}})));
    assert_eq!(st, 200, "{v}");
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{}/v1/chat/completions", e.slug)))
        .bearer_auth(&e.key)
        .json(&msg("m"))
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-switchyard-model"], "openai/other-model");
    assert_eq!(r.headers()["x-switchyard-attempts"], "4");
    assert_eq!(r.json::<Value>().unwrap()["model"], "other-model");
    // A total-latency budget of 250 ms stops after the second 150 ms failure.
    calls.lock().unwrap().clear();
    gw.admin("PATCH", &cp, Some(json!({"fallback": {"chain": [e.regs[2], e.regs[1], e.regs[3]], "retry_same": 0, "budget": {"max_total_latency_ms": 250}}})));
    let t = Instant::now();
    let (st, _, attempts, _) = send(&gw, &e, msg("m"));
    assert_eq!(
        (st, attempts.as_str()),
        (503, "2"),
        "{:?}",
        calls.lock().unwrap()
    );
    assert!(t.elapsed() < Duration::from_millis(600));
}

#[test]
fn circuit_breaker_opens_skips_half_opens_and_closes() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = healthy.clone();
    let flaky = FakeUpstream::start(move |_| {
        if h.load(Ordering::SeqCst) {
            Reply::Json(200, chat_completion("m", "flaky ok"))
        } else {
            Reply::Json(
                500,
                json!({"error": {"message": "down", "type": "server_error", "param": null, "code": null}}),
            )
        }
    });
    let gw = Gateway::start();
    let e = setup(
        &gw,
        vec![
            fake_reg(
                "flaky",
                &flaky,
                json!({"circuit_breaker": {"failure_threshold": 2, "cooldown_ms": 700}}),
            ),
            json!({"name": "steady", "provider": "mock"}),
        ],
        |r| json!({"registries": weighted(r, &[100, 1]), "fallback": {"retry_same": 0}}),
    );
    let status = || {
        let (_, s) = gw.admin("GET", "/v1/status", None);
        s["registries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "flaky")
            .unwrap()
            .clone()
    };
    assert_eq!(status()["circuit"], "closed");
    for _ in 0..2 {
        let (st, reg, _, _) = send(&gw, &e, msg("m"));
        assert_eq!(
            (st, reg.as_str()),
            (200, "steady"),
            "falls back while flaky fails"
        );
    }
    assert_eq!(status()["circuit"], "open");
    assert_eq!(status()["errors_1m"], 2);
    let seen = flaky.count();
    for _ in 0..20 {
        assert_eq!(send(&gw, &e, msg("m")).1, "steady");
    }
    assert_eq!(flaky.count(), seen, "an open circuit is skipped");
    std::thread::sleep(Duration::from_millis(750));
    assert_eq!(status()["circuit"], "half_open");
    healthy.store(true, Ordering::SeqCst);
    let (_, reg, _, _) = send(&gw, &e, msg("m"));
    assert_eq!(
        reg, "flaky",
        "the half-open probe goes to the recovered registry"
    );
    // The probe's success is recorded once its response has been written: poll briefly.
    let deadline = Instant::now() + Duration::from_secs(2);
    while status()["circuit"] != "closed" {
        assert!(
            Instant::now() < deadline,
            "the circuit did not close: {}",
            status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let back = (0..20)
        .filter(|_| send(&gw, &e, msg("m")).1 == "flaky")
        .count();
    assert!(
        back >= 18,
        "a recovered registry gets its share back: {back}"
    );
    let s = status();
    assert!(
        s["latency_ms"]["p50"].is_u64() && s["latency_ms"]["p95"].is_u64(),
        "{s}"
    );
    // Every attempt gives its in-flight count back; the last one may still be finishing its
    // bookkeeping as its answer reaches us.
    let deadline = Instant::now() + Duration::from_secs(2);
    while status()["in_flight"] != 0 {
        assert!(
            Instant::now() < deadline,
            "an attempt kept its in-flight count: {}",
            status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn no_request_is_lost_or_answered_twice_while_one_of_three_upstreams_flaps() {
    let served = Arc::new(AtomicUsize::new(0));
    let mk = |flap: bool| {
        let served = served.clone();
        let started = Instant::now();
        FakeUpstream::start(move |r| {
            let down = flap && (started.elapsed().as_millis() / 100) % 2 == 0;
            if down {
                if r.at.elapsed().as_nanos() % 2 == 0 {
                    Reply::Reset
                } else {
                    Reply::Json(
                        502,
                        json!({"error": {"message": "flap", "type": "server_error", "param": null, "code": null}}),
                    )
                }
            } else {
                served.fetch_add(1, Ordering::SeqCst);
                let id = r.header("x-request-id").unwrap_or("").to_string();
                Reply::Json(200, chat_completion("m", &id))
            }
        })
    };
    let (f1, f2, f3) = (mk(true), mk(false), mk(false));
    let gw = Gateway::start();
    let e = setup(
        &gw,
        vec![
            fake_reg("flap", &f1, json!({})),
            fake_reg("s2", &f2, json!({})),
            fake_reg("s3", &f3, json!({})),
        ],
        |r| json!({"registries": weighted(r, &[1, 1, 1]), "fallback": {"retry_same": 1, "budget": {"max_attempts": 4}}}),
    );
    let ok = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..200 {
            let (gw, e, ok) = (&gw, &e, &ok);
            s.spawn(move || {
                for i in 0..5 {
                    let rid = format!("req-{t}-{i}");
                    let r = gw
                        .http
                        .post(gw.proxy_url(&format!("/{}/v1/chat/completions", e.slug)))
                        .bearer_auth(&e.key)
                        .header("x-request-id", &rid)
                        .json(&msg("m"))
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 200, "{rid}");
                    let v: Value = r.json().unwrap();
                    assert_eq!(
                        v["choices"][0]["message"]["content"],
                        rid.as_str(),
                        "answered with another request's reply"
                    );
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(ok.load(Ordering::SeqCst), 1000);
    assert_eq!(
        served.load(Ordering::SeqCst),
        1000,
        "every request was served exactly once upstream"
    );
}
