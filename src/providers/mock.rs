//! The built-in `mock` provider: deterministic OpenAI-format answers, in-process, for demos,
//! tests and load tests. Options: `text` (default: the last user message, echoed), `chunks`
//! (content pieces of a streamed answer, default 4) and `chunk_delay_ms` (default 0).

use super::Api;
use crate::proxy::error::ProxyError;
use crate::snapshot::CompiledRegistry;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// A mock answer: a status, a content type, and the body in pieces sent `delay` apart, with
/// the usage it reports (input, output tokens).
pub struct MockReply {
    pub status: u16,
    pub content_type: &'static str,
    pub chunks: Vec<Bytes>,
    pub delay: Duration,
    pub usage: Option<(u64, u64)>,
}

/// A rough token count: one token per 4 characters, at least 1 for non-empty text.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

fn last_user_text(messages: &[Value]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| crate::translate::content_text(m.get("content").unwrap_or(&Value::Null)))
        .unwrap_or_default()
}

fn short_id(body: &[u8]) -> String {
    hex::encode(&Sha256::digest(body)[..8])
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Splits `text` into `n` pieces on character boundaries (some may be empty).
fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    (0..n)
        .map(|i| {
            let (a, b) = (i * chars.len() / n, (i + 1) * chars.len() / n);
            chars[a..b].iter().collect()
        })
        .collect()
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// `usage_chunk`: whether a streamed answer ends with OpenAI's usage chunk (the client asked
/// for `stream_options.include_usage`).
pub fn answer(
    reg: &CompiledRegistry,
    api: Api,
    model: &str,
    body: &Value,
    usage_chunk: bool,
) -> Result<MockReply, ProxyError> {
    let opts = reg.spec.mock_options();
    let delay = Duration::from_millis(opts.chunk_delay_ms.unwrap_or(0));
    let whole = |v: Value, usage: (u64, u64)| MockReply {
        status: 200,
        content_type: "application/json",
        chunks: vec![Bytes::from(v.to_string())],
        delay: Duration::ZERO,
        usage: Some(usage),
    };
    let id = short_id(body.to_string().as_bytes());
    match api {
        Api::ChatCompletions => {
            let messages = body
                .get("messages")
                .and_then(Value::as_array)
                .ok_or_else(|| ProxyError::InvalidRequest("`messages` must be a list".into()))?;
            let text = opts
                .text
                .clone()
                .unwrap_or_else(|| last_user_text(messages));
            let prompt: u64 = messages
                .iter()
                .map(|m| {
                    estimate_tokens(&crate::translate::content_text(
                        m.get("content").unwrap_or(&Value::Null),
                    ))
                })
                .sum::<u64>()
                .max(1);
            let completion = estimate_tokens(&text);
            let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                               "total_tokens": prompt + completion});
            let (id, created) = (format!("chatcmpl-mock-{id}"), now());
            if !body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
                return Ok(whole(
                    json!({
                    "id": id, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                                 "logprobs": null, "finish_reason": "stop"}],
                    "usage": usage}),
                    (prompt, completion),
                ));
            }
            let include_usage = usage_chunk;
            let chunk = |delta: Value, finish: Value| {
                sse(
                    &json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                    "usage": null}),
                )
            };
            let mut chunks = vec![chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )];
            for p in pieces(&text, opts.chunks.unwrap_or(4) as usize) {
                chunks.push(chunk(json!({"content": p}), Value::Null));
            }
            chunks.push(chunk(json!({}), json!("stop")));
            if include_usage {
                chunks.push(sse(
                    &json!({"id": id, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [], "usage": usage}),
                ));
            }
            chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
            Ok(MockReply {
                status: 200,
                content_type: "text/event-stream",
                chunks,
                delay,
                usage: Some((prompt, completion)),
            })
        }
        Api::Embeddings => {
            let inputs: Vec<String> = match body.get("input") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(items)) if !items.is_empty() => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                    .collect(),
                _ => {
                    return Err(ProxyError::InvalidRequest(
                        "`input` must be a string or a non-empty list".into(),
                    ))
                }
            };
            let dims = body
                .get("dimensions")
                .and_then(Value::as_u64)
                .unwrap_or(16)
                .clamp(1, 4096) as usize;
            let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
            let mut tokens = 0;
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(i, input)| {
                    tokens += estimate_tokens(input).max(1);
                    let vector = embed(input, dims);
                    let embedding = if base64 {
                        let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                    } else {
                        json!(vector)
                    };
                    json!({"object": "embedding", "index": i, "embedding": embedding})
                })
                .collect();
            Ok(whole(
                json!({"object": "list", "data": data, "model": model,
                            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
                (tokens, 0),
            ))
        }
        Api::Responses => {
            if body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
                return Err(ProxyError::InvalidRequest(
                    "the mock provider does not stream the Responses API".into(),
                ));
            }
            let text = opts
                .text
                .clone()
                .unwrap_or_else(|| match body.get("input") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(items)) => last_user_text(items),
                    _ => String::new(),
                });
            let (input, output) = (estimate_tokens(&body.to_string()), estimate_tokens(&text));
            Ok(whole(
                json!({
                "id": format!("resp_mock_{id}"), "object": "response", "created_at": now(),
                "status": "completed", "model": model, "error": null, "incomplete_details": null,
                "output": [{"type": "message", "id": format!("msg_mock_{id}"), "role": "assistant",
                            "status": "completed",
                            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                "usage": {"input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": input + output}}),
                (input, output),
            ))
        }
        Api::Models | Api::Messages => Err(ProxyError::InvalidRequest(format!(
            "the mock provider does not answer {}",
            api.label()
        ))),
    }
}

/// A deterministic unit-ish vector from the input's hash.
fn embed(input: &str, dims: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(dims);
    let mut block = Sha256::digest(input.as_bytes());
    while out.len() < dims {
        for b in block.iter() {
            if out.len() == dims {
                break;
            }
            out.push((*b as f32 / 127.5) - 1.0);
        }
        block = Sha256::digest(block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_text_on_char_boundaries() {
        let p = pieces("héllo wörld", 4);
        assert_eq!(p.len(), 4);
        assert_eq!(p.concat(), "héllo wörld");
    }

    #[test]
    fn embeddings_are_deterministic() {
        assert_eq!(embed("a", 40), embed("a", 40));
        assert_ne!(embed("a", 8), embed("b", 8));
        assert_eq!(embed("a", 40).len(), 40);
    }
}
