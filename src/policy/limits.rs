//! `limits` policies on a request: body size, message count, estimated input tokens (one
//! token per 4 characters of text), and a cap on the output tokens asked for.

use super::text::{estimate_tokens, request_text};
use crate::entities::policy::LimitsConfig;
use crate::providers::Api;
use crate::proxy::body::JsonBody;
use crate::proxy::error::ProxyError;
use serde_json::{json, Value};

pub fn apply(limits: &LimitsConfig, api: Api, body: &mut JsonBody) -> Result<(), ProxyError> {
    if let Some(max) = limits.max_body_bytes {
        if body.bytes.len() as u64 > max {
            return Err(ProxyError::BodyTooLarge(max as usize));
        }
    }
    if let Some(max) = limits.max_messages {
        let n = body
            .get("messages")
            .and_then(|m| m.as_array().map(Vec::len))
            .unwrap_or(0) as u64;
        if n > max {
            return Err(ProxyError::LimitExceeded(format!(
                "{n} messages; this consumer allows at most {max}"
            )));
        }
    }
    if let Some(max) = limits.max_input_tokens {
        let n = estimate_tokens(&request_text(&body.value()));
        if n > max {
            return Err(ProxyError::LimitExceeded(format!(
                "about {n} input tokens (estimated at 4 characters each); this consumer allows at most {max}"
            )));
        }
    }
    if let Some(cap) = limits.max_output_tokens {
        let fields: &[&str] = match api {
            Api::Responses => &["max_output_tokens"],
            Api::Embeddings | Api::Models => &[],
            _ => &["max_tokens", "max_completion_tokens"],
        };
        let mut capped = false;
        for f in fields {
            if let Some(Value::Number(n)) = body.get(f) {
                capped = true;
                if n.as_u64().is_none_or(|v| v > cap) {
                    body.set(f, &json!(cap));
                }
            }
        }
        if !capped {
            if let Some(f) = fields.first() {
                body.set(f, &json!(cap));
            }
        }
    }
    Ok(())
}
