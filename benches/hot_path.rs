//! Criterion benchmarks of the per-request hot functions: slug + credential lookup in the
//! snapshot, model resolution and selection over 5 registries, the model swap in bodies of
//! 1 KiB and 100 KiB, SSE parsing, and per-event stream translation. Run:
//! `cargo bench --bench hot_path`.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::json;
use switchyard::config::UpstreamDefaults;
use switchyard::entities::{AuthSpec, ConsumerSpec, GatewaySpec, RegistrySpec};
use switchyard::proxy::body::JsonBody;
use switchyard::routing::health::Health;
use switchyard::routing::resolve;
use switchyard::routing::select::Selector;
use switchyard::store::{ops, Store};

fn id(v: &serde_json::Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// A store with `consumers` consumers, each with its own key and 5 weighted registries.
fn store(consumers: usize) -> (tempfile::TempDir, Store, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), UpstreamDefaults::default()).unwrap();
    let gid = id(&ops::create::<GatewaySpec>(&store, None, json!({"name": "g"})).unwrap());
    let g = Some(gid.as_str());
    let regs: Vec<String> = (0..5)
        .map(|i| {
            id(&ops::create::<RegistrySpec>(
                &store,
                g,
                json!({"name": format!("r{i}"), "provider": "openai",
                "base_url": "https://api.example.com/v1", "models": ["gpt-4o", format!("m{i}")]}),
            )
            .unwrap())
        })
        .collect();
    let (mut slug, mut key) = (String::new(), String::new());
    for i in 0..consumers {
        let auth = ops::create::<AuthSpec>(
            &store,
            g,
            json!({"name": format!("k{i}"), "type": "api_key"}),
        )
        .unwrap();
        let c = ops::create::<ConsumerSpec>(&store, g, json!({"name": format!("c{i}"), "auth_ids": [id(&auth)],
            "registries": regs.iter().enumerate().map(|(w, r)| json!({"id": r, "weight": w + 1})).collect::<Vec<_>>()}))
        .unwrap();
        slug = c["slug"].as_str().unwrap().to_string();
        key = auth["key"].as_str().unwrap().to_string();
    }
    (dir, store, slug, key)
}

fn lookup_and_resolve(c: &mut Criterion) {
    let (_dir, store, slug, key) = store(200);
    let snap = store.snapshot();
    let now = chrono::Utc::now().timestamp();
    c.bench_function("slug + api key lookup", |b| {
        b.iter(|| {
            let s = snap.load();
            let consumer = s.consumers.get(black_box(slug.as_str())).unwrap();
            black_box(switchyard::auth::verify_api_key(consumer, black_box(&key), now).is_some())
        })
    });
    let consumer = snap.load().consumers.get(&slug).unwrap().clone();
    let (selector, health) = (Selector::default(), Health::default());
    c.bench_function("model resolution + weighted selection, 5 registries", |b| {
        b.iter(|| {
            let cands = resolve(&consumer.routing, Some(black_box("gpt-4o"))).unwrap();
            let ordered = selector.order(consumer.routing.algorithm, cands, &health);
            black_box(ordered.len())
        })
    });
}

fn body_rewrite(c: &mut Criterion) {
    for size in [1024usize, 100 * 1024] {
        let filler = "x".repeat(size);
        let raw = Bytes::from(json!({"model": "alias", "messages": [{"role": "user", "content": filler}], "temperature": 0.2}).to_string());
        c.bench_function(
            &format!("parse + model swap, {} KiB body", size / 1024),
            |b| {
                b.iter(|| {
                    let body = JsonBody::parse(black_box(raw.clone())).unwrap();
                    black_box(body.render("gpt-4o").len())
                })
            },
        );
    }
}

fn streams(c: &mut Criterion) {
    use switchyard::stream::sse::SseParser;
    use switchyard::translate::{anthropic, gemini};
    let openai_event = br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}

"#;
    c.bench_function("sse parse, one chat chunk event", |b| {
        let mut p = SseParser::new();
        b.iter(|| black_box(p.feed(black_box(openai_event)).unwrap().len()))
    });
    // Per event: parse the event's JSON and produce the other format's frames.
    let anthropic_delta =
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" token"}}"#;
    c.bench_function("translate text delta, anthropic -> openai", |b| {
        let mut t = anthropic::ToOpenAiStream::new(false);
        b.iter(|| black_box(t.event_str(black_box(anthropic_delta)).0.len()))
    });
    let openai_delta = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}"#;
    c.bench_function("translate text delta, openai -> anthropic", |b| {
        let mut t = anthropic::FromOpenAiStream::default();
        // Open the text block as a stream's first delta would.
        let first: serde_json::Value = serde_json::from_str(openai_delta).unwrap();
        t.event(Some(&first));
        b.iter(|| {
            black_box(
                t.text_fast_path(black_box(openai_delta))
                    .map_or(0, |f| f.len()),
            )
        })
    });
    let gemini_delta =
        r#"{"candidates":[{"content":{"role":"model","parts":[{"text":" token"}]},"index":0}]}"#;
    c.bench_function("translate text delta, gemini -> openai", |b| {
        let mut t = gemini::ToOpenAiStream::new("g");
        t.event_str(gemini_delta); // the first event sends the role
        b.iter(|| black_box(t.event_str(black_box(gemini_delta)).len()))
    });
    // Bedrock: one binary event-stream frame in, decoded (CRC-checked) and translated.
    let frame = switchyard::stream::eventstream::encode_event(
        "contentBlockDelta",
        r#"{"contentBlockIndex":0,"delta":{"text":" token"},"p":"abcdefghij"}"#,
    );
    c.bench_function("translate text delta, bedrock frame -> openai", |b| {
        let mut t =
            switchyard::translate::ToOpenAiStage::new(switchyard::providers::Wire::Bedrock, "m")
                .unwrap();
        t.feed(&frame).unwrap(); // the first event sends the role
        b.iter(|| black_box(t.feed(black_box(&frame)).unwrap().len()))
    });
}

criterion_group!(benches, lookup_and_resolve, body_rewrite, streams);
criterion_main!(benches);
