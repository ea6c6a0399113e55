//! Prometheus metrics (SPEC §4), served by the admin listener's `GET /metrics`.
//!
//! Labels are bounded: gateway, consumer and registry names come from the store, `model` is the
//! model sent upstream only when a catalog or allow-list names it (else `other`), and status is
//! a class (`2xx`…`5xx`). No request ids, no raw client strings.

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    Encoder, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};

const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];

macro_rules! metric {
    ($name:ident: $ty:ty = $reg:expr) => {
        pub static $name: Lazy<$ty> =
            Lazy::new(|| $reg.expect(concat!("metric ", stringify!($name))));
    };
}

metric!(REQUESTS: IntCounterVec = register_int_counter_vec!(
    "switchyard_requests_total", "Proxy requests answered, by consumer, registry, model and status class.",
    &["gateway", "consumer", "registry", "model", "status_class"]));
metric!(REQUEST_DURATION: HistogramVec = register_histogram_vec!(
    "switchyard_request_duration_seconds", "Total time from request to the end of the response.",
    &["gateway", "consumer", "registry"], LATENCY_BUCKETS.to_vec()));
metric!(UPSTREAM_DURATION: HistogramVec = register_histogram_vec!(
    "switchyard_upstream_duration_seconds", "Time from sending upstream to the end of the upstream response.",
    &["registry"], LATENCY_BUCKETS.to_vec()));
metric!(TIME_TO_FIRST_BYTE: HistogramVec = register_histogram_vec!(
    "switchyard_time_to_first_byte_seconds", "Time from sending upstream to the upstream's response header.",
    &["registry"], LATENCY_BUCKETS.to_vec()));
metric!(PROXY_OVERHEAD: HistogramVec = register_histogram_vec!(
    "switchyard_proxy_overhead_seconds", "Time spent in the gateway itself (total minus upstream).",
    &["gateway"], LATENCY_BUCKETS.to_vec()));
metric!(TOKENS: IntCounterVec = register_int_counter_vec!(
    "switchyard_tokens_total", "Tokens reported by upstreams, by direction (input, output).",
    &["gateway", "consumer", "registry", "model", "direction"]));
metric!(ATTEMPTS: IntCounterVec = register_int_counter_vec!(
    "switchyard_upstream_attempts_total", "Upstream attempts by outcome (success or the failure class).",
    &["registry", "outcome"]));
metric!(FALLBACK_ATTEMPTS: IntCounterVec = register_int_counter_vec!(
    "switchyard_fallback_attempts_total", "Attempts beyond a request's first (retries and fallbacks).",
    &["registry"]));
metric!(CIRCUIT_STATE: IntGaugeVec = register_int_gauge_vec!(
    "switchyard_circuit_state", "Circuit per registry: 0 closed, 1 half-open, 2 open.",
    &["registry"]));
metric!(ACTIVE_STREAMS: IntGauge = register_int_gauge!(
    "switchyard_active_streams", "Streamed responses in flight."));
metric!(RATE_LIMITED: IntCounterVec = register_int_counter_vec!(
    "switchyard_rate_limited_total", "Requests refused by a rate-limit policy.",
    &["gateway", "consumer", "policy"]));
metric!(GUARDRAIL_ACTIONS: IntCounterVec = register_int_counter_vec!(
    "switchyard_guardrail_actions_total", "Guardrail matches, by action (block, redact).",
    &["gateway", "consumer", "policy", "action"]));
metric!(MCP_TOOL_CALLS: IntCounterVec = register_int_counter_vec!(
    "switchyard_mcp_tool_calls_total", "MCP tool calls by outcome (ok, tool_error, rpc_error, unavailable, rate_limited).",
    &["gateway", "consumer", "registry", "tool", "outcome"]));
metric!(MCP_TOOL_DURATION: HistogramVec = register_histogram_vec!(
    "switchyard_mcp_tool_call_duration_seconds", "Time a backing MCP server took to answer a tool call.",
    &["registry", "tool"], LATENCY_BUCKETS.to_vec()));
metric!(AUTH_FAILURES: IntCounterVec = register_int_counter_vec!(
    "switchyard_auth_failures_total", "Requests refused at the credential step, by reason.",
    &["gateway", "reason"]));

/// Counts a stream as active until dropped.
pub struct ActiveStream;

impl ActiveStream {
    pub fn start() -> ActiveStream {
        ACTIVE_STREAMS.inc();
        ActiveStream
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        ACTIVE_STREAMS.dec();
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Makes every metric exist (so a scrape lists them before the first request).
pub fn init() {
    Lazy::force(&REQUESTS);
    Lazy::force(&REQUEST_DURATION);
    Lazy::force(&UPSTREAM_DURATION);
    Lazy::force(&TIME_TO_FIRST_BYTE);
    Lazy::force(&PROXY_OVERHEAD);
    Lazy::force(&TOKENS);
    Lazy::force(&ATTEMPTS);
    Lazy::force(&FALLBACK_ATTEMPTS);
    Lazy::force(&CIRCUIT_STATE);
    Lazy::force(&ACTIVE_STREAMS);
    Lazy::force(&RATE_LIMITED);
    Lazy::force(&GUARDRAIL_ACTIONS);
    Lazy::force(&AUTH_FAILURES);
    Lazy::force(&MCP_TOOL_CALLS);
    Lazy::force(&MCP_TOOL_DURATION);
}

/// The default registry in the text exposition format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let families = prometheus::gather();
    if TextEncoder::new().encode(&families, &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}
