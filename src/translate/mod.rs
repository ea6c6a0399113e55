//! Translation between client formats and provider formats (SPEC §3 step 8). One file per
//! pair; pure functions and per-stream state machines, no I/O.

pub mod anthropic;
pub mod gemini;

use serde_json::Value;

/// Appends `items` to the last turn when it has the same role (providers that need strictly
/// alternating roles), else starts a turn `{"role": role, key: items}`.
pub fn push_turn(turns: &mut Vec<Value>, role: &str, key: &str, items: Vec<Value>) {
    if items.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut() {
        if last["role"] == role {
            if let Some(existing) = last[key].as_array_mut() {
                existing.extend(items);
                return;
            }
        }
    }
    turns.push(serde_json::json!({"role": role, key: items}));
}

/// The text of an OpenAI-style `content`: a string, or the `text` of its parts joined.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// A provider's stream events as OpenAI chat chunks.
pub enum ToOpenAi {
    Anthropic(anthropic::ToOpenAiStream),
    Gemini(gemini::ToOpenAiStream),
}

impl ToOpenAi {
    /// The OpenAI frames for one upstream event.
    pub fn event(&mut self, data: &Value) -> String {
        match self {
            ToOpenAi::Anthropic(s) => s.event(data).0,
            ToOpenAi::Gemini(s) => s.event(data),
        }
    }

    /// The OpenAI frames for one upstream event given as JSON text (fast paths for plain text).
    pub fn event_str(&mut self, data: &str) -> String {
        match self {
            ToOpenAi::Anthropic(s) => s.event_str(data).0,
            ToOpenAi::Gemini(s) => s.event_str(data),
        }
    }

    /// Frames owed when the upstream stream ends (Gemini sends no terminator).
    pub fn end(&mut self) -> String {
        match self {
            ToOpenAi::Anthropic(_) => String::new(),
            ToOpenAi::Gemini(s) => s.end(),
        }
    }
}

/// Feeds a provider's raw SSE bytes through the parser and a translator in pieces; returns the
/// OpenAI frames (used by tests and benches).
pub fn translate_bytes(t: &mut ToOpenAi, pieces: &[&[u8]]) -> String {
    let mut parser = crate::stream::sse::SseParser::new();
    let mut out = String::new();
    for piece in pieces {
        for (event, _) in parser.feed(piece).unwrap_or_default() {
            if let Some(v) = event
                .data
                .as_deref()
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
            {
                out += &t.event(&v);
            }
        }
    }
    out + &t.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunk ids and timestamps vary per stream; compare everything else.
    fn normalise(s: &str) -> String {
        s.lines()
            .map(|l| {
                match l
                    .strip_prefix("data: ")
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                {
                    Some(mut v) => {
                        if let Some(o) = v.as_object_mut() {
                            o.remove("id");
                            o.remove("created");
                        }
                        format!("data: {v}")
                    }
                    None => l.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn anthropic_input() -> Vec<u8> {
        let evs = [
            r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":3,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Grüße 😀"}}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":4}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        evs.iter()
            .map(|e| {
                let name = serde_json::from_str::<Value>(e).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string();
                format!("event: {name}\ndata: {e}\n\n")
            })
            .collect::<String>()
            .into_bytes()
    }

    fn gemini_input() -> Vec<u8> {
        [
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Grüße "}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"😀"}]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","id":"c1","args":{"a":1}}}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":3}}"#,
        ]
        .iter()
        .map(|e| format!("data: {e}\r\n\r\n"))
        .collect::<String>()
        .into_bytes()
    }

    fn check_every_split(make: impl Fn() -> ToOpenAi, input: &[u8]) {
        let whole = normalise(&translate_bytes(&mut make(), &[input]));
        assert!(whole.contains("[DONE]"), "{whole}");
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(
                normalise(&translate_bytes(&mut make(), &[a, b])),
                whole,
                "split at {at}"
            );
        }
        // Random three-way splits.
        let mut seed = 0x2545F4914F6CDD1Du64;
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed as usize) % (input.len() + 1);
            let j = i + ((seed >> 32) as usize) % (input.len() + 1 - i);
            let parts = [&input[..i], &input[i..j], &input[j..]];
            assert_eq!(
                normalise(&translate_bytes(&mut make(), &parts)),
                whole,
                "splits at {i}, {j}"
            );
        }
    }

    #[test]
    fn anthropic_stream_split_anywhere_translates_the_same() {
        check_every_split(
            || ToOpenAi::Anthropic(anthropic::ToOpenAiStream::new(true)),
            &anthropic_input(),
        );
    }

    #[test]
    fn gemini_stream_split_anywhere_translates_the_same() {
        check_every_split(
            || ToOpenAi::Gemini(gemini::ToOpenAiStream::new("g")),
            &gemini_input(),
        );
    }
}
