//! The request body, read once: validated as a JSON object, with the fields routing needs
//! (`model`, `stream`) picked out and the byte span of `model` remembered, so that swapping
//! the model is a splice and an unchanged body is forwarded as the very bytes received.

use super::error::ProxyError;
use bytes::{Bytes, BytesMut};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::ops::Range;

#[derive(Debug, Clone)]
pub struct JsonBody {
    pub bytes: Bytes,
    pub model: Option<String>,
    model_span: Option<Range<usize>>,
    pub stream: bool,
    empty_object: bool,
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
        let members: Members = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("the request body is not a valid JSON object: {e}")))?;
        let base = bytes.as_ptr() as usize;
        let mut body = JsonBody {
            bytes: Bytes::new(),
            model: None,
            model_span: None,
            stream: false,
            empty_object: members.0.is_empty(),
        };
        for (key, raw) in &members.0 {
            match key.as_str() {
                "model" => {
                    let model: String = serde_json::from_str(raw.get())
                        .map_err(|_| bad("`model` must be a string".into()))?;
                    let start = raw.get().as_ptr() as usize - base;
                    body.model = Some(model);
                    body.model_span = Some(start..start + raw.get().len());
                }
                "stream" => {
                    body.stream = serde_json::from_str::<Option<bool>>(raw.get())
                        .map_err(|_| bad("`stream` must be a boolean".into()))?
                        .unwrap_or(false);
                }
                _ => {}
            }
        }
        body.bytes = bytes;
        Ok(body)
    }

    /// The body to send with `model` as the model: the same bytes when it already is.
    pub fn with_model(&self, model: &str) -> Bytes {
        if self.model.as_deref() == Some(model) {
            return self.bytes.clone();
        }
        let quoted = serde_json::Value::String(model.to_string()).to_string();
        let mut out = BytesMut::with_capacity(self.bytes.len() + quoted.len() + 10);
        match &self.model_span {
            Some(span) => {
                out.extend_from_slice(&self.bytes[..span.start]);
                out.extend_from_slice(quoted.as_bytes());
                out.extend_from_slice(&self.bytes[span.end..]);
            }
            None => {
                // Insert as the first member, after the opening brace.
                let brace = self.bytes.iter().position(|b| *b == b'{').unwrap_or(0);
                out.extend_from_slice(&self.bytes[..=brace]);
                out.extend_from_slice(b"\"model\":");
                out.extend_from_slice(quoted.as_bytes());
                if !self.empty_object {
                    out.extend_from_slice(b",");
                }
                out.extend_from_slice(&self.bytes[brace + 1..]);
            }
        }
        out.freeze()
    }

    /// The whole body as a JSON value (for the in-process mock and translation).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes).unwrap_or(serde_json::Value::Null)
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
        let b = parse(src);
        let out = b.with_model("real/model-\"x\"");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "model" : "real/model-\"x\"",  "temperature":0.5, "messages":[] }"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "real/model-\"x\"");
    }

    #[test]
    fn unchanged_model_is_the_same_bytes() {
        let b = parse(r#"{"model":"m","x":1}"#);
        let out = b.with_model("m");
        assert_eq!(out.as_ptr(), b.bytes.as_ptr());
    }

    #[test]
    fn a_missing_model_is_inserted() {
        assert_eq!(
            parse(r#"{"x":1}"#).with_model("d").as_ref(),
            br#"{"model":"d","x":1}"#
        );
        assert_eq!(
            parse(r#" {}"#).with_model("d").as_ref(),
            br#" {"model":"d"}"#
        );
        let v: serde_json::Value =
            serde_json::from_slice(&parse(r#"{"x":1}"#).with_model("d")).unwrap();
        assert_eq!(v, json!({"model": "d", "x": 1}));
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
