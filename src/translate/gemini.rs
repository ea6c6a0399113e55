//! OpenAI Chat Completions → Google Gemini (generateContent / streamGenerateContent?alt=sse) and
//! back, per `shared/notes/protocols.md` §4 and §6.5.
//!
//! Gemini ends function calls with `STOP`: a stream or answer that called a tool finishes with
//! `tool_calls`. Its stream has no terminator, so the gateway adds the final usage chunk and
//! `[DONE]` when it ends. `usageMetadata` is a running snapshot: the last one counts.

use crate::translate::{ChunkWriter, Text};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;

/// A plain text event, read without building a generic JSON value (the hot case).
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default, borrow)]
    candidates: Vec<PeekCandidate<'a>>,
    #[serde(default, rename = "usageMetadata")]
    usage: Option<IgnoredAny>,
    #[serde(default, rename = "promptFeedback")]
    feedback: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct PeekCandidate<'a> {
    #[serde(default, borrow)]
    content: Option<PeekContent<'a>>,
    #[serde(default, rename = "finishReason")]
    finish: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct PeekContent<'a> {
    #[serde(default, borrow)]
    parts: Vec<PeekPart<'a>>,
}

#[derive(Deserialize)]
struct PeekPart<'a> {
    #[serde(default, borrow)]
    text: Option<Text<'a>>,
    #[serde(default)]
    thought: Option<IgnoredAny>,
    #[serde(default, rename = "functionCall")]
    call: Option<IgnoredAny>,
}

fn parts_of(content: &Value) -> Vec<Value> {
    match content {
        Value::String(s) if !s.is_empty() => vec![json!({"text": s})],
        Value::Array(items) => items
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Some(json!({"text": p["text"]})),
                Some("image_url") => {
                    let url = p.pointer("/image_url/url").and_then(Value::as_str)?;
                    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
                    Some(json!({"inlineData": {"mimeType": meta.trim_end_matches(";base64"), "data": data}}))
                }
                _ => None,
            })
            .collect(),
        _ => vec![],
    }
}

/// An OpenAI chat request as a Gemini request (the model goes into the URL).
pub fn request_from_openai(v: &Value) -> Result<Value, String> {
    let msgs = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("`messages` must be a list")?;
    let mut system = Vec::new();
    let mut contents = Vec::new();
    // tool_call_id → function name: tool messages do not carry it.
    let mut names = std::collections::HashMap::new();
    for m in msgs {
        let content = m.get("content").unwrap_or(&Value::Null);
        match m.get("role").and_then(Value::as_str) {
            Some("system") | Some("developer") => {
                system.push(json!({"text": crate::translate::content_text(content)}))
            }
            Some("user") => {
                crate::translate::push_turn(&mut contents, "user", "parts", parts_of(content))
            }
            Some("assistant") => {
                let mut parts = parts_of(content);
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let name = call
                        .pointer("/function/name")
                        .cloned()
                        .unwrap_or(Value::Null);
                    names.insert(call["id"].as_str().unwrap_or("").to_string(), name.clone());
                    let args = call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    parts.push(json!({"functionCall": {"name": name, "args": serde_json::from_str::<Value>(args).unwrap_or(json!({}))}}));
                }
                crate::translate::push_turn(&mut contents, "model", "parts", parts);
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().unwrap_or("");
                let text = crate::translate::content_text(content);
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    _ => json!({"result": text}),
                };
                let name = names.get(id).cloned().unwrap_or(Value::Null);
                crate::translate::push_turn(
                    &mut contents,
                    "user",
                    "parts",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            other => return Err(format!("unknown message role {other:?}")),
        }
    }
    let mut out = json!({"contents": contents});
    if !system.is_empty() {
        out["systemInstruction"] = json!({"parts": system});
    }
    let mut cfg = serde_json::Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("n", "candidateCount"),
        ("seed", "seed"),
    ] {
        if let Some(x) = v.get(from) {
            cfg.insert(to.into(), x.clone());
        }
    }
    if let Some(x) = v
        .get("max_completion_tokens")
        .or_else(|| v.get("max_tokens"))
    {
        cfg.insert("maxOutputTokens".into(), x.clone());
    }
    match v.get("stop") {
        Some(Value::String(s)) => drop(cfg.insert("stopSequences".into(), json!([s]))),
        Some(Value::Array(a)) => drop(cfg.insert("stopSequences".into(), Value::Array(a.clone()))),
        _ => {}
    }
    if !cfg.is_empty() {
        out["generationConfig"] = Value::Object(cfg);
    }
    if let Some(tools) = v.get("tools").and_then(Value::as_array) {
        let decls: Vec<Value> = tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                let mut d = json!({"name": f.get("name")?, "description": f.get("description").cloned().unwrap_or(json!(""))});
                if let Some(p) = f.get("parameters") {
                    d["parametersJsonSchema"] = p.clone();
                }
                Some(d)
            })
            .collect();
        out["tools"] = json!([{"functionDeclarations": decls}]);
    }
    let mode = match v.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .map(|n| json!({"mode": "ANY", "allowedFunctionNames": [n]})),
        _ => None,
    };
    if let Some(m) = mode {
        out["toolConfig"] = json!({"functionCallingConfig": m});
    }
    Ok(out)
}

pub fn finish(reason: &str, called_tool: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called_tool => "tool_calls",
        _ => "stop",
    }
}

pub fn usage_to_openai(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (prompt, completion) = (
        n("promptTokenCount"),
        n("candidatesTokenCount") + n("thoughtsTokenCount"),
    );
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": n("cachedContentTokenCount")},
           "completion_tokens_details": {"reasoning_tokens": n("thoughtsTokenCount")}})
}

/// A Gemini error (`{"error": {"code", "message", "status"}}`) as an OpenAI error body.
pub fn error_to_openai(v: &Value) -> Value {
    let e = v.get("error").unwrap_or(&Value::Null);
    json!({"error": {"message": e.get("message").cloned().unwrap_or(json!("upstream error")),
                     "type": e.get("status").cloned().unwrap_or(json!("api_error")),
                     "param": null, "code": null}})
}

/// Text and tool calls of one candidate; `counter` numbers tool calls across a stream.
fn candidate_delta(c: &Value, counter: &mut u64) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in c
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if p.get("thought") == Some(&Value::Bool(true)) {
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(f) = p.get("functionCall") {
            let id = f.get("id").and_then(Value::as_str).map_or_else(
                || format!("call_{}", uuid::Uuid::new_v4().simple()),
                str::to_string,
            );
            calls.push(json!({"index": *counter, "id": id, "type": "function",
                              "function": {"name": f["name"], "arguments": f.get("args").cloned().unwrap_or(json!({})).to_string()}}));
            *counter += 1;
        }
    }
    (text, calls)
}

/// A Gemini answer as an OpenAI chat completion.
pub fn response_to_openai(v: &Value, model: &str) -> Value {
    let mut counter = 0;
    let c = &v["candidates"][0];
    let (text, calls) = candidate_delta(c, &mut counter);
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        let calls: Vec<Value> = calls
            .into_iter()
            .map(|mut c| {
                c.as_object_mut().map(|o| o.remove("index"));
                c
            })
            .collect();
        message["tool_calls"] = Value::Array(calls);
    }
    let reason = c["finishReason"].as_str().unwrap_or(
        if v.pointer("/promptFeedback/blockReason").is_some() {
            "SAFETY"
        } else {
            "STOP"
        },
    );
    json!({"id": format!("chatcmpl-{}", v["responseId"].as_str().unwrap_or("gemini")), "object": "chat.completion",
           "created": crate::translate::now(), "model": model,
           "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish(reason, counter > 0)}],
           "usage": usage_to_openai(v.get("usageMetadata").unwrap_or(&Value::Null))})
}

/// Gemini stream events → OpenAI chunks (§6.5).
pub struct ToOpenAiStream {
    out: ChunkWriter,
    role_sent: bool,
    tools: u64,
    usage: Value,
    finished: bool,
}

impl ToOpenAiStream {
    pub fn new(model: &str) -> Self {
        ToOpenAiStream {
            out: ChunkWriter::new(
                format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
                json!(model),
            ),
            role_sent: false,
            tools: 0,
            usage: Value::Null,
            finished: false,
        }
    }

    /// The frames for one event given as JSON text: plain text takes a fast path that builds
    /// no generic JSON value; everything else goes through `event`.
    pub fn event_str(&mut self, data: &str) -> String {
        if self.role_sent {
            if let Ok(p) = serde_json::from_str::<Peek>(data) {
                let plain = p.usage.is_none()
                    && p.feedback.is_none()
                    && p.error.is_none()
                    && p.candidates.len() == 1
                    && p.candidates[0].finish.is_none();
                if let (true, Some(content)) =
                    (plain, p.candidates.first().and_then(|c| c.content.as_ref()))
                {
                    if content
                        .parts
                        .iter()
                        .all(|x| x.thought.is_none() && x.call.is_none() && x.text.is_some())
                    {
                        // One part (the usual case) is sent as it is, without a copy.
                        let text: Cow<str> = match &content.parts[..] {
                            [one] => Cow::Borrowed(one.text.as_ref().map_or("", |t| &t.0)),
                            parts => parts
                                .iter()
                                .filter_map(|x| x.text.as_ref())
                                .map(|t| &*t.0)
                                .collect::<String>()
                                .into(),
                        };
                        if text.is_empty() {
                            return String::new();
                        }
                        return self.out.text(&text);
                    }
                }
            }
        }
        match serde_json::from_str::<Value>(data) {
            Ok(v) => self.event(&v),
            Err(_) => String::new(),
        }
    }

    pub fn event(&mut self, v: &Value) -> String {
        let mut out = String::new();
        if let Some(e) = v.get("error") {
            self.finished = true;
            return ChunkWriter::error(e.get("message"), e.get("status"));
        }
        if !self.role_sent {
            self.role_sent = true;
            out += &self
                .out
                .chunk(json!({"role": "assistant", "content": ""}), Value::Null);
        }
        if let Some(u) = v.get("usageMetadata") {
            self.usage = u.clone();
        }
        let c = &v["candidates"][0];
        let (text, calls) = candidate_delta(c, &mut self.tools);
        if !text.is_empty() {
            out += &self.out.chunk(json!({"content": text}), Value::Null);
        }
        if !calls.is_empty() {
            out += &self.out.chunk(json!({"tool_calls": calls}), Value::Null);
        }
        let reason = c
            .get("finishReason")
            .and_then(Value::as_str)
            .or_else(|| v.pointer("/promptFeedback/blockReason").map(|_| "SAFETY"));
        if let Some(r) = reason {
            out += &self.out.chunk(json!({}), json!(finish(r, self.tools > 0)));
            self.finished = true;
        }
        out
    }

    /// At the end of the upstream stream: the usage chunk and `[DONE]` if it finished.
    pub fn end(&mut self) -> String {
        if !self.finished {
            return String::new();
        }
        let u = usage_to_openai(&self.usage);
        self.out.usage(u) + "data: [DONE]\n\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_request_to_gemini() {
        let v = json!({"messages": [
            {"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}],
            "max_tokens": 10, "stop": "X", "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}});
        let g = request_from_openai(&v).unwrap();
        assert_eq!(g["systemInstruction"], json!({"parts": [{"text": "sys"}]}));
        assert_eq!(
            g["contents"][1],
            json!({"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]})
        );
        assert_eq!(
            g["contents"][2],
            json!({"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"result": "42"}}}]})
        );
        assert_eq!(
            g["generationConfig"],
            json!({"maxOutputTokens": 10, "stopSequences": ["X"]})
        );
        assert_eq!(
            g["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["f"]})
        );
        assert_eq!(
            g["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"],
            json!({"type": "object"})
        );
    }

    #[test]
    fn stream_with_a_tool_call_ending_in_stop_finishes_with_tool_calls() {
        let mut s = ToOpenAiStream::new("gemini-x");
        let mut out = s.event(
            &json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Let me"}]}}]}),
        );
        out += &s.event(&json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"q": 1}}}]}}]}));
        out += &s.event(&json!({"candidates": [{"content": {"parts": [{"text": ""}]}, "finishReason": "STOP"}],
                               "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3}}));
        out += &s.end();
        let chunks = crate::translate::chunks_of(&out);
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Let me");
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0]["index"],
            0
        );
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[4]["usage"]["total_tokens"], 8);
        assert!(out.ends_with("data: [DONE]\n\n"));
    }
}
