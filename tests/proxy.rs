//! The proxy data path (SPEC §3 steps 1–5, 8, 10) against fake OpenAI-format upstreams that
//! record what they receive.

mod support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use support::upstream::{chat_completion, chat_stream, FakeUpstream, Reply};
use support::{id, rss_kib, Gateway};

const PROVIDER_KEY: &str = "sk-provider-secret-0123456789";

struct Setup {
    gid: String,
    key: String,
    slug: String,
    consumer_id: String,
}

/// A gateway, one consumer with one key, and the given registries attached in order.
fn setup(gw: &Gateway, registries: Vec<Value>, consumer_extra: Value) -> (Setup, Vec<String>) {
    let gid = id(&gw.create("/v1/gateways", json!({"name": "g"})));
    let g = |c: &str| format!("/v1/gateways/{gid}/{c}");
    let reg_ids: Vec<String> = registries
        .into_iter()
        .map(|r| id(&gw.create(&g("registries"), r)))
        .collect();
    let auth = gw.create(&g("auths"), json!({"name": "k", "type": "api_key"}));
    let mut body = json!({"name": "app", "auth_ids": [id(&auth)],
                          "registries": reg_ids.iter().map(|r| json!({"id": r})).collect::<Vec<_>>()});
    if let Value::Object(extra) = consumer_extra {
        for (k, v) in extra {
            body[k] = v;
        }
    }
    let c = gw.create(&g("consumers"), body);
    (
        Setup {
            gid,
            key: auth["key"].as_str().unwrap().to_string(),
            slug: c["slug"].as_str().unwrap().to_string(),
            consumer_id: id(&c),
        },
        reg_ids,
    )
}

/// A consumer on one OpenAI registry (`oa`) in front of `fake`.
fn one_registry(gw: &Gateway, fake: &FakeUpstream) -> Setup {
    setup(gw, vec![openai_registry("oa", fake, json!({}))], json!({})).0
}

fn openai_registry(name: &str, fake: &FakeUpstream, extra: Value) -> Value {
    let mut r = json!({"name": name, "provider": "openai", "base_url": format!("{}/v1", fake.base_url()),
                       "auth": {"api_key": PROVIDER_KEY}});
    if let Value::Object(e) = extra {
        for (k, v) in e {
            r[k] = v;
        }
    }
    r
}

fn chat(gw: &Gateway, s: &Setup, body: Value) -> reqwest::blocking::Response {
    gw.http
        .post(gw.proxy_url(&format!("/{}/v1/chat/completions", s.slug)))
        .bearer_auth(&s.key)
        .json(&body)
        .send()
        .unwrap()
}

#[test]
fn upstream_gets_provider_key_path_model_body_and_static_headers() {
    let fake = FakeUpstream::start(|r| {
        Reply::Json(
            200,
            chat_completion(r.json()["model"].as_str().unwrap_or(""), "hi"),
        )
    });
    let gw = Gateway::start();
    let (s, _) = setup(
        &gw,
        vec![openai_registry(
            "oa",
            &fake,
            json!({"headers": {"x-registry": "r1"},
              "models": ["gpt-4o", "gpt-4o-mini"]}),
        )],
        json!({"headers": {"x-consumer": "c1"}}),
    );
    // Give the attached registry an allow-list and a default.
    let reg = {
        let (_, list) = gw.admin("GET", &format!("/v1/gateways/{}/registries", s.gid), None);
        id(&list["items"][0])
    };
    let (st, c) = gw.admin(
        "PATCH",
        &format!("/v1/gateways/{}/consumers/{}", s.gid, s.consumer_id),
        Some(json!({"registries": [{"id": reg, "model_policies": {"allowed": ["gpt-4o", "gpt-4o-mini"], "default": "gpt-4o-mini"}}]})),
    );
    assert_eq!(st, 200, "{c}");

    let sent = json!({"model": "oa/gpt-4o", "messages": [{"role": "user", "content": "héllo"}], "temperature": 0.25});
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{}/v1/chat/completions", s.slug)))
        .bearer_auth(&s.key)
        .header("x-api-key", &s.key)
        .header("apikey", &s.key)
        .header("cookie", "session=abc")
        .header("x-request-id", "client-req-42")
        .header("openai-beta", "assistants=v2")
        .header("accept-encoding", "gzip, br")
        .json(&sent)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["x-request-id"], "client-req-42");
    assert_eq!(h["x-switchyard-registry"], "oa");
    assert_eq!(h["x-switchyard-model"], "openai/gpt-4o");
    assert_eq!(h["x-switchyard-attempts"], "1");
    for name in [
        "x-switchyard-upstream-latency",
        "x-switchyard-proxy-latency",
    ] {
        assert!(h[name].to_str().unwrap().parse::<u64>().is_ok(), "{name}");
    }
    assert_eq!(r.json::<Value>().unwrap()["model"], "gpt-4o");

    let got = &fake.requests()[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    assert_eq!(got.header("x-registry"), Some("r1"));
    assert_eq!(got.header("x-consumer"), Some("c1"));
    assert_eq!(got.header("x-request-id"), Some("client-req-42"));
    assert_eq!(
        got.header("openai-beta"),
        Some("assistants=v2"),
        "forwarded"
    );
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(
        got.header("accept-encoding"),
        Some("identity"),
        "the client's encodings stay at the gateway"
    );
    assert_eq!(
        got.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
    assert_eq!(got.header("cookie"), None);
    assert_eq!(got.header("x-api-key"), None);
    assert_eq!(got.header("apikey"), None);
    let raw = String::from_utf8_lossy(&got.body);
    assert!(
        !got.headers.iter().any(|(_, v)| v.contains(&s.key)) && !raw.contains(&s.key),
        "client key leaked upstream"
    );
    let mut expected = sent.clone();
    expected["model"] = json!("gpt-4o");
    assert_eq!(got.json(), expected);

    // No model: the default is inserted.
    let r = chat(
        &gw,
        &s,
        json!({"messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(r.status(), 200);
    assert_eq!(fake.requests()[1].json()["model"], "gpt-4o-mini");
    // A model outside the allow-list never reaches the upstream.
    let r = chat(&gw, &s, json!({"model": "gpt-3.5", "messages": []}));
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "model_not_allowed"
    );
    assert_eq!(fake.count(), 2);
    // The provider key never shows in the gateway's output.
    assert!(!gw.logs().contains(PROVIDER_KEY));
    assert!(!gw.logs().contains(&s.key));
}

#[test]
fn model_resolution_default_pool_alias_registry_prefix_allow_lists_catalogs() {
    let a = FakeUpstream::start(|r| {
        Reply::Json(
            200,
            chat_completion(r.json()["model"].as_str().unwrap_or(""), "from a"),
        )
    });
    let b = FakeUpstream::start(|r| {
        Reply::Json(
            200,
            chat_completion(r.json()["model"].as_str().unwrap_or(""), "from b"),
        )
    });
    let gw = Gateway::start();
    let gid = id(&gw.create("/v1/gateways", json!({"name": "g"})));
    let g = |c: &str| format!("/v1/gateways/{gid}/{c}");
    let ra = id(&gw.create(
        &g("registries"),
        openai_registry("ra", &a, json!({"models": ["a1", "a2"]})),
    ));
    let rb = id(&gw.create(&g("registries"), openai_registry("rb", &b, json!({}))));
    let auth = gw.create(&g("auths"), json!({"name": "k", "type": "api_key"}));
    let c = gw.create(
        &g("consumers"),
        json!({"name": "app", "auth_ids": [id(&auth)],
               "registries": [{"id": ra}, {"id": rb, "model_policies": {"allowed": ["b1", "shared"], "default": "b1"}}],
               "lb_config": {"pool_alias": "smart", "members": [{"registry_id": ra, "models": ["a2"]}, {"registry_id": rb, "models": ["b1"]}]}}),
    );
    let s = Setup {
        gid: gid.clone(),
        key: auth["key"].as_str().unwrap().to_string(),
        slug: c["slug"].as_str().unwrap().to_string(),
        consumer_id: id(&c),
    };
    let last = |f: &FakeUpstream| {
        f.requests()
            .last()
            .map(|r| r.json()["model"].as_str().unwrap_or("").to_string())
    };
    let msg = json!([{"role": "user", "content": "x"}]);

    // default: first registry in routing order that has one (rb)
    let r = chat(&gw, &s, json!({"messages": msg}));
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-switchyard-registry"]
                .to_str()
                .unwrap()
                .to_string()
        ),
        (200, "rb".into())
    );
    assert_eq!(last(&b).as_deref(), Some("b1"));
    // <registry>/<model>
    let r = chat(&gw, &s, json!({"model": "ra/a1", "messages": msg}));
    assert_eq!(r.status(), 200);
    assert_eq!(last(&a).as_deref(), Some("a1"));
    // catalog miss through the prefix, and a policy miss
    for bad in ["ra/zz", "rb/a1", "zz", "smart2"] {
        let r = chat(&gw, &s, json!({"model": bad, "messages": msg}));
        assert_eq!(r.status(), 403, "{bad}");
        assert_eq!(
            r.json::<Value>().unwrap()["error"]["code"],
            "model_not_allowed"
        );
    }
    // allow-lists and catalogs pick the only registry that may serve
    let r = chat(&gw, &s, json!({"model": "a2", "messages": msg}));
    assert_eq!(r.headers()["x-switchyard-registry"], "ra");
    let r = chat(&gw, &s, json!({"model": "b1", "messages": msg}));
    assert_eq!(r.headers()["x-switchyard-registry"], "rb");
    // A model names a registry only when the prefix is one: "org/model" ids pass as they are.
    gw.admin(
        "PATCH",
        &format!("{}/{}", g("registries"), rb),
        Some(json!({"models": []})),
    );
    gw.admin(
        "PATCH",
        &format!("{}/{}", g("consumers"), s.consumer_id),
        Some(json!({"model_policies": [{"registry_id": rb, "allowed": [], "default": "b1"}]})),
    );
    let r = chat(&gw, &s, json!({"model": "meta/llama-3", "messages": msg}));
    assert_eq!(r.status(), 200);
    assert_eq!(last(&b).as_deref(), Some("meta/llama-3"));
    // pool alias: each member with its first listed model
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = chat(&gw, &s, json!({"model": "smart", "messages": msg}));
        assert_eq!(r.status(), 200);
        seen.insert(
            r.headers()["x-switchyard-model"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["openai/a2".to_string(), "openai/b1".to_string()]
    );
    // models list: allow-lists, catalogs, defaults and the pool alias
    let r = gw
        .http
        .get(gw.proxy_url(&format!("/{}/v1/models", s.slug)))
        .bearer_auth(&s.key)
        .send()
        .unwrap();
    let ids: Vec<String> = r.json::<Value>().unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}@{}",
                m["id"].as_str().unwrap(),
                m["owned_by"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(ids, vec!["a1@ra", "a2@ra", "b1@rb", "smart@switchyard"]);
}

#[test]
fn errors_before_any_upstream_contact() {
    let fake = FakeUpstream::start(|_| Reply::Json(200, chat_completion("m", "x")));
    let gw = Gateway::start();
    let s = one_registry(&gw, &fake);
    let url = gw.proxy_url(&format!("/{}/v1/chat/completions", s.slug));
    let body = json!({"model": "m", "messages": []});
    let cases: Vec<(reqwest::blocking::RequestBuilder, u16, &str)> = vec![
        (
            gw.http
                .post(gw.proxy_url("/nosuchslug/v1/chat/completions"))
                .bearer_auth(&s.key)
                .json(&body),
            404,
            "consumer_not_found",
        ),
        (gw.http.post(&url).json(&body), 401, "invalid_api_key"),
        (
            gw.http.post(&url).bearer_auth("sy-wrong-key").json(&body),
            401,
            "invalid_api_key",
        ),
        (
            gw.http
                .post(&url)
                .header("authorization", format!("Basic {}", s.key))
                .json(&body),
            401,
            "invalid_api_key",
        ),
        (
            gw.http.post(&url).bearer_auth(&s.key).body("{\"model\": "),
            400,
            "invalid_request_error",
        ),
        (
            gw.http
                .post(&url)
                .bearer_auth(&s.key)
                .body(b"{\"model\": \"\xff\"}".to_vec()),
            400,
            "invalid_request_error",
        ),
        (
            gw.http.post(&url).bearer_auth(&s.key).body("[1]"),
            400,
            "invalid_request_error",
        ),
        (
            gw.http
                .post(&url)
                .bearer_auth(&s.key)
                .json(&json!({"model": 7})),
            400,
            "invalid_request_error",
        ),
        (
            gw.http
                .post(&url)
                .bearer_auth(&s.key)
                .body(vec![b' '; 11 * 1024 * 1024]),
            413,
            "body_too_large",
        ),
        (
            gw.http.get(&url).bearer_auth(&s.key),
            405,
            "method_not_allowed",
        ),
        (
            gw.http
                .post(gw.proxy_url(&format!("/{}/v1/nothing", s.slug)))
                .bearer_auth(&s.key)
                .json(&body),
            404,
            "not_found",
        ),
    ];
    for (req, status, code) in cases {
        let r = req.send().unwrap();
        assert_eq!(r.status().as_u16(), status, "{code}");
        assert!(
            r.headers().contains_key("x-request-id"),
            "{code}: {:?}",
            r.headers()
        );
        let v: Value = r.json().unwrap();
        assert_eq!(v["error"]["code"], code);
        for k in ["message", "type", "code", "param"] {
            assert!(v["error"].get(k).is_some(), "{k} missing in {v}");
        }
    }
    // Deactivating the consumer or its key stops it at once.
    let c = format!("/v1/gateways/{}/consumers/{}", s.gid, s.consumer_id);
    gw.admin("PATCH", &c, Some(json!({"active": false})));
    assert_eq!(chat(&gw, &s, body.clone()).status(), 403);
    gw.admin("PATCH", &c, Some(json!({"active": true})));
    assert_eq!(chat(&gw, &s, body.clone()).status(), 200);
    assert_eq!(
        fake.count(),
        1,
        "only the last request reached the upstream"
    );
}

#[test]
fn upstream_errors_pass_through_with_their_status() {
    let fake = FakeUpstream::start(|r| {
        match r.json()["model"].as_str() {
        Some("limited") => Reply::Raw(429, vec![("content-type".into(), "application/json".into()), ("retry-after".into(), "7".into())],
            br#"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#.to_vec()),
        Some("broken") => Reply::Json(500, json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}})),
        _ => Reply::Json(400, json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "messages", "code": null}})),
    }
    });
    let gw = Gateway::start();
    let s = one_registry(&gw, &fake);
    for (model, status, msg) in [
        ("limited", 429, "slow down"),
        ("broken", 500, "boom"),
        ("x", 400, "bad"),
    ] {
        let r = chat(&gw, &s, json!({"model": model, "messages": []}));
        assert_eq!(r.status().as_u16(), status);
        if status == 429 {
            assert_eq!(r.headers()["retry-after"], "7");
        }
        assert_eq!(r.json::<Value>().unwrap()["error"]["message"], msg);
    }
}

#[test]
fn a_one_mib_request_and_a_10000_event_stream_pass_unchanged() {
    let events: Vec<String> = {
        let pieces: Vec<String> = (0..9997).map(|i| format!("tok{i} ü ")).collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        chat_stream("m", &refs)
    };
    assert_eq!(events.len(), 10_000);
    let stream = events.clone();
    let fake = FakeUpstream::start(move |r| {
        if r.json()["stream"] == json!(true) {
            Reply::Sse {
                events: stream.clone(),
                delay: Duration::ZERO,
            }
        } else {
            Reply::Json(200, chat_completion("m", "ok"))
        }
    });
    let gw = Gateway::start();
    let s = one_registry(&gw, &fake);
    let big = "abcdefghij".repeat(1024 * 1024 / 10);
    let raw =
        format!("{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"{big}\"}}]}}");
    assert!(raw.len() >= 1024 * 1024);
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{}/v1/chat/completions", s.slug)))
        .bearer_auth(&s.key)
        .header("content-type", "application/json")
        .body(raw.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        fake.requests()[0].body,
        raw.as_bytes(),
        "the body was not forwarded byte for byte"
    );

    let r = chat(
        &gw,
        &s,
        json!({"model": "m", "messages": [], "stream": true}),
    );
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let got = r.bytes().unwrap();
    assert_eq!(got.as_ref(), events.concat().as_bytes());
}

#[test]
fn streams_arrive_incrementally_and_a_client_that_leaves_cancels_the_upstream() {
    let fake = FakeUpstream::start(|_| Reply::Sse {
        events: chat_stream("m", &["a"; 60]),
        delay: Duration::from_millis(50),
    });
    let gw = Gateway::start();
    let s = one_registry(&gw, &fake);
    // First bytes arrive long before the upstream's last event (60 × 50 ms = 3 s).
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", gw.proxy_port)).unwrap();
    let body = json!({"model": "m", "messages": [], "stream": true}).to_string();
    write!(sock, "POST /{}/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", s.slug, s.key, body.len()).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\"content\":\"a\"") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "first token took {:?}",
        start.elapsed()
    );
    // The client leaves; the upstream stream is cut soon after.
    drop(sock);
    let deadline = Instant::now() + Duration::from_secs(3);
    while fake
        .aborted_streams
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the upstream stream was not cancelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        fake.last_event_sent.lock().unwrap().is_empty(),
        "the upstream finished its stream anyway"
    );
}

#[test]
fn registry_timeouts_and_mid_stream_failures() {
    let fake = FakeUpstream::start(|r| match r.json()["model"].as_str() {
        Some("slow") => Reply::Delay(
            Duration::from_secs(3),
            Box::new(Reply::Json(200, chat_completion("slow", "late"))),
        ),
        Some("stall") => Reply::Sse {
            events: chat_stream("m", &["a", "b"]),
            delay: Duration::from_millis(1500),
        },
        Some("cut") => Reply::SseThenCut {
            events: chat_stream("m", &["a", "b"])[..2].to_vec(),
            delay: Duration::ZERO,
        },
        _ => Reply::Json(200, chat_completion("m", "ok")),
    });
    let gw = Gateway::start();
    let (s, _) = setup(
        &gw,
        vec![openai_registry(
            "oa",
            &fake,
            json!({"timeouts": {"first_byte_ms": 400, "stream_idle_ms": 400}}),
        )],
        json!({}),
    );
    let t = Instant::now();
    let r = chat(&gw, &s, json!({"model": "slow", "messages": []}));
    assert_eq!(r.status(), 504);
    assert!(t.elapsed() < Duration::from_millis(2500));
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "upstream_timeout"
    );
    for model in ["stall", "cut"] {
        let r = chat(
            &gw,
            &s,
            json!({"model": model, "messages": [], "stream": true}),
        );
        assert_eq!(r.status(), 200);
        let text = r.text().unwrap_or_default();
        assert!(
            text.contains("\"role\":\"assistant\""),
            "{model}: what came before the failure is kept: {text}"
        );
        assert!(
            text.contains("\"error\""),
            "{model}: the stream ended without an error event: {text}"
        );
        assert!(!text.contains("[DONE]"), "{model}: {text}");
    }
    // The gateway serves the next request normally.
    assert_eq!(
        chat(&gw, &s, json!({"model": "ok", "messages": []})).status(),
        200
    );
    // Connection refused: a clear 502.
    let gw2 = Gateway::start();
    let dead = format!("http://127.0.0.1:{}/v1", support::free_port());
    let (s2, _) = setup(
        &gw2,
        vec![json!({"name": "dead", "provider": "openai", "base_url": dead})],
        json!({}),
    );
    let r = chat(&gw2, &s2, json!({"model": "m", "messages": []}));
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "upstream_unavailable"
    );
}

#[test]
fn host_names_are_resolved_and_sent_as_host() {
    let fake = FakeUpstream::start(|_| Reply::Json(200, chat_completion("m", "ok")));
    let gw = Gateway::start();
    let (s, _) = setup(
        &gw,
        vec![json!({"name": "byname", "provider": "openai_compatible",
        "base_url": format!("http://localhost:{}/v1", fake.port)})],
        json!({}),
    );
    for _ in 0..3 {
        assert_eq!(
            chat(&gw, &s, json!({"model": "m", "messages": []})).status(),
            200
        );
    }
    assert_eq!(
        fake.requests()[0].header("host"),
        Some(format!("localhost:{}", fake.port).as_str())
    );
    // An unresolvable host is a clear 502, not a hang or a panic.
    let gid = &s.gid;
    let nx = gw.create(
        &format!("/v1/gateways/{gid}/registries"),
        json!({"name": "nx", "provider": "openai", "base_url": "http://no-such-host.invalid/v1"}),
    );
    let attach = format!(
        "/v1/gateways/{gid}/consumers/{}/registries/{}",
        s.consumer_id,
        id(&nx)
    );
    assert_eq!(gw.admin("PUT", &attach, None).0, 200);
    let r = chat(&gw, &s, json!({"model": "nx/m", "messages": []}));
    assert_eq!(r.status(), 502);
    assert!(r.text().unwrap().contains("cannot resolve"));
}

#[test]
fn connections_to_upstreams_are_reused() {
    let fake = FakeUpstream::start(|_| Reply::Json(200, chat_completion("m", "ok")));
    let gw = Gateway::start_with("threads: 1");
    let s = one_registry(&gw, &fake);
    for _ in 0..10 {
        assert_eq!(
            chat(&gw, &s, json!({"model": "m", "messages": []})).status(),
            200
        );
    }
    let conns: std::collections::BTreeSet<usize> = fake.requests().iter().map(|r| r.conn).collect();
    assert!(
        conns.len() <= 2,
        "10 sequential requests used {} upstream connections",
        conns.len()
    );
}

/// An upstream may close a pooled connection while it sits idle: the request that takes it
/// fails before any answer, and goes out again, whole, on a fresh connection.
#[test]
fn a_request_on_a_closed_pooled_connection_goes_out_again_on_a_fresh_one() {
    let seen = std::sync::Mutex::new(std::collections::HashMap::<usize, usize>::new());
    let fake = FakeUpstream::start(move |r| {
        let mut seen = seen.lock().unwrap();
        let n = seen.entry(r.conn).or_default();
        *n += 1;
        // Every connection's second request finds it closed.
        if *n == 2 {
            Reply::Reset
        } else {
            Reply::Json(200, chat_completion("m", "ok"))
        }
    });
    let gw = Gateway::start_with("threads: 1");
    let s = one_registry(&gw, &fake);
    for text in ["first", "second"] {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": text}]});
        let r = chat(&gw, &s, body);
        assert_eq!(r.status(), 200, "{text}: {}", r.text().unwrap());
    }
    let got = fake.requests();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[1].conn, got[0].conn,
        "the second request did not reuse the pool"
    );
    assert_ne!(got[2].conn, got[1].conn);
    assert_eq!(got[1].path, got[2].path);
    assert_eq!(got[1].headers, got[2].headers);
    assert_eq!(got[1].body, got[2].body);
    assert!(String::from_utf8_lossy(&got[2].body).contains("second"));
}

#[test]
fn azure_deployments_api_version_and_env_credentials() {
    let fake = FakeUpstream::start(|r| {
        if r.path
            .starts_with("/openai/deployments/prod-4o/chat/completions?api-version=2024-06-01")
        {
            Reply::Json(200, chat_completion("gpt-4o", "azure"))
        } else if r.path.starts_with("/v1/embeddings") {
            Reply::Json(
                200,
                json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}], "model": "e", "usage": {"prompt_tokens": 1, "total_tokens": 1}}),
            )
        } else {
            Reply::Json(
                404,
                json!({"error": {"message": r.path.clone(), "type": "x", "param": null, "code": null}}),
            )
        }
    });
    let gw = Gateway::start_full("", &[("SY_TEST_AZURE_KEY", "azure-key-from-env-xyz")]);
    let (s, _) = setup(
        &gw,
        vec![
            json!({"name": "az", "provider": "azure_openai", "base_url": fake.base_url(), "models": ["gpt-4o"],
                   "auth": {"api_key": "env:SY_TEST_AZURE_KEY"},
                   "options": {"api_version": "2024-06-01", "deployments": {"gpt-4o": "prod-4o"}}}),
            openai_registry(
                "oa",
                &fake,
                json!({"models": ["emb"], "auth": {"header_name": "x-custom-auth", "header_value": "custom-secret"}}),
            ),
        ],
        json!({}),
    );
    let r = chat(&gw, &s, json!({"model": "gpt-4o", "messages": []}));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let got = &fake.requests()[0];
    assert_eq!(got.header("api-key"), Some("azure-key-from-env-xyz"));
    assert_eq!(got.header("authorization"), None);
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{}/v1/embeddings", s.slug)))
        .bearer_auth(&s.key)
        .json(&json!({"model": "emb", "input": "hi"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = &fake.requests()[1];
    assert_eq!(got.path, "/v1/embeddings");
    assert_eq!(
        got.header("host"),
        Some(format!("127.0.0.1:{}", fake.port).as_str())
    );
    assert_eq!(got.header("x-custom-auth"), Some("custom-secret"));
    assert_eq!(
        got.header("authorization"),
        None,
        "header_name overrides the default header"
    );
}

#[test]
fn the_mock_provider_answers_chat_streams_and_embeddings() {
    let gw = Gateway::start();
    let (s, _) = setup(
        &gw,
        vec![
            json!({"name": "mock", "provider": "mock", "options": {"chunks": 5, "chunk_delay_ms": 1}}),
        ],
        json!({}),
    );
    let r = chat(
        &gw,
        &s,
        json!({"model": "m1", "messages": [{"role": "user", "content": "echo me"}]}),
    );
    let v: Value = r.json().unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo me");
    assert_eq!(v["model"], "m1");
    let r = chat(
        &gw,
        &s,
        json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "echo me"}]}),
    );
    let text = r.text().unwrap();
    let contents: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(contents.len(), 6, "role chunk + 5 content chunks: {text}");
    assert_eq!(contents.concat(), "echo me");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{}/v1/embeddings", s.slug)))
        .bearer_auth(&s.key)
        .json(&json!({"model": "e", "input": ["a", "b"], "dimensions": 8}))
        .send()
        .unwrap();
    let v: Value = r.json().unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 8);
}

#[test]
fn a_finished_stream_without_done_gets_done_and_a_cut_one_an_error() {
    let fake = FakeUpstream::start(|r| {
        let mut events = chat_stream("m", &["x", "y"]);
        events.pop(); // no [DONE]
        if r.json()["model"] == "unfinished" {
            events.pop(); // and no finish chunk either
        }
        Reply::Sse {
            events,
            delay: Duration::ZERO,
        }
    });
    let gw = Gateway::start();
    let s = one_registry(&gw, &fake);
    let text = chat(
        &gw,
        &s,
        json!({"model": "m", "stream": true, "messages": []}),
    )
    .text()
    .unwrap();
    assert!(
        text.contains("\"finish_reason\":\"stop\"") && text.ends_with("}\n\ndata: [DONE]\n\n"),
        "{text}"
    );
    assert_eq!(text.matches("[DONE]").count(), 1);
    let text = chat(
        &gw,
        &s,
        json!({"model": "unfinished", "stream": true, "messages": []}),
    )
    .text()
    .unwrap();
    assert!(
        !text.contains("[DONE]") && text.contains("before it was complete"),
        "{text}"
    );
}

/// A keep-alive client that sends its next request the moment it has read an answer must get
/// every answer: the gateway must not read (and lose) the start of the next request while it
/// finishes relaying the previous one.
#[test]
fn back_to_back_requests_on_one_connection_all_succeed() {
    let fake = FakeUpstream::start(|_| Reply::Json(200, chat_completion("m", "ok")));
    let gw = Gateway::start();
    let s = one_registry(&gw, &fake);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /{}/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        s.slug,
        s.key,
        body.len()
    );
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", gw.proxy_port)).unwrap();
    conn.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..1000 {
        conn.write_all(request.as_bytes()).unwrap();
        // Read exactly one response: the header, then content-length bytes.
        let (status, rest) = loop {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).unwrap();
            assert!(n > 0, "the gateway closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let status: u16 = head[9..12].parse().unwrap();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while buf.len() < end + 4 + len {
                    let n = conn.read(&mut chunk).unwrap();
                    assert!(n > 0, "the gateway closed the connection mid-answer");
                    buf.extend_from_slice(&chunk[..n]);
                }
                break (status, buf.split_off(end + 4 + len));
            }
        };
        buf = rest;
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert_eq!(statuses, std::collections::BTreeMap::from([(200, 1000)]));
}

/// The client gets the upstream's own headers, minus hop-by-hop and framing ones; the
/// upstream's request id comes as `x-upstream-request-id`, next to the gateway's.
#[test]
fn upstream_response_headers_are_relayed_without_hop_by_hop_ones() {
    let fake = FakeUpstream::start(|_| {
        let body = serde_json::to_vec(&chat_completion("gpt-4o", "hi")).unwrap();
        Reply::Raw(
            200,
            vec![
                ("content-type".into(), "application/json".into()),
                ("X-Request-Id".into(), "upstream-req-7".into()),
                ("Keep-Alive".into(), "timeout=5".into()),
                ("Proxy-Connection".into(), "keep-alive".into()),
                ("Trailer".into(), "x-checksum".into()),
                ("OpenAI-Processing-Ms".into(), "42".into()),
            ],
            body,
        )
    });
    let gw = Gateway::start();
    let s = one_registry(&gw, &fake);
    let r = chat(
        &gw,
        &s,
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["x-upstream-request-id"], "upstream-req-7");
    assert_ne!(h["x-request-id"], "upstream-req-7");
    assert_eq!(h["openai-processing-ms"], "42");
    assert_eq!(h["content-type"], "application/json");
    for dropped in ["keep-alive", "proxy-connection", "trailer"] {
        assert!(!h.contains_key(dropped), "{dropped} relayed: {h:?}");
    }
    assert_eq!(h.get_all("content-length").iter().count(), 1);
    assert_eq!(
        r.json::<Value>().unwrap()["choices"][0]["message"]["content"],
        "hi"
    );
}

/// Issue #8: once a stream's answer is relaying, the request can no longer be sent again, so
/// the gateway drops it (and the copy it rendered for the provider). 24 streams with a 2 MiB
/// prompt each, all open at once: kept, the prompts would add at least 2 × 48 MiB; dropped,
/// what remains per stream is the connection's state, well under one prompt.
#[test]
fn open_streams_do_not_keep_their_prompts() {
    const STREAMS: usize = 24;
    const PROMPT: usize = 2 << 20;
    let fake = FakeUpstream::start(|_| Reply::Sse {
        events: chat_stream("m", &["a"; 100]),
        delay: Duration::from_millis(100),
    });
    let gw = Gateway::start();
    let s = one_registry(&gw, &fake);
    let body = json!({"model": "m", "stream": true,
                      "messages": [{"role": "user", "content": "x".repeat(PROMPT)}]})
    .to_string();
    let open = || {
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", gw.proxy_port)).unwrap();
        write!(sock, "POST /{}/v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", s.slug, s.key, body.len()).unwrap();
        sock.write_all(body.as_bytes()).unwrap();
        let (mut buf, mut got) = ([0u8; 4096], Vec::new());
        while !String::from_utf8_lossy(&got).contains("\"content\":\"a\"") {
            let n = sock.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "the stream ended early: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        sock
    };
    // One stream first, so the allocator's pools for bodies this size exist before measuring.
    drop(open());
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(gw.pid());
    let streams: Vec<_> = (0..STREAMS).map(|_| open()).collect();
    let grown = rss_kib(gw.pid()).saturating_sub(before);
    eprintln!("{STREAMS} open streams with {PROMPT}-byte prompts: the gateway grew by {grown} KiB");
    assert_eq!(fake.count(), STREAMS + 1);
    assert!(
        grown < (STREAMS * PROMPT / 2 / 1024) as u64,
        "{STREAMS} open streams grew the gateway by {grown} KiB: the prompts are still held"
    );
    drop(streams);
}

/// Everything the gateway sends on a raw connection until it closes it (or 5 s pass).
fn raw_exchange(port: u16, request: &[u8]) -> String {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "the gateway kept the connection open ({e}): {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A header that does not parse, or a `CONNECT`, is refused and the connection closed; the
/// next connection is served as usual.
#[test]
fn malformed_headers_and_connect_are_refused_and_closed() {
    let gw = Gateway::start();
    let port = gw.proxy_port;
    for (request, status) in [
        (&b"GET /healthz HTTP/1.1\r\nho st: x\r\n\r\n"[..], "400"),
        (
            b"GET /healthz HTTP/1.1\r\nhost: \x01\x7f\r\nbad\x00: y\r\n\r\n",
            "400",
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
            "400",
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
            "405",
        ),
    ] {
        let answer = raw_exchange(port, request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    let answer = raw_exchange(
        port,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
}
