//! The store at 100,000 consumers (issue #8): opening it, and the cost of one admin write.
//! Ignored by default (it takes a while in debug builds); run with
//! `cargo test --release --test scale -- --ignored --nocapture`.

mod support;

use serde_json::{json, Value};
use std::time::Instant;
use switchyard::config::UpstreamConfig;
use switchyard::store::{ops, Store};

fn rss_kib() -> u64 {
    support::rss_kib(std::process::id())
}

/// An export document: one gateway, two registries, one rate-limit policy, and `n` consumers
/// each with its own API key.
pub fn document(n: usize) -> Value {
    let g = "gw-1";
    let regs = json!([
        {"id": "reg-a", "gateway_id": g, "name": "a", "provider": "openai", "base_url": "http://127.0.0.1:9/v1"},
        {"id": "reg-b", "gateway_id": g, "name": "b", "provider": "openai", "base_url": "http://127.0.0.1:9/v1"}
    ]);
    let auths: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("auth-{i}"), "gateway_id": g, "name": format!("key-{i}"), "type": "api_key",
                         "key_hash": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("sy-key-{i}").as_bytes())), "key_prefix": "sy-key-x"}))
        .collect();
    let consumers: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("c-{i}"), "gateway_id": g, "slug": format!("app-{i}"), "name": format!("app-{i}"),
                         "auth_ids": [format!("auth-{i}")], "policy_ids": ["pol-1"],
                         "registries": [{"id": "reg-a", "weight": 80, "model_policies": {"allowed": ["gpt-4o-mini"], "default": "gpt-4o-mini"}},
                                        {"id": "reg-b", "weight": 20}]}))
        .collect();
    json!({"gateways": [{"id": g, "name": "prod"}], "registries": regs,
           "policies": [{"id": "pol-1", "gateway_id": g, "name": "rpm", "type": "rate_limit", "config": {"requests_per_minute": 1000000}}],
           "auths": auths, "consumers": consumers})
}

#[test]
#[ignore]
fn a_hundred_thousand_consumers() {
    // `SCALE_DIR` keeps the store between runs, so a second run measures a fresh process.
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("SCALE_DIR").map_or_else(|_| tmp.path().to_path_buf(), Into::into);
    let defaults = UpstreamConfig::default().defaults();
    if !dir.join("store").exists() {
        let store = Store::open(&dir, defaults).unwrap();
        let t = Instant::now();
        ops::import(&store, document(n())).unwrap();
        println!("import: {:?}", t.elapsed());
    }
    let before = rss_kib();
    let t = Instant::now();
    let store = Store::open(&dir, defaults).unwrap();
    println!("open (load + compile): {:?}", t.elapsed());
    println!(
        "rss: {} MiB before open, {} MiB after",
        before / 1024,
        rss_kib() / 1024
    );
    let mut times = Vec::new();
    for i in 0..200.min(n()) {
        let t = Instant::now();
        ops::update::<switchyard::entities::ConsumerSpec>(
            &store,
            Some("gw-1"),
            &format!("c-{i}"),
            json!({"headers": {"x-team": format!("t{i}")}}),
            true,
        )
        .unwrap();
        times.push(t.elapsed());
    }
    let first = times[0];
    times.sort();
    let k = times.len();
    println!(
        "admin write first {first:?} p50 {:?} p99 {:?} max {:?}",
        times[k / 2],
        times[k * 99 / 100],
        times[k - 1]
    );
    assert_eq!(store.snapshot().load().consumers.len(), n());
}

/// Consumers to create: `SCALE_N`, default 100,000.
fn n() -> usize {
    std::env::var("SCALE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}
