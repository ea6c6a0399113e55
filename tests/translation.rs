//! Table tests of the translation rules (SPEC §3 step 8, `shared/notes/protocols.md` §5–6):
//! every file in `tests/fixtures/translation/` is a list of cases, one mapping rule each,
//! written in the shapes the providers' references give. The file name says which direction.
//!
//! Ids and timestamps vary per answer, so `id` and `created` are left out of the comparison.

use serde_json::{json, Value};
use std::path::PathBuf;
use switchyard::providers::{Translation, Wire};
use switchyard::proxy::error::ClientFormat;
use switchyard::stream::eventstream::encode_event;
use switchyard::translate::{self, anthropic, bedrock, gemini, ToOpenAiStage};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translation")
}

fn cases(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    serde_json::from_str::<Vec<Value>>(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn strip(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        o.remove("created");
    }
    v
}

/// Runs every case of `file` through `f`; reports all mismatches at once.
fn check(file: &str, f: impl Fn(&Value) -> Result<Value, String>) {
    let mut failures = Vec::new();
    let all = cases(file);
    assert!(!all.is_empty(), "{file} has no cases");
    for case in &all {
        let rule = case["rule"].as_str().unwrap_or("?");
        let got = f(case).map(strip);
        let want = match case.get("error") {
            Some(e) => Err(e.as_str().unwrap().to_string()),
            None => Ok(strip(case["expected"].clone())),
        };
        if got != want {
            failures.push(format!("{file}: {rule}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// OpenAI SSE frames as a list of chunks (`"[DONE]"` kept as a string).
fn frames(sse: &str) -> Value {
    Value::Array(
        sse.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| {
                serde_json::from_str::<Value>(d)
                    .map(|v| {
                        let mut v = strip(v);
                        if let Some(o) = v.as_object_mut() {
                            o.remove("object");
                            o.remove("model");
                            if o.get("usage") == Some(&Value::Null) {
                                o.remove("usage");
                            }
                        }
                        v
                    })
                    .unwrap_or_else(|_| json!(d))
            })
            .collect(),
    )
}

/// Anthropic SSE frames as `[event name, data]` pairs.
fn anthropic_frames(sse: &str) -> Value {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in sse.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            out.push(json!([name, serde_json::from_str::<Value>(d).unwrap()]));
        }
    }
    Value::Array(out)
}

#[test]
fn openai_requests_to_anthropic() {
    check("openai_to_anthropic.request.json", |c| {
        anthropic::request_from_openai(&c["input"], "claude-x", 1024)
    });
}

#[test]
fn anthropic_requests_to_openai() {
    check("anthropic_to_openai.request.json", |c| {
        anthropic::request_to_openai(&c["input"], "gpt-x")
    });
}

#[test]
fn openai_requests_to_gemini() {
    check("openai_to_gemini.request.json", |c| {
        gemini::request_from_openai(&c["input"])
    });
}

#[test]
fn openai_requests_to_bedrock() {
    check("openai_to_bedrock.request.json", |c| {
        bedrock::request_from_openai(&c["input"])
    });
}

#[test]
fn answers_to_openai() {
    check("anthropic_to_openai.response.json", |c| {
        Ok(anthropic::response_to_openai(&c["input"]))
    });
    check("gemini_to_openai.response.json", |c| {
        Ok(gemini::response_to_openai(&c["input"], "m"))
    });
    check("bedrock_to_openai.response.json", |c| {
        Ok(bedrock::response_to_openai(&c["input"], "m"))
    });
}

#[test]
fn openai_answers_to_anthropic() {
    check("openai_to_anthropic.response.json", |c| {
        Ok(anthropic::response_from_openai(&c["input"]))
    });
}

fn wire(name: &str) -> Wire {
    match name {
        "openai" => Wire::OpenAi,
        "anthropic" => Wire::Anthropic,
        "gemini" => Wire::Gemini,
        "bedrock" => Wire::Bedrock,
        other => panic!("unknown wire {other}"),
    }
}

#[test]
fn upstream_errors_in_the_clients_shape() {
    check("errors.json", |c| {
        let client = match c["client"].as_str() {
            Some("anthropic") => ClientFormat::Anthropic,
            _ => ClientFormat::OpenAi,
        };
        let t = Translation {
            upstream: wire(c["upstream"].as_str().unwrap()),
            client,
        };
        let status = c["status"].as_u64().unwrap() as u16;
        Ok(translate::error(
            t,
            status,
            &c["input"],
            c["error_type"].as_str(),
        ))
    });
}

#[test]
fn provider_streams_to_openai_chunks() {
    let sse = |c: &Value, format: &dyn Fn(&Value) -> String| -> String {
        c["input"].as_array().unwrap().iter().map(format).collect()
    };
    check("anthropic_to_openai.stream.json", |c| {
        let bytes = sse(c, &|e| {
            format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())
        });
        Ok(frames(&translate::translate_bytes(
            Wire::Anthropic,
            &[bytes.as_bytes()],
        )))
    });
    check("gemini_to_openai.stream.json", |c| {
        let bytes = sse(c, &|e| format!("data: {e}\r\n\r\n"));
        Ok(frames(&translate::translate_bytes(
            Wire::Gemini,
            &[bytes.as_bytes()],
        )))
    });
    check("bedrock_to_openai.stream.json", |c| {
        let mut bytes = Vec::new();
        for e in c["input"].as_array().unwrap() {
            let (kind, payload) = (e[0].as_str().unwrap(), &e[1]);
            if kind == "exception" {
                bytes.extend(switchyard::stream::eventstream::encode(
                    &[
                        (":message-type", "exception"),
                        (":exception-type", payload["type"].as_str().unwrap()),
                    ],
                    json!({"message": payload["message"]})
                        .to_string()
                        .as_bytes(),
                ));
            } else {
                bytes.extend(encode_event(kind, &payload.to_string()));
            }
        }
        let mut stage = ToOpenAiStage::new(Wire::Bedrock, "m").unwrap();
        let out = stage.feed(&bytes).map_err(|_| "malformed".to_string())? + &stage.end();
        Ok(frames(&out))
    });
}

#[test]
fn openai_streams_to_anthropic_events() {
    check("openai_to_anthropic.stream.json", |c| {
        let mut m = anthropic::FromOpenAiStream::default();
        let mut out = String::new();
        for chunk in c["input"].as_array().unwrap() {
            out += &m.event((chunk != "[DONE]").then_some(chunk));
        }
        Ok(anthropic_frames(&out))
    });
}
