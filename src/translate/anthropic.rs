//! OpenAI Chat Completions ↔ Anthropic Messages: requests, answers, errors and streams, per
//! `shared/notes/protocols.md` §6.1–6.4 and §6.6.
//!
//! Usage: an Anthropic answer's `prompt_tokens` counts cache reads and writes too (OpenAI's
//! meaning), with `cached_tokens` = cache reads; the reverse subtracts them again.

use crate::translate::{frame, ChunkWriter, Part, Text};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// A plain text delta, read without building a generic JSON value (the hot case).
#[derive(Deserialize)]
struct AnthropicDelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    delta: Option<AnthropicTextDelta<'a>>,
}

#[derive(Deserialize)]
struct AnthropicTextDelta<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct OpenAiChunkPeek<'a> {
    #[serde(default, borrow)]
    choices: Vec<OpenAiChoicePeek<'a>>,
    #[serde(default)]
    usage: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct OpenAiChoicePeek<'a> {
    #[serde(default, borrow)]
    delta: Option<OpenAiDeltaPeek<'a>>,
    #[serde(default)]
    finish_reason: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct OpenAiDeltaPeek<'a> {
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
    #[serde(default)]
    tool_calls: Option<serde::de::IgnoredAny>,
}

/// OpenAI `tool_calls` as Anthropic `tool_use` blocks (arguments that are not JSON become `{}`).
fn tool_use_blocks(calls: Option<&Value>) -> impl Iterator<Item = Value> + '_ {
    calls.and_then(Value::as_array).into_iter().flatten().map(|call| {
        let args = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
        json!({"type": "tool_use", "id": call["id"], "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
               "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}))})
    })
}

/// Anthropic content blocks as an OpenAI assistant message: text joined, `tool_use` blocks as
/// `tool_calls` (content null when there is only a tool call).
fn assistant_message(blocks: &[Value]) -> Value {
    let text: String = blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect();
    let calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| json!({"id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": b.get("input").cloned().unwrap_or(json!({})).to_string()}}))
        .collect();
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    let mut msg = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    msg
}

/// An OpenAI `image_url` part as an Anthropic image block.
fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((meta, data)) = rest.split_once(',') {
            let media = meta.trim_end_matches(";base64");
            return json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}});
        }
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

fn user_blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(s) if !s.is_empty() => vec![json!({"type": "text", "text": s})],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(|t| json!({"type": "text", "text": t})),
                Some("image_url") => p
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .map(image_block),
                _ => None,
            })
            .collect(),
        _ => vec![],
    }
}

/// An OpenAI chat request as an Anthropic Messages request.
pub fn request_from_openai(
    v: &Value,
    model: &str,
    default_max_tokens: u64,
) -> Result<Value, String> {
    let (system, messages) = crate::translate::turns(
        v,
        &crate::translate::Blocks {
            text: |t| json!({"type": "text", "text": t}),
            user: |content| Ok(user_blocks(content)),
            tool_calls: |calls| tool_use_blocks(calls).collect(),
            tool_result: |id, text| json!({"type": "tool_result", "tool_use_id": id, "content": text}),
        },
    )?;
    let max_tokens = v
        .get("max_completion_tokens")
        .or_else(|| v.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(default_max_tokens);
    let mut out = json!({"model": model, "max_tokens": max_tokens, "messages": messages});
    if !system.is_empty() {
        out["system"] = Value::Array(system);
    }
    if let Some(t) = v.get("temperature").and_then(Value::as_f64) {
        out["temperature"] = json!(t.min(1.0));
    } else if let Some(p) = v.get("top_p") {
        out["top_p"] = p.clone();
    }
    match v.get("stop") {
        Some(Value::String(s)) => out["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) => out["stop_sequences"] = Value::Array(a.clone()),
        _ => {}
    }
    if let Some(u) = v.get("user").and_then(Value::as_str) {
        out["metadata"] = json!({"user_id": u});
    }
    if let Some(tools) = v.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                let schema = f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                let mut tool = json!({"name": f.get("name")?, "input_schema": schema});
                if let Some(d) = f.get("description") {
                    tool["description"] = d.clone();
                }
                Some(tool)
            })
            .collect();
        out["tools"] = Value::Array(tools);
    }
    let mut choice = match v.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|n| json!({"type": "tool", "name": n})),
        _ => None,
    };
    if v.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        c["disable_parallel_tool_use"] = json!(true);
    }
    if let Some(c) = choice {
        out["tool_choice"] = c;
    }
    if v.get("stream") == Some(&Value::Bool(true)) {
        out["stream"] = json!(true);
    }
    Ok(out)
}

/// An Anthropic Messages request as an OpenAI chat request (usage asked for on streams).
pub fn request_to_openai(v: &Value, model: &str) -> Result<Value, String> {
    let msgs = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("`messages` must be a list")?;
    let mut out_msgs = Vec::new();
    match v.get("system") {
        Some(Value::String(s)) if !s.is_empty() => {
            out_msgs.push(json!({"role": "system", "content": s}))
        }
        Some(Value::Array(_)) => out_msgs.push(
            json!({"role": "system", "content": crate::translate::content_text(&v["system"])}),
        ),
        _ => {}
    }
    for m in msgs {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or("each message needs a role")?;
        let content = m.get("content").unwrap_or(&Value::Null);
        let blocks: Vec<Value> = match content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(b) => b.clone(),
            _ => vec![],
        };
        if role == "assistant" {
            let msg = assistant_message(&blocks);
            out_msgs.push(msg);
            continue;
        }
        // Tool results become tool messages, before the rest of the user turn.
        for b in blocks.iter().filter(|b| b["type"] == "tool_result") {
            out_msgs.push(json!({"role": "tool", "tool_call_id": b["tool_use_id"], "content": crate::translate::content_text(b.get("content").unwrap_or(&Value::Null))}));
        }
        let parts: Vec<Value> = blocks
            .iter()
            .filter_map(|b| match b["type"].as_str() {
                Some("text") => Some(json!({"type": "text", "text": b["text"]})),
                Some("image") => {
                    let s = &b["source"];
                    let url = if s["type"] == "base64" {
                        format!(
                            "data:{};base64,{}",
                            s["media_type"].as_str().unwrap_or("image/png"),
                            s["data"].as_str().unwrap_or("")
                        )
                    } else {
                        s["url"].as_str().unwrap_or("").to_string()
                    };
                    Some(json!({"type": "image_url", "image_url": {"url": url}}))
                }
                _ => None,
            })
            .collect();
        if !parts.is_empty() {
            let content = if parts.iter().all(|p| p["type"] == "text") {
                json!(parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<String>())
            } else {
                Value::Array(parts)
            };
            out_msgs.push(json!({"role": "user", "content": content}));
        }
    }
    let mut out = json!({"model": model, "messages": out_msgs});
    for (from, to) in [
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
    ] {
        if let Some(x) = v.get(from) {
            out[to] = x.clone();
        }
    }
    if let Some(s) = v.get("stop_sequences").and_then(Value::as_array) {
        out["stop"] = Value::Array(s.iter().take(4).cloned().collect());
    }
    if let Some(u) = v.pointer("/metadata/user_id") {
        out["user"] = u.clone();
    }
    if let Some(tools) = v.get("tools").and_then(Value::as_array) {
        out["tools"] = Value::Array(
            tools
                .iter()
                .map(|t| json!({"type": "function", "function": {"name": t["name"], "description": t.get("description").cloned().unwrap_or(json!("")), "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"}))}}))
                .collect(),
        );
    }
    if let Some(c) = v.get("tool_choice") {
        out["tool_choice"] = match c["type"].as_str() {
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": c["name"]}}),
            _ => json!("auto"),
        };
        if c.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out["parallel_tool_calls"] = json!(false);
        }
    }
    if v.get("stream") == Some(&Value::Bool(true)) {
        out["stream"] = json!(true);
        out["stream_options"] = json!({"include_usage": true});
    }
    Ok(out)
}

pub fn finish_from_stop(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

pub fn stop_from_finish(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI usage from Anthropic usage.
pub fn usage_to_openai(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (input, read, write, output) = (
        n("input_tokens"),
        n("cache_read_input_tokens"),
        n("cache_creation_input_tokens"),
        n("output_tokens"),
    );
    let prompt = input + read + write;
    json!({"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output,
           "prompt_tokens_details": {"cached_tokens": read}})
}

/// Anthropic usage from OpenAI usage.
pub fn usage_from_openai(u: &Value) -> Value {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("/prompt_tokens_details/cached_tokens");
    json!({"input_tokens": n("/prompt_tokens").saturating_sub(cached), "output_tokens": n("/completion_tokens"),
           "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0})
}

/// An Anthropic answer as an OpenAI chat completion.
pub fn response_to_openai(v: &Value) -> Value {
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut message = assistant_message(&blocks);
    message["refusal"] = Value::Null;
    let id = v["id"]
        .as_str()
        .map_or_else(|| "chatcmpl-x".to_string(), |i| format!("chatcmpl-{i}"));
    json!({"id": id, "object": "chat.completion", "created": crate::translate::now(), "model": v["model"],
           "choices": [{"index": 0, "message": message, "logprobs": null,
                        "finish_reason": finish_from_stop(v["stop_reason"].as_str().unwrap_or("end_turn"))}],
           "usage": usage_to_openai(v.get("usage").unwrap_or(&Value::Null))})
}

/// An OpenAI chat completion as an Anthropic answer.
pub fn response_from_openai(v: &Value) -> Value {
    let choice = &v["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    let text = crate::translate::content_text(msg.get("content").unwrap_or(&Value::Null));
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    content.extend(tool_use_blocks(msg.get("tool_calls")));
    let id = v["id"].as_str().map_or_else(
        || "msg_x".to_string(),
        |i| format!("msg_{}", i.trim_start_matches("chatcmpl-")),
    );
    json!({"id": id, "type": "message", "role": "assistant", "model": v["model"], "content": content,
           "stop_reason": stop_from_finish(choice["finish_reason"].as_str().unwrap_or("stop")), "stop_sequence": null,
           "usage": usage_from_openai(v.get("usage").unwrap_or(&Value::Null))})
}

/// The Anthropic `error.type` for an HTTP status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// An upstream error body (either shape) in the other shape.
pub fn error_to_anthropic(status: u16, v: &Value) -> Value {
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("upstream error");
    json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})
}

pub fn error_to_openai(status: u16, v: &Value) -> Value {
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("upstream error");
    let kind = v
        .pointer("/error/type")
        .and_then(Value::as_str)
        .unwrap_or(match status {
            401 => "authentication_error",
            429 => "rate_limit_error",
            _ => "api_error",
        });
    json!({"error": {"message": message, "type": kind, "param": null, "code": v.pointer("/error/code").cloned().unwrap_or(Value::Null)}})
}

/// Anthropic stream events → OpenAI chunks (§6.3).
pub struct ToOpenAiStream {
    out: ChunkWriter,
    tool_ctr: i64,
    /// Anthropic block index → OpenAI tool index.
    tools: Map<String, Value>,
    usage: Value,
    include_usage: bool,
    pub done: bool,
}

impl ToOpenAiStream {
    pub fn new(include_usage: bool) -> Self {
        ToOpenAiStream {
            out: ChunkWriter::new("chatcmpl-x".into(), Value::Null),
            tool_ctr: -1,
            tools: Map::new(),
            usage: json!({}),
            include_usage,
            done: false,
        }
    }

    /// The frames for one event given as JSON text: text deltas take a fast path that builds
    /// no generic JSON value; everything else goes through `event`.
    pub fn event_str(&mut self, data: &str) -> (String, Option<(u64, u64)>) {
        if let Ok(d) = serde_json::from_str::<AnthropicDelta>(data) {
            if let (true, Some(delta)) = (d.kind == "content_block_delta", &d.delta) {
                if let (true, Some(Text(text))) = (delta.kind == "text_delta", &delta.text) {
                    return (self.out.text(text), None);
                }
            }
        }
        match serde_json::from_str::<Value>(data) {
            Ok(v) => self.event(&v),
            Err(_) => (String::new(), None),
        }
    }

    /// The OpenAI frames for one Anthropic event; the usage (input, output) once known.
    pub fn event(&mut self, data: &Value) -> (String, Option<(u64, u64)>) {
        let mut out = String::new();
        let mut usage = None;
        match data["type"].as_str().unwrap_or("") {
            "message_start" => {
                let m = &data["message"];
                if let Some(i) = m["id"].as_str() {
                    self.out.id = format!("chatcmpl-{i}");
                }
                self.out.model = m["model"].clone();
                if let Some(u) = m.get("usage").and_then(Value::as_object) {
                    for (k, v) in u {
                        self.usage[k] = v.clone();
                    }
                }
                out += &self
                    .out
                    .chunk(json!({"role": "assistant", "content": ""}), Value::Null);
            }
            "content_block_start" => {
                let b = &data["content_block"];
                if b["type"] == "tool_use" {
                    self.tool_ctr += 1;
                    self.tools
                        .insert(data["index"].to_string(), json!(self.tool_ctr));
                    out += &self.out.chunk(
                        json!({"tool_calls": [{"index": self.tool_ctr, "id": b["id"], "type": "function",
                                               "function": {"name": b["name"], "arguments": ""}}]}),
                        Value::Null,
                    );
                } else if let Some(t) = b
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    out += &self.out.chunk(json!({"content": t}), Value::Null);
                }
            }
            "content_block_delta" => {
                let d = &data["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => {
                        out += &self.out.chunk(json!({"content": d["text"]}), Value::Null)
                    }
                    Some("input_json_delta") => {
                        let part = d["partial_json"].as_str().unwrap_or("");
                        if let (false, Some(idx)) =
                            (part.is_empty(), self.tools.get(&data["index"].to_string()))
                        {
                            out += &self.out.chunk(json!({"tool_calls": [{"index": idx, "function": {"arguments": part}}]}), Value::Null);
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = data.get("usage").and_then(Value::as_object) {
                    for (k, v) in u {
                        self.usage[k] = v.clone();
                    }
                }
                let finish = finish_from_stop(
                    data.pointer("/delta/stop_reason")
                        .and_then(Value::as_str)
                        .unwrap_or("end_turn"),
                );
                out += &self.out.chunk(json!({}), json!(finish));
            }
            "message_stop" => {
                let u = usage_to_openai(&self.usage);
                usage = Some((
                    u["prompt_tokens"].as_u64().unwrap_or(0),
                    u["completion_tokens"].as_u64().unwrap_or(0),
                ));
                if self.include_usage {
                    out += &self.out.usage(u);
                }
                out += "data: [DONE]\n\n";
                self.done = true;
            }
            "error" => {
                out += &ChunkWriter::error(
                    data.pointer("/error/message"),
                    data.pointer("/error/type"),
                );
                self.done = true;
            }
            _ => {} // ping, content_block_stop, unknown events
        }
        (out, usage)
    }
}

/// OpenAI chunks → Anthropic stream events (§6.4).
pub struct FromOpenAiStream {
    started: bool,
    /// (kind, anthropic index) of the open block.
    open: Option<(&'static str, u64)>,
    next_index: u64,
    tools: Map<String, Value>,
    held_stop: Option<&'static str>,
    usage: Value,
    pub done: bool,
}

/// The text of an Anthropic text delta event, in pieces around its index and text.
const TEXT_DELTA: [&str; 3] = [
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
    ",\"delta\":{\"type\":\"text_delta\",\"text\":",
    "}}\n\n",
];

/// A text delta event (the hot case).
fn text_delta(index: u64, text: &str) -> String {
    frame(&TEXT_DELTA, &[Part::Number(index), Part::Quoted(text)])
}

fn ev(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl Default for FromOpenAiStream {
    fn default() -> Self {
        FromOpenAiStream {
            started: false,
            open: None,
            next_index: 0,
            tools: Map::new(),
            held_stop: None,
            usage: json!({"input_tokens": 0, "output_tokens": 0}),
            done: false,
        }
    }
}

impl FromOpenAiStream {
    fn start(&mut self, chunk: &Value, out: &mut String) {
        if !self.started {
            self.started = true;
            let id = chunk["id"].as_str().map_or_else(
                || "msg_x".to_string(),
                |i| format!("msg_{}", i.trim_start_matches("chatcmpl-")),
            );
            *out += &ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
                "model": chunk["model"], "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            );
        }
    }

    fn close(&mut self, out: &mut String) {
        if let Some((_, idx)) = self.open.take() {
            *out += &ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": idx}),
            );
        }
    }

    /// The frames for a plain text delta given as JSON text, when a text block is open: a
    /// fast path that builds no generic JSON value. `None`: use `event`.
    pub fn text_fast_path(&mut self, data: &str) -> Option<String> {
        let Some(("text", idx)) = self.open else {
            return None;
        };
        let c: OpenAiChunkPeek = serde_json::from_str(data).ok()?;
        if c.usage.is_some() || c.error.is_some() || c.choices.len() != 1 {
            return None;
        }
        let choice = &c.choices[0];
        let delta = choice.delta.as_ref()?;
        if choice.finish_reason.is_some() || delta.tool_calls.is_some() {
            return None;
        }
        let Text(text) = delta.content.as_ref().filter(|t| !t.0.is_empty())?;
        Some(text_delta(idx, text))
    }

    /// The Anthropic frames for one OpenAI chunk (`None` = `[DONE]`).
    pub fn event(&mut self, chunk: Option<&Value>) -> String {
        let mut out = String::new();
        let Some(chunk) = chunk else {
            self.finish(&mut out);
            return out;
        };
        if let Some(err) = chunk.get("error") {
            out += &ev(
                "error",
                json!({"type": "error", "error": {"type": "api_error", "message": err.get("message").cloned().unwrap_or(json!("upstream error"))}}),
            );
            self.done = true;
            return out;
        }
        self.start(chunk, &mut out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = usage_from_openai(u);
        }
        for choice in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let d = &choice["delta"];
            if let Some(t) = d
                .get("content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                if !matches!(self.open, Some(("text", _))) {
                    self.close(&mut out);
                    let idx = self.next_index;
                    self.next_index += 1;
                    out += &ev(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}}),
                    );
                    self.open = Some(("text", idx));
                }
                let idx = self.open.map_or(0, |o| o.1);
                out += &ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": idx, "delta": {"type": "text_delta", "text": t}}),
                );
            }
            for call in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let k = call["index"].to_string();
                if call.get("id").is_some_and(|i| !i.is_null()) {
                    self.close(&mut out);
                    let idx = self.next_index;
                    self.next_index += 1;
                    self.tools.insert(k.clone(), json!(idx));
                    out += &ev(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": idx,
                        "content_block": {"type": "tool_use", "id": call["id"], "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null), "input": {}}}),
                    );
                    self.open = Some(("tool", idx));
                }
                let args = call
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if let (false, Some(idx)) = (args.is_empty(), self.tools.get(&k)) {
                    out += &ev(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": idx, "delta": {"type": "input_json_delta", "partial_json": args}}),
                    );
                }
            }
            if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
                self.close(&mut out);
                self.held_stop = Some(stop_from_finish(f));
            }
        }
        out
    }

    fn finish(&mut self, out: &mut String) {
        if self.done {
            return;
        }
        self.close(out);
        *out += &ev(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": self.held_stop.unwrap_or("end_turn"), "stop_sequence": null}, "usage": self.usage}),
        );
        *out += &ev("message_stop", json!({"type": "message_stop"}));
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fast_paths_match_the_general_path_on_escaped_text() {
        let text = "a \"quote\"\n\\ é😀 \u{7}";
        // OpenAI -> Anthropic: the fast path's frame equals the general path's.
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
        let (mut fast, mut slow) = (FromOpenAiStream::default(), FromOpenAiStream::default());
        let first =
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "x"}}]});
        fast.event(Some(&first));
        slow.event(Some(&first));
        let events = |sse: &str| -> Vec<(String, Value)> {
            sse.split("\n\n")
                .filter(|e| !e.is_empty())
                .map(|e| {
                    let (name, data) = e.split_once("\ndata: ").unwrap();
                    (name.to_string(), serde_json::from_str(data).unwrap())
                })
                .collect()
        };
        let fast_frames = fast.text_fast_path(&chunk.to_string()).unwrap();
        assert_eq!(events(&fast_frames), events(&slow.event(Some(&chunk))));
        assert_eq!(events(&fast_frames)[0].1["delta"]["text"], text);
        // Anthropic -> OpenAI: the fast path's content is the text, unescaped.
        let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}});
        let (frames, _) = ToOpenAiStream::new(false).event_str(&delta.to_string());
        let c = &crate::translate::chunks_of(&frames)[0];
        assert_eq!(c["choices"][0]["delta"]["content"], text);
    }

    #[test]
    fn openai_request_to_anthropic_field_by_field() {
        let v = json!({"model": "x", "max_tokens": 99, "temperature": 1.7, "stop": "END", "user": "u1", "parallel_tool_calls": false,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
                {"role": "user", "content": "and?"}],
            "tools": [{"type": "function", "function": {"name": "get", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": "required"});
        let out = request_from_openai(&v, "claude", 4096).unwrap();
        assert_eq!(out["system"], json!([{"type": "text", "text": "be brief"}]));
        assert_eq!(out["max_tokens"], 99);
        assert_eq!(out["temperature"], 1.0);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["metadata"], json!({"user_id": "u1"}));
        assert_eq!(
            out["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            out["tools"][0],
            json!({"name": "get", "description": "d", "input_schema": {"type": "object"}})
        );
        let m = out["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            m[0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "AAAA"})
        );
        assert_eq!(
            m[1]["content"],
            json!([{"type": "tool_use", "id": "call_1", "name": "get", "input": {"a": 1}}])
        );
        assert_eq!(
            m[2]["content"],
            json!([{"type": "tool_result", "tool_use_id": "call_1", "content": "42"}, {"type": "text", "text": "and?"}])
        );
        assert_eq!(
            request_from_openai(&json!({"messages": []}), "c", 77).unwrap()["max_tokens"],
            77
        );
    }

    #[test]
    fn anthropic_request_to_openai_and_back_keeps_the_conversation() {
        let v = json!({"model": "x", "max_tokens": 50, "system": "sys", "stop_sequences": ["a"], "stream": true,
            "messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"q": 1}}]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}, {"type": "text", "text": "next"}]}],
            "tool_choice": {"type": "tool", "name": "f"}});
        let o = request_to_openai(&v, "gpt").unwrap();
        assert_eq!(
            o["messages"][0],
            json!({"role": "system", "content": "sys"})
        );
        assert_eq!(
            o["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":1}"
        );
        assert_eq!(
            o["messages"][3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "ok"})
        );
        assert_eq!(o["messages"][4], json!({"role": "user", "content": "next"}));
        assert_eq!(o["stream_options"]["include_usage"], true);
        assert_eq!(o["tool_choice"]["function"]["name"], "f");
        let back = request_from_openai(&o, "x", 1).unwrap();
        let mut expected = v["messages"].clone();
        expected[0]["content"] = json!([{"type": "text", "text": "hi"}]);
        assert_eq!(
            back["messages"], expected,
            "a round trip keeps the conversation"
        );
    }

    #[test]
    fn answers_and_usage_both_ways() {
        let a = json!({"id": "msg_1", "type": "message", "model": "claude", "stop_reason": "tool_use",
            "content": [{"type": "text", "text": "checking"}, {"type": "tool_use", "id": "tu", "name": "f", "input": {"x": 1}}],
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2}});
        let o = response_to_openai(&a);
        assert_eq!(o["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(o["choices"][0]["message"]["content"], "checking");
        assert_eq!(
            o["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"x\":1}"
        );
        assert_eq!(
            o["usage"],
            json!({"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20, "prompt_tokens_details": {"cached_tokens": 3}})
        );
        let back = response_from_openai(&o);
        assert_eq!(back["content"], a["content"]);
        assert_eq!(back["stop_reason"], "tool_use");
        assert_eq!(back["usage"]["input_tokens"], 12);
        assert_eq!(back["usage"]["cache_read_input_tokens"], 3);
    }

    #[test]
    fn anthropic_stream_to_openai_chunks() {
        let events = [
            json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 7, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "tu", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":1}"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
            json!({"type": "message_stop"}),
        ];
        let mut s = ToOpenAiStream::new(true);
        let mut out = String::new();
        let mut usage = None;
        for e in &events {
            let (o, u) = s.event(e);
            out += &o;
            usage = u.or(usage);
        }
        let chunks = crate::translate::chunks_of(&out);
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0]["index"], 0,
            "tool index counts tools, not blocks"
        );
        assert_eq!(
            chunks[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[5]["usage"]["completion_tokens"], 9);
        assert_eq!(usage, Some((7, 9)));
        assert!(out.ends_with("data: [DONE]\n\n") && s.done);
    }

    #[test]
    fn openai_chunks_to_anthropic_stream() {
        let chunk = |delta: Value, finish: Value| json!({"id": "chatcmpl-1", "model": "g", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        let mut s = FromOpenAiStream::default();
        let mut out = String::new();
        out += &s.event(Some(&chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )));
        out += &s.event(Some(&chunk(json!({"content": "He"}), Value::Null)));
        out += &s.event(Some(&chunk(json!({"content": "llo"}), Value::Null)));
        out += &s.event(Some(&chunk(json!({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]}), Value::Null)));
        out += &s.event(Some(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
            Value::Null,
        )));
        out += &s.event(Some(&chunk(json!({}), json!("tool_calls"))));
        out += &s.event(Some(&json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}})));
        out += &s.event(None);
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(
            out.contains("\"stop_reason\":\"tool_use\"") && out.contains("\"output_tokens\":6")
        );
    }
}
