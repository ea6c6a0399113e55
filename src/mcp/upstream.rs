//! The gateway as an MCP client of an `mcp` registry (Streamable HTTP): JSON-RPC requests as
//! POSTs with the registry's credential; answers as JSON or as an SSE stream carrying the
//! response; a session opened with `initialize` + `notifications/initialized`.

use crate::providers::mcp_headers;
use crate::snapshot::CompiledRegistry;
use crate::stream::sse::SseParser;
use crate::upstream::{Fetched, Upstream};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};

/// The protocol revision the gateway speaks to backing servers.
pub const UPSTREAM_PROTOCOL: &str = "2025-06-18";

#[derive(Debug, Clone)]
pub struct UpstreamSession {
    pub session_id: Option<String>,
    pub protocol: String,
}

#[derive(Debug)]
pub enum CallError {
    /// The server could not be reached or answered outside the protocol.
    Unavailable(String),
    /// The session is unknown to the server (404): open a new one.
    SessionGone,
    /// A JSON-RPC error object from the server.
    Rpc(Value),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The headers of a request to a backing server: framing, session, credential.
pub fn request_headers(
    reg: &CompiledRegistry,
    session: Option<&UpstreamSession>,
) -> Result<Vec<(String, String)>, CallError> {
    let mut out: Vec<(String, String)> = vec![
        ("content-type".into(), "application/json".into()),
        (
            "accept".into(),
            "application/json, text/event-stream".into(),
        ),
    ];
    if let Some(s) = session {
        out.push(("mcp-protocol-version".into(), s.protocol.clone()));
        if let Some(id) = &s.session_id {
            out.push(("mcp-session-id".into(), id.clone()));
        }
    }
    for (k, v) in mcp_headers(reg).map_err(|e| CallError::Unavailable(e.to_string()))? {
        out.push((
            k.as_str().to_string(),
            v.to_str().unwrap_or_default().to_string(),
        ));
    }
    Ok(out)
}

/// A fresh JSON-RPC request id for the gateway's own requests.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

async fn post(
    upstream: &Upstream,
    reg: &CompiledRegistry,
    session: Option<&UpstreamSession>,
    body: &Value,
) -> Result<Fetched, CallError> {
    let url = reg
        .spec
        .base_url
        .as_deref()
        .ok_or_else(|| CallError::Unavailable("the registry has no base_url".into()))?;
    let headers = request_headers(reg, session)?;
    let refs: Vec<(&str, String)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let timeout = reg.timeouts.first_byte.min(reg.timeouts.total);
    upstream
        .fetch(
            "POST",
            url,
            &refs,
            bytes::Bytes::from(body.to_string()),
            timeout,
        )
        .await
        .map_err(CallError::Unavailable)
}

/// The JSON-RPC message answering `id` in a response body (JSON or SSE).
fn response_for(f: &Fetched, id: u64) -> Result<Value, CallError> {
    let is_sse = f
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let candidates: Vec<Value> = if is_sse {
        let mut p = SseParser::new();
        let mut events = p
            .feed(&f.body)
            .map_err(|_| CallError::Unavailable("a malformed event stream".into()))?;
        events.extend(p.feed(b"\n\n").unwrap_or_default());
        events
            .into_iter()
            .filter_map(|(e, _)| serde_json::from_str(e.data.as_deref()?).ok())
            .collect()
    } else {
        match serde_json::from_slice::<Value>(&f.body) {
            Ok(Value::Array(items)) => items,
            Ok(v) => vec![v],
            Err(_) => return Err(CallError::Unavailable("an answer that is not JSON".into())),
        }
    };
    candidates
        .into_iter()
        .find(|m| m.get("id").and_then(Value::as_u64) == Some(id))
        .ok_or_else(|| CallError::Unavailable("no response to the request".into()))
}

/// One request; its `result`, or the failure.
pub async fn call(
    upstream: &Upstream,
    reg: &CompiledRegistry,
    session: &UpstreamSession,
    method: &str,
    params: Value,
) -> Result<Value, CallError> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let f = post(upstream, reg, Some(session), &body).await?;
    match f.status {
        200 => {}
        404 if session.session_id.is_some() => return Err(CallError::SessionGone),
        s => return Err(CallError::Unavailable(format!("HTTP {s}"))),
    }
    let msg = response_for(&f, id)?;
    if let Some(err) = msg.get("error") {
        return Err(CallError::Rpc(err.clone()));
    }
    Ok(msg.get("result").cloned().unwrap_or(Value::Null))
}

/// Opens a session with a backing server.
pub async fn open(
    upstream: &Upstream,
    reg: &CompiledRegistry,
) -> Result<UpstreamSession, CallError> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": UPSTREAM_PROTOCOL, "capabilities": {},
        "clientInfo": {"name": "switchyard", "version": env!("CARGO_PKG_VERSION")}}});
    let f = post(upstream, reg, None, &body).await?;
    if f.status != 200 {
        return Err(CallError::Unavailable(format!(
            "initialize answered HTTP {}",
            f.status
        )));
    }
    let msg = response_for(&f, id)?;
    if let Some(err) = msg.get("error") {
        return Err(CallError::Rpc(err.clone()));
    }
    let protocol = msg
        .pointer("/result/protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or(UPSTREAM_PROTOCOL)
        .to_string();
    let session = UpstreamSession {
        session_id: f
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        protocol,
    };
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let f = post(upstream, reg, Some(&session), &note).await?;
    if !matches!(f.status, 200 | 202 | 204) {
        return Err(CallError::Unavailable(format!(
            "initialized answered HTTP {}",
            f.status
        )));
    }
    Ok(session)
}
