//! The request body, read once: validated as a JSON object, its top-level members located but
//! left unparsed, and the fields routing needs (`model`, `stream`) picked out. Policies may
//! override members (`max_tokens`, `messages`, `stream_options`); rendering splices the model
//! and the overrides into the original bytes, so a body with neither is forwarded as the very
//! bytes received.

use super::error::ProxyError;
use bytes::{Bytes, BytesMut};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use std::fmt;
use std::ops::Range;

#[derive(Debug, Clone)]
pub struct JsonBody {
    pub bytes: Bytes,
    pub model: Option<String>,
    pub stream: bool,
    /// Top-level members: key and the byte span of its value.
    members: Vec<(String, Range<usize>)>,
    /// Member values to send instead of (or in addition to) the received ones, as JSON text.
    overrides: Vec<(String, String)>,
}

/// The top-level members of a JSON object, values left unparsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl JsonBody {
    pub fn parse(bytes: Bytes) -> Result<JsonBody, ProxyError> {
        let bad = |m: String| ProxyError::InvalidRequest(m);
        let parsed: Members = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("the request body is not a valid JSON object: {e}")))?;
        let base = bytes.as_ptr() as usize;
        let mut model = None;
        let mut stream = false;
        let mut members = Vec::with_capacity(parsed.0.len());
        for (key, raw) in &parsed.0 {
            match key.as_str() {
                "model" => {
                    model = Some(
                        serde_json::from_str::<String>(raw.get())
                            .map_err(|_| bad("`model` must be a string".into()))?,
                    );
                }
                "stream" => {
                    stream = serde_json::from_str::<Option<bool>>(raw.get())
                        .map_err(|_| bad("`stream` must be a boolean".into()))?
                        .unwrap_or(false);
                }
                _ => {}
            }
            let start = raw.get().as_ptr() as usize - base;
            members.push((key.clone(), start..start + raw.get().len()));
        }
        Ok(JsonBody {
            bytes,
            model,
            stream,
            members,
            overrides: Vec::new(),
        })
    }

    /// The raw JSON text of a member as received.
    pub fn raw(&self, key: &str) -> Option<&str> {
        let (_, span) = self.members.iter().find(|(k, _)| k == key)?;
        std::str::from_utf8(&self.bytes[span.clone()]).ok()
    }

    /// A member parsed (override first, then as received).
    pub fn get(&self, key: &str) -> Option<Value> {
        if let Some((_, v)) = self.overrides.iter().find(|(k, _)| k == key) {
            return serde_json::from_str(v).ok();
        }
        serde_json::from_str(self.raw(key)?).ok()
    }

    /// Sends `value` for member `key` instead of the received one (or adds it).
    pub fn set(&mut self, key: &str, value: &Value) {
        let text = value.to_string();
        match self.overrides.iter_mut().find(|(k, _)| k == key) {
            Some(o) => o.1 = text,
            None => self.overrides.push((key.to_string(), text)),
        }
    }

    /// Drops the body once its answer is committed to the client and it can no longer be sent
    /// (again): an open stream then does not keep its prompt. What remains is an empty object.
    pub fn release(&mut self) {
        *self = JsonBody {
            bytes: Bytes::from_static(b"{}"),
            model: None,
            stream: self.stream,
            members: Vec::new(),
            overrides: Vec::new(),
        };
    }

    /// The body to send with `model` as the model: the same bytes when nothing changes.
    pub fn render(&self, model: &str) -> Bytes {
        if self.model.as_deref() == Some(model) && self.overrides.is_empty() {
            return self.bytes.clone();
        }
        let quoted = Value::String(model.to_string()).to_string();
        let value_of = |key: &str| -> Option<&str> {
            if key == "model" {
                return Some(&quoted);
            }
            self.overrides
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let extra: usize = self
            .overrides
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum();
        let mut out = BytesMut::with_capacity(self.bytes.len() + quoted.len() + extra + 12);
        // Members that are new go first, right after the opening brace.
        let brace = self.bytes.iter().position(|b| *b == b'{').unwrap_or(0);
        out.extend_from_slice(&self.bytes[..=brace]);
        let mut added = 0;
        let new_keys = std::iter::once("model")
            .chain(self.overrides.iter().map(|(k, _)| k.as_str()))
            .filter(|k| !self.members.iter().any(|(m, _)| m == k));
        for key in new_keys {
            if added > 0 {
                out.extend_from_slice(b",");
            }
            out.extend_from_slice(Value::String(key.to_string()).to_string().as_bytes());
            out.extend_from_slice(b":");
            out.extend_from_slice(value_of(key).unwrap_or("null").as_bytes());
            added += 1;
        }
        if added > 0 && !self.members.is_empty() {
            out.extend_from_slice(b",");
        }
        // Then the received bytes, with replaced values spliced in.
        let mut at = brace + 1;
        for (key, span) in &self.members {
            if let Some(v) = value_of(key) {
                out.extend_from_slice(&self.bytes[at..span.start]);
                out.extend_from_slice(v.as_bytes());
                at = span.end;
            }
        }
        out.extend_from_slice(&self.bytes[at..]);
        out.freeze()
    }

    /// The whole body as a JSON value, overrides applied (for the in-process mock, policies
    /// and translation).
    pub fn value(&self) -> Value {
        let mut v: Value = serde_json::from_slice(&self.bytes).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            for (k, text) in &self.overrides {
                if let Ok(x) = serde_json::from_str(text) {
                    map.insert(k.clone(), x);
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> JsonBody {
        JsonBody::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    #[test]
    fn picks_out_model_and_stream() {
        let b = parse(
            r#"{"messages":[{"role":"user","content":"{\"model\":1}"}],"model":"gpt-4o","stream":true}"#,
        );
        assert_eq!(b.model.as_deref(), Some("gpt-4o"));
        assert!(b.stream);
    }

    #[test]
    fn swapping_the_model_splices_only_its_value() {
        let src = r#"{ "model" : "alias",  "temperature":0.5, "messages":[] }"#;
        let out = parse(src).render("real/model-\"x\"");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "model" : "real/model-\"x\"",  "temperature":0.5, "messages":[] }"#
        );
    }

    #[test]
    fn unchanged_model_is_the_same_bytes() {
        let b = parse(r#"{"model":"m","x":1}"#);
        assert_eq!(b.render("m").as_ptr(), b.bytes.as_ptr());
    }

    #[test]
    fn a_missing_model_is_inserted() {
        assert_eq!(
            parse(r#"{"x":1}"#).render("d").as_ref(),
            br#"{"model":"d","x":1}"#
        );
        assert_eq!(parse(r#" {}"#).render("d").as_ref(), br#" {"model":"d"}"#);
    }

    #[test]
    fn overrides_replace_or_add_members() {
        let mut b = parse(r#"{"model":"m","max_tokens":900,"messages":[{"a":1}]}"#);
        b.set("max_tokens", &json!(100));
        b.set("stream_options", &json!({"include_usage": true}));
        let out: Value = serde_json::from_slice(&b.render("m")).unwrap();
        assert_eq!(
            out,
            json!({"model": "m", "max_tokens": 100, "messages": [{"a": 1}], "stream_options": {"include_usage": true}})
        );
        assert_eq!(b.get("max_tokens"), Some(json!(100)));
        assert_eq!(b.value()["stream_options"]["include_usage"], true);
    }

    #[test]
    fn bad_bodies_are_invalid_requests() {
        for bad in [
            &b"[1,2]"[..],
            b"{\"model\": 5}",
            b"{\"stream\": \"yes\"}",
            b"{\"a\": ",
            b"{\"a\": \"\xff\"}",
            b"",
        ] {
            let e = JsonBody::parse(Bytes::copy_from_slice(bad)).unwrap_err();
            assert_eq!(e.status(), 400, "{bad:?}");
        }
    }
}
