//! Where the text of OpenAI-format requests and responses lives, for guardrails and token
//! estimates: chat `messages[].content` (a string or text parts), embeddings and Responses
//! `input` (a string, strings, or items with content), chat `choices[].message.content` and
//! Responses `output[].content[].text`.

use serde_json::Value;

/// Calls `f` on every text string of a request body.
pub fn request_texts_mut(body: &mut Value, f: &mut dyn FnMut(&mut String)) {
    if let Some(messages) = body.get_mut("messages").and_then(Value::as_array_mut) {
        for m in messages {
            if let Some(c) = m.get_mut("content") {
                content_mut(c, f);
            }
        }
    }
    if let Some(input) = body.get_mut("input") {
        match input {
            Value::String(s) => f(s),
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::String(s) => f(s),
                        Value::Object(_) => {
                            if let Some(c) = item.get_mut("content") {
                                content_mut(c, f);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(Value::String(s)) = body.get_mut("instructions") {
        f(s);
    }
    // Anthropic's system prompt: a string or text blocks.
    if let Some(system) = body.get_mut("system") {
        content_mut(system, f);
    }
}

/// Calls `f` on every text string of a response body.
pub fn response_texts_mut(body: &mut Value, f: &mut dyn FnMut(&mut String)) {
    if let Some(choices) = body.get_mut("choices").and_then(Value::as_array_mut) {
        for c in choices {
            if let Some(content) = c.pointer_mut("/message/content") {
                content_mut(content, f);
            }
        }
    }
    if let Some(output) = body.get_mut("output").and_then(Value::as_array_mut) {
        for item in output {
            if let Some(c) = item.get_mut("content") {
                content_mut(c, f);
            }
        }
    }
}

fn content_mut(content: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match content {
        Value::String(s) => f(s),
        Value::Array(parts) => {
            for p in parts {
                if let Some(Value::String(s)) = p.get_mut("text") {
                    f(s);
                }
            }
        }
        _ => {}
    }
}

/// All request text joined (read-only use).
pub fn request_text(body: &Value) -> String {
    let mut copy = body.clone();
    let mut out = String::new();
    request_texts_mut(&mut copy, &mut |s| {
        out.push_str(s);
        out.push('\n');
    });
    out
}

/// The estimate used for `max_input_tokens`: one token per 4 characters.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_texts_in_every_shape() {
        let body = json!({"messages": [{"role": "user", "content": "a"},
                                       {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image_url", "image_url": {"url": "x"}}]}],
                          "input": ["c", {"role": "user", "content": "d"}], "instructions": "e"});
        assert_eq!(request_text(&body), "a\nb\nc\nd\ne\n");
        let mut resp = json!({"choices": [{"message": {"content": "x"}}], "output": [{"content": [{"type": "output_text", "text": "y"}]}]});
        let mut seen = vec![];
        response_texts_mut(&mut resp, &mut |s| seen.push(s.clone()));
        assert_eq!(seen, vec!["x", "y"]);
    }
}
