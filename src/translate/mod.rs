//! Translation between client formats and provider formats (SPEC §3 step 8). One file per
//! pair; pure functions and per-stream state machines, no I/O.

pub mod anthropic;
pub mod bedrock;
pub mod gemini;

use crate::providers::{Translation, Wire};
use crate::proxy::error::ClientFormat;
use crate::stream::{eventstream, sse::SseParser};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

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

/// How a provider whose conversation is `{"role": "user"|"assistant", "content": [blocks]}`
/// (Anthropic, Bedrock) writes each kind of block.
pub struct Blocks {
    pub text: fn(&str) -> Value,
    /// A user message's content.
    pub user: fn(&Value) -> Result<Vec<Value>, String>,
    /// An assistant message's `tool_calls`.
    pub tool_calls: fn(Option<&Value>) -> Vec<Value>,
    /// A tool message: its `tool_call_id` and text.
    pub tool_result: fn(&Value, String) -> Value,
}

/// An OpenAI chat request's system blocks and its conversation in such a provider's turns:
/// same-role messages merged, tool results in a user turn, and a user turn first.
pub fn turns(v: &Value, b: &Blocks) -> Result<(Vec<Value>, Vec<Value>), String> {
    let msgs = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("`messages` must be a list")?;
    if v.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err("`n` > 1 is not supported by this provider".into());
    }
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    for m in msgs {
        let content = m.get("content").unwrap_or(&Value::Null);
        match m.get("role").and_then(Value::as_str) {
            Some("system") | Some("developer") => {
                let t = content_text(content);
                if !t.is_empty() {
                    system.push((b.text)(&t));
                }
            }
            Some("user") => push_turn(&mut turns, "user", "content", (b.user)(content)?),
            Some("assistant") => {
                let mut blocks = Vec::new();
                let t = content_text(content);
                if !t.trim().is_empty() {
                    blocks.push((b.text)(&t));
                }
                blocks.extend((b.tool_calls)(m.get("tool_calls")));
                push_turn(&mut turns, "assistant", "content", blocks);
            }
            Some("tool") => {
                let block = (b.tool_result)(&m["tool_call_id"], content_text(content));
                push_turn(&mut turns, "user", "content", vec![block]);
            }
            other => return Err(format!("unknown message role {other:?}")),
        }
    }
    if turns.first().is_some_and(|m| m["role"] == "assistant") {
        turns.insert(
            0,
            serde_json::json!({"role": "user", "content": [(b.text)(".")]}),
        );
    }
    Ok((system, turns))
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

/// Seconds since the epoch (OpenAI's `created`).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What goes between a frame's fixed pieces.
pub(crate) enum Part<'a> {
    /// A JSON string literal.
    Quoted(&'a str),
    Number(u64),
    Json(&'a Value),
}

impl Part<'_> {
    /// Room for the part as it usually is: a string without escapes.
    fn room(&self) -> usize {
        match self {
            Part::Quoted(s) => s.len() + 2,
            Part::Number(_) => 20,
            Part::Json(v) => v.as_str().map_or(4, str::len) + 2,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a `Vec` cannot fail.
        match self {
            Part::Quoted(s) => drop(serde_json::to_writer(&mut *out, s)),
            Part::Number(n) => drop(write!(out, "{n}")),
            Part::Json(v) => drop(serde_json::to_writer(&mut *out, v)),
        }
    }
}

/// A frame: `pieces` with `parts` between them, in one allocation when no part needs escapes
/// (the hot case, a text delta, is written once and sent).
pub(crate) fn frame(pieces: &[&str], parts: &[Part]) -> String {
    let room =
        pieces.iter().map(|p| p.len()).sum::<usize>() + parts.iter().map(Part::room).sum::<usize>();
    let mut out = Vec::with_capacity(room);
    for (i, piece) in pieces.iter().enumerate() {
        out.extend_from_slice(piece.as_bytes());
        if let Some(part) = parts.get(i) {
            part.write(&mut out);
        }
    }
    // Only str and serde_json output went in: the check never fails.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A JSON string that borrows from the event's text when it has no escapes. serde borrows a
/// `Cow<str>` field marked `borrow`, but one inside an `Option` is always copied: the peek
/// structs hold `Option<Text>` instead.
#[derive(Deserialize)]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// The text of a plain OpenAI chat chunk, in pieces around its id, created, model and content.
const TEXT_CHUNK: [&str; 5] = [
    "data: {\"id\":",
    ",\"object\":\"chat.completion.chunk\",\"created\":",
    ",\"model\":",
    ",\"choices\":[{\"index\":0,\"delta\":{\"content\":",
    "},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
];

/// The OpenAI chat stream a translator writes: its id, model and time, and its frames.
pub struct ChunkWriter {
    pub id: String,
    pub model: Value,
    pub created: u64,
}

impl ChunkWriter {
    pub fn new(id: String, model: Value) -> Self {
        ChunkWriter {
            id,
            model,
            created: now(),
        }
    }

    /// A chunk with one choice.
    pub fn chunk(&self, delta: Value, finish: Value) -> String {
        let c = serde_json::json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                       "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}], "usage": null});
        format!("data: {c}\n\n")
    }

    /// A plain text delta, written without building a JSON value (the hot case), in one
    /// allocation when the text and the model need no escapes.
    pub fn text(&self, text: &str) -> String {
        use Part::*;
        let parts = [
            Quoted(&self.id),
            Number(self.created),
            Json(&self.model),
            Quoted(text),
        ];
        frame(&TEXT_CHUNK, &parts)
    }

    /// The usage chunk (no choices).
    pub fn usage(&self, usage: Value) -> String {
        let c = serde_json::json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                   "model": self.model, "choices": [], "usage": usage});
        format!("data: {c}\n\n")
    }

    /// An in-band error event, as the openai SDK reads one.
    pub fn error(message: Option<&Value>, kind: Option<&Value>) -> String {
        let e = serde_json::json!({"error": {"message": message.cloned().unwrap_or_else(|| "upstream error".into()),
                                             "type": kind.cloned().unwrap_or_else(|| "api_error".into()),
                                             "param": null, "code": null}});
        format!("data: {e}\n\n")
    }
}

/// A provider's stream events as OpenAI chat chunks.
pub enum ToOpenAi {
    Anthropic(anthropic::ToOpenAiStream),
    Gemini(gemini::ToOpenAiStream),
    Bedrock(bedrock::ToOpenAiStream),
}

impl ToOpenAi {
    /// The OpenAI frames for one upstream event given as JSON text (fast paths for plain text).
    pub fn event_str(&mut self, data: &str) -> String {
        match self {
            ToOpenAi::Anthropic(s) => s.event_str(data).0,
            ToOpenAi::Gemini(s) => s.event_str(data),
            ToOpenAi::Bedrock(s) => s.event_str(data),
        }
    }

    /// Frames owed when the upstream stream ends (Gemini sends no terminator; Bedrock's usage
    /// may never come).
    pub fn end(&mut self) -> String {
        match self {
            ToOpenAi::Anthropic(_) => String::new(),
            ToOpenAi::Gemini(s) => s.end(),
            ToOpenAi::Bedrock(s) => s.end(),
        }
    }
}

/// A stream that cannot be read (bad framing, not UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed;

enum Framing {
    Sse(SseParser),
    EventStream(eventstream::Decoder),
}

/// The first stage of a translated stream: a provider's raw bytes (SSE or AWS event-stream)
/// in, OpenAI chat chunks out. Holds nothing beyond the current event.
pub struct ToOpenAiStage {
    framing: Framing,
    machine: ToOpenAi,
}

impl ToOpenAiStage {
    /// The stage for a provider's format; `None` when it already speaks OpenAI.
    pub fn new(upstream: Wire, model: &str) -> Option<Self> {
        let (framing, machine) = match upstream {
            Wire::OpenAi => return None,
            Wire::Anthropic => (
                Framing::Sse(SseParser::new()),
                ToOpenAi::Anthropic(anthropic::ToOpenAiStream::new(true)),
            ),
            Wire::Gemini => (
                Framing::Sse(SseParser::new()),
                ToOpenAi::Gemini(gemini::ToOpenAiStream::new(model)),
            ),
            Wire::Bedrock => (
                Framing::EventStream(eventstream::Decoder::new()),
                ToOpenAi::Bedrock(bedrock::ToOpenAiStream::new(model)),
            ),
        };
        Some(ToOpenAiStage { framing, machine })
    }

    /// The OpenAI frames completed by `chunk`.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<String, Malformed> {
        let mut out = String::new();
        match &mut self.framing {
            Framing::Sse(p) => {
                for (event, _) in p.feed(chunk).map_err(|_| Malformed)? {
                    if let Some(d) = event.data.as_deref() {
                        out += &self.machine.event_str(d);
                    }
                }
            }
            Framing::EventStream(d) => {
                for msg in d.feed(chunk).map_err(|_| Malformed)? {
                    out += &self
                        .machine
                        .event_str(&msg.to_json().map_err(|_| Malformed)?);
                }
            }
        }
        Ok(out)
    }

    /// What is owed when the upstream ends.
    pub fn end(&mut self) -> String {
        self.machine.end()
    }
}

/// (input, output) tokens from an OpenAI-format `usage` object.
pub fn usage_of(v: &Value) -> Option<(u64, u64)> {
    v.get("usage").and_then(tokens)
}

/// (input, output) tokens of a `usage` object, in OpenAI's or Anthropic's names.
fn tokens(u: &Value) -> Option<(u64, u64)> {
    Counts::deserialize(u).ok().map(|c| c.pair())
}

/// `usage_of` for a raw JSON answer, without building or decoding the document: a structural
/// scan finds the top-level `usage` member, and only its value is parsed. An answer that is
/// not a complete object (unbalanced, or anything but whitespace after it) has no usage.
pub fn usage_in(body: &[u8]) -> Option<(u64, u64)> {
    let at = top_level_usage(body)?;
    let mut de = serde_json::Deserializer::from_slice(&body[at..]);
    Some(Option::<Counts>::deserialize(&mut de).ok()??.pair())
}

/// Where the value of a JSON object's top-level `usage` member starts, once the whole object
/// has been seen to close. Strings are skipped, nothing is decoded: a key spelt
/// with escapes is not recognised, which no provider does.
fn top_level_usage(body: &[u8]) -> Option<usize> {
    let ws = |mut i: usize| {
        while body.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut i = ws(0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    let (mut depth, mut expect_key, mut found) = (0usize, false, None);
    while let Some(&b) = body.get(i) {
        if !STRUCTURAL[usize::from(b)] {
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                let end = string_end(body, i + 1)?;
                if depth == 1 && expect_key {
                    expect_key = false;
                    if &body[i + 1..end] == b"usage" {
                        let colon = ws(end + 1);
                        if body.get(colon) != Some(&b':') {
                            return None;
                        }
                        found = Some(ws(colon + 1));
                    }
                }
                i = end;
            }
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return if ws(i + 1) == body.len() { found } else { None };
                }
            }
            b',' if depth == 1 => expect_key = true,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The bytes `top_level_usage` stops at; it steps over all others one table lookup apiece.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut k = 0;
    while k < 6 {
        t[b"\"{}[],"[k] as usize] = true;
        k += 1;
    }
    t
};

/// The index of the quote that closes the JSON string whose contents start at `from`.
/// `memchr2` finds the next quote or backslash: most of a real answer's bytes are in its text,
/// one long string. (On the benchmark's short answer the scan went from ~3,500 to ~2,700
/// instructions under callgrind; a longer text gains more.)
fn string_end(body: &[u8], mut from: usize) -> Option<usize> {
    loop {
        from += memchr::memchr2(b'"', b'\\', body.get(from..)?)?;
        match body[from] {
            b'"' => return Some(from),
            _ => from += 2, // a backslash: skip the escaped character, whatever it is
        }
    }
}

/// A `usage` object's token counts, read from raw JSON or from a `Value` alike. Anything but
/// an object is an error; a count that is not a whole number counts as absent.
#[derive(Default)]
struct Counts {
    prompt: Count,
    input: Count,
    completion: Count,
    output: Count,
}

impl Counts {
    /// (input, output), in OpenAI's names first, then Anthropic's.
    fn pair(&self) -> (u64, u64) {
        let input = self.prompt.0.or(self.input.0).unwrap_or(0);
        let output = self.completion.0.or(self.output.0).unwrap_or(0);
        (input, output)
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Counts, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Field {
            PromptTokens,
            InputTokens,
            CompletionTokens,
            OutputTokens,
            #[serde(other)]
            Other,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Counts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a usage object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Counts, A::Error> {
                let mut c = Counts::default();
                while let Some(field) = a.next_key::<Field>()? {
                    let slot = match field {
                        Field::PromptTokens => &mut c.prompt,
                        Field::InputTokens => &mut c.input,
                        Field::CompletionTokens => &mut c.completion,
                        Field::OutputTokens => &mut c.output,
                        Field::Other => {
                            a.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = a.next_value()?;
                }
                Ok(c)
            }
        }
        d.deserialize_map(V)
    }
}

/// A token count: any JSON value, kept only if it is a whole number (`Value::as_u64`).
#[derive(Default)]
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E>(self, n: u64) -> Result<Count, E> {
                Ok(Count(Some(n)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Count, E> {
                Ok(Count(u64::try_from(n).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_unit<E>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Count, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A whole answer in OpenAI chat's shape (the middle of every translation).
pub fn response_to_openai<'v>(upstream: Wire, v: &'v Value, model: &str) -> Cow<'v, Value> {
    match upstream {
        Wire::OpenAi => Cow::Borrowed(v),
        Wire::Anthropic => Cow::Owned(anthropic::response_to_openai(v)),
        Wire::Gemini => Cow::Owned(gemini::response_to_openai(v, model)),
        Wire::Bedrock => Cow::Owned(bedrock::response_to_openai(v, model)),
    }
}

/// An OpenAI chat answer in the client's format.
pub fn response_for_client(client: ClientFormat, openai: Cow<'_, Value>) -> Value {
    match client {
        ClientFormat::OpenAi => openai.into_owned(),
        ClientFormat::Anthropic => anthropic::response_from_openai(&openai),
    }
}

/// An upstream error body (`Null` if it was not JSON) in the client's shape. `error_type` is
/// Bedrock's `x-amzn-ErrorType` header.
pub fn error(t: Translation, status: u16, v: &Value, error_type: Option<&str>) -> Value {
    let openai = match t.upstream {
        Wire::OpenAi => Cow::Borrowed(v),
        Wire::Anthropic => Cow::Owned(anthropic::error_to_openai(status, v)),
        Wire::Gemini => Cow::Owned(gemini::error_to_openai(v)),
        Wire::Bedrock => Cow::Owned(bedrock::error_to_openai(v, error_type)),
    };
    match t.client {
        ClientFormat::OpenAi if openai.pointer("/error/message").is_some() => openai.into_owned(),
        ClientFormat::OpenAi => anthropic::error_to_openai(status, &openai),
        ClientFormat::Anthropic => anthropic::error_to_anthropic(status, &openai),
    }
}

/// The chunks of OpenAI SSE frames, `[DONE]` left out (for tests).
#[cfg(test)]
pub(crate) fn chunks_of(sse: &str) -> Vec<Value> {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("a JSON chunk"))
        .collect()
}

/// Feeds a provider's raw bytes through a stage in pieces; returns the OpenAI frames (used by
/// tests and benches).
pub fn translate_bytes(upstream: Wire, pieces: &[&[u8]]) -> String {
    let mut stage = ToOpenAiStage::new(upstream, "m").expect("a translating format");
    let mut out = String::new();
    for piece in pieces {
        out += &stage.feed(piece).unwrap_or_default();
    }
    out + &stage.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_chunk_escapes_its_text_model_and_id_and_fits_its_allocation() {
        let text = "say \"hi\"\n\tthen é😀 \\ \u{1}";
        let w = ChunkWriter {
            id: "chatcmpl-\"1\"".into(),
            model: Value::from("m\"odel"),
            created: u64::MAX,
        };
        let frame = w.text(text);
        let c = &chunks_of(&frame)[0];
        assert_eq!(c["choices"][0]["delta"]["content"], text);
        assert_eq!(c["model"], "m\"odel");
        assert_eq!(c["id"], "chatcmpl-\"1\"");
        assert_eq!(c["created"], u64::MAX);
        assert!(frame.ends_with("}\n\n"));
        let plain = ChunkWriter::new("chatcmpl-1".into(), Value::from("gpt-4o")).text("hello");
        assert!(
            plain.capacity() - plain.len() <= 20,
            "{} of {}",
            plain.len(),
            plain.capacity()
        );
    }

    #[test]
    fn usage_in_reads_the_top_level_usage_of_a_raw_answer() {
        let openai = br#"{"id":"x","choices":[{"message":{"content":"\"usage\": {}"}}],
            "usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        assert_eq!(usage_in(openai), Some((7, 3)));
        let anthropic = br#"{"content":[],"usage":{"input_tokens":5,"output_tokens":2}}"#;
        assert_eq!(usage_in(anthropic), Some((5, 2)));
        assert_eq!(
            usage_in(br#"{"usage":{"prompt_tokens":"7"}}"#),
            Some((0, 0))
        );
        assert_eq!(usage_in(br#"{"choices":[],"usage":null}"#), None);
        assert_eq!(usage_in(br#"{"usage":3}"#), None);
        assert_eq!(
            usage_in(br#"{"usage":{"prompt_tokens":1}"#),
            None,
            "truncated"
        );
        assert_eq!(usage_in(b"not json"), None);
        assert_eq!(usage_in(b"  "), None);
        assert_eq!(
            usage_in(br#"{"usage":{"prompt_tokens":1}}} "#),
            None,
            "closes twice"
        );
        assert_eq!(
            usage_in(br#"{"usage":{"prompt_tokens":1}} x"#),
            None,
            "trailing"
        );
        assert_eq!(usage_in(br#"{"usage":{"prompt_tokens":1}}"#), Some((1, 0)));
        // Escapes inside strings: an escaped quote or backslash does not end the string, and
        // a string cut off inside an escape leaves no answer.
        assert_eq!(
            usage_in(br#"{"t":"a\\\"},usage\\","usage":{"input_tokens":4}}"#),
            Some((4, 0))
        );
        assert_eq!(usage_in(br#"{"usage":{"input_tokens":4},"t":"\"#), None);
        assert_eq!(usage_in(br#"{"usage":{"input_tokens":4},"t":"\""#), None);
        assert_eq!(
            usage_in(br#"{"a":"\\","usage" : {"input_tokens":2}}"#),
            Some((2, 0))
        );
        // Only the top level counts: a nested `usage` key, or the word as a value, is not it.
        let nested = br#"{"x":{"usage":{"prompt_tokens":9}},"y":["usage",{"usage":1}],
            "z":"usage","usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        assert_eq!(usage_in(nested), Some((3, 4)));
        assert_eq!(usage_in(br#"{"x":{"usage":{"prompt_tokens":9}}}"#), None);
        assert_eq!(usage_in(br#"{"x":"unterminated}"#), None);
        // Counts that are not whole numbers count as absent, as `usage_of` reads them.
        let odd = br#"{"usage":{"prompt_tokens":-1,"input_tokens":4,"completion_tokens":[1],
            "output_tokens":{"n":1},"total_tokens":2.5,"details":{"cached":1}}}"#;
        assert_eq!(usage_in(odd), Some((4, 0)));
        let v: Value = serde_json::from_slice(odd).unwrap();
        assert_eq!(usage_of(&v), usage_in(odd));
        assert_eq!(usage_in(br#"{"usage":{}}"#), Some((0, 0)));
        assert_eq!(usage_in(br#"{"usage":[1,2,3,4]}"#), None, "not an object");
        assert_eq!(usage_of(&serde_json::json!({"usage": [1, 2]})), None);
    }

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

    fn check_every_split(wire: Wire, input: &[u8]) {
        let whole = normalise(&translate_bytes(wire, &[input]));
        assert!(whole.contains("[DONE]"), "{whole}");
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(
                normalise(&translate_bytes(wire, &[a, b])),
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
                normalise(&translate_bytes(wire, &parts)),
                whole,
                "splits at {i}, {j}"
            );
        }
    }

    #[test]
    fn anthropic_stream_split_anywhere_translates_the_same() {
        check_every_split(Wire::Anthropic, &anthropic_input());
    }

    #[test]
    fn gemini_stream_split_anywhere_translates_the_same() {
        check_every_split(Wire::Gemini, &gemini_input());
    }

    fn bedrock_input() -> Vec<u8> {
        use crate::stream::eventstream::encode_event;
        [
            ("messageStart", r#"{"role":"assistant"}"#),
            ("contentBlockDelta", r#"{"contentBlockIndex":0,"delta":{"text":"Grüße 😀"},"p":"abc"}"#),
            ("contentBlockStop", r#"{"contentBlockIndex":0}"#),
            ("contentBlockStart", r#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"t1","name":"f"}}}"#),
            ("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"a\":"}}}"#),
            ("contentBlockDelta", r#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"1}"}}}"#),
            ("contentBlockStop", r#"{"contentBlockIndex":1}"#),
            ("messageStop", r#"{"stopReason":"tool_use"}"#),
            ("metadata", r#"{"usage":{"inputTokens":5,"outputTokens":7,"totalTokens":12},"metrics":{"latencyMs":9}}"#),
        ]
        .iter()
        .flat_map(|(t, p)| encode_event(t, p))
        .collect()
    }

    #[test]
    fn bedrock_stream_split_anywhere_translates_the_same() {
        check_every_split(Wire::Bedrock, &bedrock_input());
    }

    #[test]
    fn bedrock_stream_maps_text_tools_finish_and_usage() {
        let out = translate_bytes(Wire::Bedrock, &[&bedrock_input()]);
        let chunks = crate::translate::chunks_of(&out);
        let delta = |i: usize| &chunks[i]["choices"][0]["delta"];
        assert_eq!(delta(0)["role"], "assistant");
        assert_eq!(delta(1)["content"], "Grüße 😀");
        assert_eq!(delta(2)["tool_calls"][0]["id"], "t1");
        assert_eq!(delta(2)["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(
            delta(3)["tool_calls"][0]["function"]["arguments"],
            "{\"a\":"
        );
        assert_eq!(delta(4)["tool_calls"][0]["index"], 0);
        // The finish waits for the usage, which follows it.
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks[6]["usage"]["total_tokens"], 12);
        assert_eq!(chunks.len(), 7);
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn bedrock_exceptions_become_error_events_and_a_missing_usage_still_finishes() {
        use crate::stream::eventstream::{encode, encode_event};
        let mut input = encode_event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"x"}}"#,
        );
        input.extend(encode(
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
            ],
            br#"{"message":"Too many tokens"}"#,
        ));
        let out = translate_bytes(Wire::Bedrock, &[&input]);
        assert!(out.contains(r#"{"error":{"code":null,"message":"Too many tokens","param":null,"type":"throttlingException"}}"#), "{out}");
        assert!(!out.contains("[DONE]"));

        let mut input = encode_event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"x"}}"#,
        );
        input.extend(encode_event(
            "messageStop",
            r#"{"stopReason":"max_tokens"}"#,
        ));
        let out = translate_bytes(Wire::Bedrock, &[&input]);
        assert!(out.contains(r#""finish_reason":"length""#));
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    /// OpenAI chunks → Anthropic events, fed through the SSE parser in pieces.
    fn openai_to_anthropic(pieces: &[&[u8]]) -> String {
        let mut parser = SseParser::new();
        let mut m = anthropic::FromOpenAiStream::default();
        let mut out = String::new();
        for piece in pieces {
            for (event, _) in parser.feed(piece).unwrap() {
                match event.data.as_deref() {
                    Some("[DONE]") => out += &m.event(None),
                    Some(d) => out += &m.event(Some(&serde_json::from_str(d).unwrap())),
                    None => {}
                }
            }
        }
        out
    }

    #[test]
    fn openai_stream_split_anywhere_translates_to_the_same_anthropic_events() {
        let chunk = |delta: &str, finish: &str| {
            format!("data: {{\"id\":\"chatcmpl-1\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\r\n\r\n")
        };
        let input = [
            chunk(r#"{"role":"assistant","content":""}"#, "null"),
            ": keep-alive\n\n".to_string(),
            chunk(r#"{"content":"Grüße 😀"}"#, "null"),
            chunk(r#"{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]}"#, "null"),
            chunk(r#"{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}"#, "null"),
            chunk("{}", "\"tool_calls\""),
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n".to_string(),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat()
        .into_bytes();
        let whole = openai_to_anthropic(&[&input]);
        assert!(
            whole.contains("Grüße 😀")
                && whole.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            "{whole}"
        );
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(openai_to_anthropic(&[a, b]), whole, "split at {at}");
        }
    }

    #[test]
    fn a_corrupt_frame_is_malformed() {
        let mut input = bedrock_input();
        input[20] ^= 0xff;
        let mut stage = ToOpenAiStage::new(Wire::Bedrock, "m").unwrap();
        assert_eq!(stage.feed(&input), Err(Malformed));
    }
}
