//! The Prometheus registry and its text rendering for `GET /metrics`.

use prometheus::{Encoder, TextEncoder};

/// The default registry in the text exposition format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let families = prometheus::gather();
    if TextEncoder::new().encode(&families, &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}
