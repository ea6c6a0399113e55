//! OpenAI Chat Completions → AWS Bedrock Converse / ConverseStream and back, per
//! `shared/notes/protocols.md` §5 and §6.5.
//!
//! Stream events arrive as binary frames (see `stream::eventstream`), each handed here as
//! `{"<eventType>": payload}`. Text deltas come without a block start; a tool call opens with
//! `contentBlockStart.toolUse`. `messageStop` carries the stop reason but the usage comes after
//! it, in `metadata`: the finish is held until then.

use crate::translate::{ChunkWriter, Text};
use serde::Deserialize;
use serde_json::{json, Value};

/// A plain text delta, read without building a generic JSON value (the hot case).
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "contentBlockDelta", borrow)]
    delta: Option<PeekBlockDelta<'a>>,
}

#[derive(Deserialize)]
struct PeekBlockDelta<'a> {
    #[serde(borrow)]
    delta: PeekText<'a>,
}

#[derive(Deserialize)]
struct PeekText<'a> {
    #[serde(borrow)]
    text: Option<Text<'a>>,
}

const IMAGE_FORMATS: [&str; 4] = ["png", "jpeg", "gif", "webp"];

fn content_blocks(content: &Value) -> Result<Vec<Value>, String> {
    Ok(match content {
        Value::String(s) if !s.is_empty() => vec![json!({"text": s})],
        Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = p["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(json!({"text": t}));
                        }
                    }
                    Some("image_url") => {
                        let url = p.pointer("/image_url/url").and_then(Value::as_str);
                        let Some((meta, data)) = url
                            .and_then(|u| u.strip_prefix("data:"))
                            .and_then(|u| u.split_once(','))
                        else {
                            return Err("bedrock takes images as `data:` URLs only".into());
                        };
                        let format = meta
                            .trim_end_matches(";base64")
                            .trim_start_matches("image/")
                            .replace("jpg", "jpeg");
                        if !IMAGE_FORMATS.contains(&format.as_str()) {
                            return Err(format!("bedrock does not take `{format}` images"));
                        }
                        out.push(json!({"image": {"format": format, "source": {"bytes": data}}}));
                    }
                    _ => {}
                }
            }
            out
        }
        _ => vec![],
    })
}

/// OpenAI `tool_calls` as `toolUse` blocks (arguments that are not JSON become `{}`).
fn tool_use_blocks(calls: Option<&Value>) -> Vec<Value> {
    calls
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|call| {
            let args = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}");
            json!({"toolUse": {"toolUseId": call["id"],
                "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}))}})
        })
        .collect()
}

/// An OpenAI chat request as a Converse request (the model goes into the URL).
pub fn request_from_openai(v: &Value) -> Result<Value, String> {
    let (system, messages) = crate::translate::turns(
        v,
        &crate::translate::Blocks {
            text: |t| json!({"text": t}),
            user: content_blocks,
            tool_calls: tool_use_blocks,
            tool_result: |id, text| {
                let result = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => json!({"json": o}),
                    _ => json!({"text": text}),
                };
                json!({"toolResult": {"toolUseId": id, "content": [result], "status": "success"}})
            },
        },
    )?;
    let mut out = json!({"messages": messages});
    if !system.is_empty() {
        out["system"] = Value::Array(system);
    }
    let mut cfg = serde_json::Map::new();
    if let Some(x) = v
        .get("max_completion_tokens")
        .or_else(|| v.get("max_tokens"))
    {
        cfg.insert("maxTokens".into(), x.clone());
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(x) = v.get(from) {
            cfg.insert(to.into(), x.clone());
        }
    }
    match v.get("stop") {
        Some(Value::String(s)) => drop(cfg.insert("stopSequences".into(), json!([s]))),
        Some(Value::Array(a)) => drop(cfg.insert("stopSequences".into(), Value::Array(a.clone()))),
        _ => {}
    }
    if !cfg.is_empty() {
        out["inferenceConfig"] = Value::Object(cfg);
    }
    if let Some(tools) = v.get("tools").and_then(Value::as_array) {
        let specs: Vec<Value> = tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                let schema = f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                let mut spec = json!({"name": f.get("name")?, "inputSchema": {"json": schema}});
                if let Some(d) = f.get("description") {
                    spec["description"] = d.clone();
                }
                Some(json!({"toolSpec": spec}))
            })
            .collect();
        let mut config = json!({"tools": specs});
        // Converse has no "none": the tools stay declared (earlier turns may use them).
        let choice = match v.get("tool_choice") {
            Some(Value::String(s)) if s == "required" => Some(json!({"any": {}})),
            Some(Value::String(s)) if s == "auto" => Some(json!({"auto": {}})),
            Some(Value::Object(o)) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .map(|n| json!({"tool": {"name": n}})),
            _ => None,
        };
        if let Some(c) = choice {
            config["toolChoice"] = c;
        }
        if !specs_empty(&config) {
            out["toolConfig"] = config;
        }
    }
    if let Some(u) = v.get("user").and_then(Value::as_str) {
        out["requestMetadata"] = json!({"user": u});
    }
    Ok(out)
}

fn specs_empty(config: &Value) -> bool {
    config["tools"].as_array().is_none_or(Vec::is_empty)
}

pub fn finish(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI usage from Converse usage (input tokens exclude the cache, as with Anthropic).
pub fn usage_to_openai(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (read, write) = (n("cacheReadInputTokens"), n("cacheWriteInputTokens"));
    let prompt = n("inputTokens") + read + write;
    let completion = n("outputTokens");
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": read}})
}

/// A Converse answer as an OpenAI chat completion.
pub fn response_to_openai(v: &Value, model: &str) -> Value {
    let blocks = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let text: String = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
    let calls: Vec<Value> = blocks
        .iter()
        .filter_map(|b| b.get("toolUse"))
        .map(|t| json!({"id": t["toolUseId"], "type": "function",
                        "function": {"name": t["name"], "arguments": t.get("input").cloned().unwrap_or(json!({})).to_string()}}))
        .collect();
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({"id": format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()), "object": "chat.completion",
           "created": crate::translate::now(), "model": model,
           "choices": [{"index": 0, "message": message, "logprobs": null,
                        "finish_reason": finish(v["stopReason"].as_str().unwrap_or("end_turn"))}],
           "usage": usage_to_openai(v.get("usage").unwrap_or(&Value::Null))})
}

/// A Bedrock error (`{"message"}` plus the `x-amzn-ErrorType` header) as an OpenAI error body.
pub fn error_to_openai(v: &Value, error_type: Option<&str>) -> Value {
    let message = v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or("upstream error");
    let kind = error_type
        .map(|t| t.split(':').next().unwrap_or(t))
        .filter(|t| !t.is_empty())
        .unwrap_or("api_error");
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

/// ConverseStream events → OpenAI chunks.
pub struct ToOpenAiStream {
    out: ChunkWriter,
    role_sent: bool,
    /// Tool calls opened so far (OpenAI's `index`), and the open Bedrock block's tool index.
    tools: u64,
    open_tool: Option<(u64, u64)>,
    stop: Option<&'static str>,
    pub done: bool,
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
            open_tool: None,
            stop: None,
            done: false,
        }
    }

    fn role(&mut self, out: &mut String) {
        if !self.role_sent {
            self.role_sent = true;
            *out += &self
                .out
                .chunk(json!({"role": "assistant", "content": ""}), Value::Null);
        }
    }

    /// The frames for one event given as JSON text: text deltas take a fast path that builds
    /// no generic JSON value.
    pub fn event_str(&mut self, data: &str) -> String {
        if self.role_sent {
            if let Ok(Peek {
                delta:
                    Some(PeekBlockDelta {
                        delta:
                            PeekText {
                                text: Some(Text(text)),
                            },
                    }),
            }) = serde_json::from_str::<Peek>(data)
            {
                if text.is_empty() {
                    return String::new();
                }
                return self.out.text(&text);
            }
        }
        match serde_json::from_str::<Value>(data) {
            Ok(v) => self.event(&v),
            Err(_) => String::new(),
        }
    }

    pub fn event(&mut self, v: &Value) -> String {
        let mut out = String::new();
        let Some((kind, body)) = v.as_object().and_then(|o| o.iter().next()) else {
            return out;
        };
        match kind.as_str() {
            "messageStart" => self.role(&mut out),
            "contentBlockStart" => {
                self.role(&mut out);
                if let Some(t) = body.pointer("/start/toolUse") {
                    let block = body["contentBlockIndex"].as_u64().unwrap_or(0);
                    self.open_tool = Some((block, self.tools));
                    out += &self.out.chunk(
                        json!({"tool_calls": [{"index": self.tools, "id": t["toolUseId"], "type": "function",
                                               "function": {"name": t["name"], "arguments": ""}}]}),
                        Value::Null,
                    );
                    self.tools += 1;
                }
            }
            "contentBlockDelta" => {
                self.role(&mut out);
                let d = &body["delta"];
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    if !t.is_empty() {
                        out += &self.out.chunk(json!({"content": t}), Value::Null);
                    }
                } else if let Some(part) = d.pointer("/toolUse/input").and_then(Value::as_str) {
                    let block = body["contentBlockIndex"].as_u64().unwrap_or(0);
                    if let (false, Some((b, idx))) = (part.is_empty(), self.open_tool) {
                        if b == block {
                            out += &self.out.chunk(
                                json!({"tool_calls": [{"index": idx, "function": {"arguments": part}}]}),
                                Value::Null,
                            );
                        }
                    }
                }
            }
            "contentBlockStop" => self.open_tool = None,
            "messageStop" => {
                self.stop = Some(finish(body["stopReason"].as_str().unwrap_or("end_turn")));
            }
            "metadata" => {
                let u = usage_to_openai(body.get("usage").unwrap_or(&Value::Null));
                out += &self.finish();
                out += &self.out.usage(u);
                out += "data: [DONE]\n\n";
                self.done = true;
            }
            "exception" => {
                out += &ChunkWriter::error(body.get("message"), body.get("type"));
                self.done = true;
            }
            _ => {}
        }
        out
    }

    fn finish(&mut self) -> String {
        match self.stop.take() {
            Some(f) => self.out.chunk(json!({}), json!(f)),
            None => String::new(),
        }
    }

    /// At the end of the upstream stream: a finish held for a `metadata` that never came.
    pub fn end(&mut self) -> String {
        if self.done || self.stop.is_none() {
            return String::new();
        }
        self.done = true;
        self.finish() + "data: [DONE]\n\n"
    }
}
