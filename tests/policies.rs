//! Policies (SPEC §2 policy types, §3 step 6) through the real gateway: rate limits by
//! requests and by tokens (streams included), guardrails on requests, answers and split stream
//! deltas, and limits.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::upstream::{chat_completion, FakeUpstream, Reply};
use support::{id, Gateway};

struct Env {
    gid: String,
    slug: String,
    keys: Vec<String>,
    consumer_id: String,
}

/// A consumer with `keys` API keys, the given registry and the given policies.
fn setup(gw: &Gateway, registry: Value, policies: Vec<Value>, keys: usize) -> Env {
    let gid = id(&gw.create(
        "/v1/gateways",
        json!({"name": format!("g{}", support::free_port())}),
    ));
    let g = |c: &str| format!("/v1/gateways/{gid}/{c}");
    let reg = id(&gw.create(&g("registries"), registry));
    let auths: Vec<Value> = (0..keys)
        .map(|i| {
            gw.create(
                &g("auths"),
                json!({"name": format!("k{i}"), "type": "api_key"}),
            )
        })
        .collect();
    let pols: Vec<String> = policies
        .into_iter()
        .map(|p| id(&gw.create(&g("policies"), p)))
        .collect();
    let c = gw.create(
        &g("consumers"),
        json!({"name": "app", "registries": [{"id": reg}], "auth_ids": auths.iter().map(id).collect::<Vec<_>>(), "policy_ids": pols}),
    );
    Env {
        gid,
        slug: c["slug"].as_str().unwrap().to_string(),
        keys: auths
            .iter()
            .map(|a| a["key"].as_str().unwrap().to_string())
            .collect(),
        consumer_id: id(&c),
    }
}

fn post(gw: &Gateway, e: &Env, key: usize, body: Value) -> reqwest::blocking::Response {
    gw.http
        .post(gw.proxy_url(&format!("/{}/v1/chat/completions", e.slug)))
        .bearer_auth(&e.keys[key])
        .json(&body)
        .send()
        .unwrap()
}

/// An upstream whose answers say what the request's last message asks them to say (after a
/// `say: ` prefix, if any), streamed in 3-character deltas.
fn echo_upstream() -> FakeUpstream {
    FakeUpstream::start(|r| {
        let b = r.json();
        let said = b["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string();
        let said = said.strip_prefix("say: ").unwrap_or(&said).to_string();
        if b["stream"] == json!(true) {
            let pieces: Vec<String> = said
                .chars()
                .collect::<Vec<_>>()
                .chunks(3)
                .map(|c| c.iter().collect())
                .collect();
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            Reply::Sse {
                events: support::upstream::chat_stream("m", &refs),
                delay: Duration::ZERO,
            }
        } else {
            Reply::Json(200, chat_completion("m", &said))
        }
    })
}

fn chat(text: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": text}]})
}

#[test]
fn request_limits_per_key_with_openai_headers() {
    let gw = Gateway::start();
    let mock = json!({"name": "mock", "provider": "mock"});
    let e = setup(
        &gw,
        mock.clone(),
        vec![
            json!({"name": "rpm", "type": "rate_limit", "config": {"requests_per_minute": 3, "key": "credential"}}),
        ],
        2,
    );
    for i in 0..3 {
        let r = post(&gw, &e, 0, chat("x"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
        assert_eq!(
            r.headers()["x-ratelimit-remaining-requests"],
            (2 - i).to_string().as_str()
        );
    }
    let r = post(&gw, &e, 0, chat("x"));
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "20", "one request per 20 s");
    assert!(r.headers().contains_key("x-ratelimit-reset-requests"));
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // The other key of the same consumer has its own bucket.
    assert_eq!(post(&gw, &e, 1, chat("x")).status(), 200);
    // Keyed by consumer, two consumers do not share.
    let e1 = setup(
        &gw,
        mock.clone(),
        vec![json!({"name": "rpm", "type": "rate_limit", "config": {"requests_per_minute": 1}})],
        2,
    );
    assert_eq!(post(&gw, &e1, 0, chat("x")).status(), 200);
    assert_eq!(
        post(&gw, &e1, 1, chat("x")).status(),
        429,
        "one bucket for the consumer, whatever the key"
    );
    let e2 = setup(
        &gw,
        mock,
        vec![json!({"name": "rpm", "type": "rate_limit", "config": {"requests_per_minute": 1}})],
        1,
    );
    assert_eq!(post(&gw, &e2, 0, chat("x")).status(), 200);
}

#[test]
fn token_limits_count_reported_usage_including_streams() {
    let fake = FakeUpstream::start(|r| {
        let b = r.json();
        if b["stream"] == json!(true) {
            let mut events = support::upstream::chat_stream("m", &["a", "b"]);
            if b["stream_options"]["include_usage"] == json!(true) {
                let usage = json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                                   "usage": {"prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70}});
                events.insert(events.len() - 1, format!("data: {usage}\n\n"));
            }
            Reply::Sse {
                events,
                delay: Duration::ZERO,
            }
        } else {
            let mut c = chat_completion("m", "ok");
            c["usage"] = json!({"prompt_tokens": 40, "completion_tokens": 30, "total_tokens": 70});
            Reply::Json(200, c)
        }
    });
    let gw = Gateway::start();
    let reg =
        json!({"name": "oa", "provider": "openai", "base_url": format!("{}/v1", fake.base_url())});
    let e = setup(
        &gw,
        reg,
        vec![json!({"name": "tpm", "type": "rate_limit", "config": {"tokens_per_minute": 100}})],
        1,
    );
    // 100 tokens: the first request (70) leaves 30; the second is admitted (not empty) and
    // leaves the bucket 40 in debt; the third waits.
    let r = post(&gw, &e, 0, chat("x"));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "100");
    let stream =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]});
    let r = post(&gw, &e, 0, stream);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "30");
    let text = r.text().unwrap();
    assert!(
        !text.contains("\"usage\":{\"completion_tokens\""),
        "the client did not ask for usage: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
    let sent = &fake.requests()[1].json();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the gateway asked upstream for usage"
    );
    // Usage is charged once the response has been written: wait until it shows.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !gw
        .http
        .get(gw.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
        .lines()
        .any(|l| {
            l.starts_with("switchyard_tokens_total{")
                && l.contains("direction=\"output\"")
                && l.ends_with(" 60")
        })
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the usage was never recorded"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = post(&gw, &e, 0, chat("x"));
    assert_eq!(
        r.status(),
        429,
        "the streamed response's 70 tokens were counted"
    );
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (24..=26).contains(&retry),
        "41 tokens at 100/min ≈ 25 s, got {retry}"
    );
    assert_eq!(fake.count(), 2);
}

#[test]
fn guardrails_on_requests_answers_and_split_stream_deltas() {
    let fake = echo_upstream();
    let gw = Gateway::start();
    let reg =
        json!({"name": "oa", "provider": "openai", "base_url": format!("{}/v1", fake.base_url())});
    let e = setup(
        &gw,
        reg,
        vec![
            json!({"name": "no-bombs", "type": "guardrail", "config": {"deny_words": ["bomb"], "action": "block", "applies_to": "both"}}),
            json!({"name": "no-ssn", "type": "guardrail", "config": {"deny_patterns": ["\\b\\d{3}-\\d{2}-\\d{4}\\b"], "action": "redact", "applies_to": "both"}}),
            json!({"name": "out-only", "type": "guardrail", "config": {"deny_words": ["classified"], "action": "block", "applies_to": "response"}}),
        ],
        1,
    );
    // Request blocked: 400 content_blocked, the upstream never sees it.
    let r = post(&gw, &e, 0, chat("how to build a bomb"));
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "content_blocked"
    );
    assert_eq!(fake.count(), 0);
    // Near miss: not blocked.
    let r = post(&gw, &e, 0, chat("say: a trip to bombay"));
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().unwrap()["choices"][0]["message"]["content"],
        "a trip to bombay"
    );
    // Request redaction: the upstream receives [REDACTED].
    let r = post(&gw, &e, 0, chat("my ssn is 123-45-6789"));
    assert_eq!(r.status(), 200);
    assert_eq!(
        fake.requests().last().unwrap().json()["messages"][0]["content"],
        "my ssn is [REDACTED]"
    );
    // A response-only guardrail lets the request through and blocks the answer.
    let r = post(&gw, &e, 0, chat("say: this is classified"));
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "content_blocked"
    );
    // Streamed: a word split across deltas ("cla|ssi|fie|d") ends the stream with an error.
    let stream = |text: &str| json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": format!("say: {text}")}]});
    let text = post(&gw, &e, 0, stream("it is classified, sorry"))
        .text()
        .unwrap();
    assert!(
        text.contains("content_blocked") && !text.contains("[DONE]"),
        "{text}"
    );
    assert!(!text.contains("sorry"));
    // Streamed redaction of a pattern split across deltas.
    let mut fake_ssn = String::from("ids 987-65-4321 and 111-22-3333 end");
    let text = post(&gw, &e, 0, stream(&fake_ssn)).text().unwrap();
    let content: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    fake_ssn = "ids [REDACTED] and [REDACTED] end".into();
    assert_eq!(content, fake_ssn, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[test]
fn limits_cap_output_and_refuse_oversized_input() {
    let fake = FakeUpstream::start(|_| Reply::Json(200, chat_completion("m", "ok")));
    let gw = Gateway::start();
    let reg =
        json!({"name": "oa", "provider": "openai", "base_url": format!("{}/v1", fake.base_url())});
    let e = setup(
        &gw,
        reg,
        vec![
            json!({"name": "l1", "type": "limits", "config": {"max_output_tokens": 100, "max_messages": 3}}),
            json!({"name": "l2", "type": "limits", "config": {"max_input_tokens": 50, "max_body_bytes": 2000, "max_output_tokens": 500}}),
        ],
        1,
    );
    let r = post(
        &gw,
        &e,
        0,
        json!({"model": "m", "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status(), 200);
    assert_eq!(
        fake.requests()[0].json()["max_tokens"],
        100,
        "the tightest cap applies"
    );
    post(&gw, &e, 0, chat("hi"));
    assert_eq!(
        fake.requests()[1].json()["max_tokens"],
        100,
        "a missing max_tokens is set to the cap"
    );
    post(
        &gw,
        &e,
        0,
        json!({"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(
        fake.requests()[2].json()["max_tokens"],
        20,
        "a smaller request is left alone"
    );
    let many: Vec<Value> = (0..4)
        .map(|_| json!({"role": "user", "content": "x"}))
        .collect();
    let r = post(&gw, &e, 0, json!({"model": "m", "messages": many}));
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().unwrap()["error"]["code"],
        "limit_exceeded"
    );
    let r = post(&gw, &e, 0, chat(&"word ".repeat(60)));
    assert_eq!(r.status(), 400, "about 75 estimated tokens > 50");
    let r = post(&gw, &e, 0, chat(&"x".repeat(2100)));
    assert_eq!(r.status(), 413);
    assert_eq!(fake.count(), 3);
    let _ = (&e.gid, &e.consumer_id);
}

/// Guardrails apply to Anthropic-format clients too: on the `system` prompt, on whole answers
/// and on streamed answers (checked as OpenAI chunks before their translation).
#[test]
fn guardrails_apply_to_anthropic_format_clients() {
    let fake = echo_upstream();
    let gw = Gateway::start();
    let reg =
        json!({"name": "oa", "provider": "openai", "base_url": format!("{}/v1", fake.base_url())});
    let e = setup(
        &gw,
        reg,
        vec![
            json!({"name": "no-bombs", "type": "guardrail", "config": {"deny_words": ["bomb"], "action": "block", "applies_to": "request"}}),
            json!({"name": "out-ssn", "type": "guardrail", "config": {"deny_patterns": ["\\b\\d{3}-\\d{2}-\\d{4}\\b"], "action": "redact", "applies_to": "response"}}),
            json!({"name": "out-only", "type": "guardrail", "config": {"deny_words": ["classified"], "action": "block", "applies_to": "response"}}),
        ],
        1,
    );
    let messages = |text: &str, stream: bool| {
        gw.http
            .post(gw.proxy_url(&format!("/{}/v1/messages", e.slug)))
            .header("x-api-key", &e.keys[0])
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "m", "max_tokens": 50, "stream": stream, "system": if text.contains("bomb") { text } else { "be nice" },
                          "messages": [{"role": "user", "content": text}]}))
            .send()
            .unwrap()
    };
    // The system prompt is checked: blocked before the upstream.
    let r = messages("a bomb recipe", false);
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().unwrap()["type"], "error");
    assert_eq!(fake.count(), 0);
    // Whole answers: redacted, or refused in Anthropic's error shape.
    let r = messages("ids 987-65-4321 end", false);
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["content"][0]["text"], "ids [REDACTED] end", "{v}");
    let r = messages("this is classified", false);
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(v["type"], "error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("out-only"),
        "{v}"
    );
    // Streams: a pattern split across deltas is redacted; a blocked word ends the stream with
    // Anthropic's error event and no message_stop.
    let text = messages("ids 987-65-4321 and 111-22-3333 end", true)
        .text()
        .unwrap();
    let said: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["type"] == "content_block_delta")
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(said, "ids [REDACTED] and [REDACTED] end", "{text}");
    assert!(text.contains("event: message_stop"), "{text}");
    let text = messages("it is classified, sorry", true).text().unwrap();
    assert!(
        text.contains("event: error") && text.contains("out-only"),
        "{text}"
    );
    assert!(
        !text.contains("message_stop") && !text.contains("sorry"),
        "{text}"
    );
}
