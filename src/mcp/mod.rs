//! MCP consumers (SPEC §3 "MCP consumers"): `/{slug}/mcp` speaks MCP's Streamable HTTP
//! transport (JSON-RPC 2.0 over POST, `Mcp-Session-Id` sessions) to the caller, and the
//! consumer's toolkit is the caller's whole world.
//!
//! Hand-written rather than built on an MCP crate: the gateway needs only the transport's
//! framing, a handful of methods and the forwarding of their results, all inside the proxy's
//! request path on Pingora's session, where a crate's own HTTP server would not fit.
//!
//! - `tools/list` (likewise prompts, resources) is the union of the toolkit's entries across
//!   its registries, renamed by `expose_as`. `tools/call` goes to the owning registry under the
//!   original name. Anything not in the toolkit is a JSON-RPC error and is never forwarded.
//! - Upstream sessions are opened lazily, one per caller session and registry.
//! - `fail_mode: closed` (default) answers an error when a backing server is down; `open`
//!   leaves that server's entries out of the lists.
//! - Answers are JSON (`application/json`); there are no server-initiated messages, so `GET`
//!   is 405.

pub mod upstream;

use crate::entities::consumer::FailMode;
use crate::entities::consumer::ToolkitEntry;
use crate::snapshot::{CompiledConsumer, Snapshot};
use crate::telemetry::metrics::{MCP_TOOL_CALLS, MCP_TOOL_DURATION};
use crate::upstream::Upstream;
use dashmap::DashMap;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use upstream::{CallError, UpstreamSession};

/// Protocol revisions served through the `initialize` handshake.
const PROTOCOLS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
const MAX_SESSIONS: usize = 100_000;

struct CallerSession {
    consumer_id: Arc<str>,
    upstreams: tokio::sync::Mutex<HashMap<String, UpstreamSession>>,
}

/// A `tools/call` to relay as a stream (the caller accepts SSE): its result, and any
/// notifications the backing server sends first, reach the caller as they come.
pub struct StreamCall {
    caller: Arc<CallerSession>,
    client_id: Value,
    registry_id: String,
    registry: String,
    tool: String,
    params: Value,
}

pub enum Outcome {
    Reply(Reply),
    Stream(StreamCall),
}

/// What the HTTP layer sends back.
pub struct Reply {
    pub status: u16,
    pub session_id: Option<String>,
    pub body: Option<Value>,
}

#[derive(Default)]
pub struct McpGateway {
    sessions: DashMap<String, Arc<CallerSession>>,
}

fn rpc_error(id: &Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// The kinds of toolkit entry and how each appears in MCP.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cat {
    Tool,
    Prompt,
    Resource,
}

impl Cat {
    fn of(entry: &ToolkitEntry) -> Option<Cat> {
        match entry.exposed()?.0 {
            "tool" => Some(Cat::Tool),
            "prompt" => Some(Cat::Prompt),
            _ => Some(Cat::Resource),
        }
    }
    /// (list method, list key, item name field)
    fn list(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Cat::Tool => ("tools/list", "tools", "name"),
            Cat::Prompt => ("prompts/list", "prompts", "name"),
            Cat::Resource => ("resources/list", "resources", "uri"),
        }
    }
}

/// A request as the dispatcher sees it.
pub struct Call<'a> {
    pub consumer: &'a CompiledConsumer,
    pub snapshot: &'a Snapshot,
    pub upstream: &'a Upstream,
    pub request_id: &'a str,
    /// Called once per `tools/call`: `Err(message)` when a rate limit refuses it.
    pub admit_tool_call: &'a (dyn Fn() -> Result<(), String> + Sync),
}

impl McpGateway {
    /// Handles one POST body (a message or a batch) for an authenticated consumer. A single
    /// `tools/call` from a caller that accepts SSE is handed back to be streamed.
    pub async fn post(
        &self,
        c: &Call<'_>,
        session_header: Option<&str>,
        body: &[u8],
        accepts_sse: bool,
    ) -> Outcome {
        Outcome::Reply(
            match self.post_inner(c, session_header, body, accepts_sse).await {
                Ok(reply) => reply,
                Err(stream) => return Outcome::Stream(stream),
            },
        )
    }

    async fn post_inner(
        &self,
        c: &Call<'_>,
        session_header: Option<&str>,
        body: &[u8],
        accepts_sse: bool,
    ) -> Result<Reply, StreamCall> {
        let parsed: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                return Ok(Reply {
                    status: 400,
                    session_id: None,
                    body: Some(rpc_error(&Value::Null, -32700, "parse error")),
                })
            }
        };
        let (messages, batch) = match parsed {
            Value::Array(items) if !items.is_empty() => (items, true),
            Value::Object(_) => (vec![parsed], false),
            _ => {
                return Ok(Reply {
                    status: 400,
                    session_id: None,
                    body: Some(rpc_error(&Value::Null, -32600, "invalid request")),
                })
            }
        };
        let initializing = messages
            .iter()
            .any(|m| m.get("method").and_then(Value::as_str) == Some("initialize"));
        let (sid, caller) = if initializing {
            if self.sessions.len() >= MAX_SESSIONS {
                self.sessions.clear();
            }
            let sid = uuid::Uuid::new_v4().simple().to_string();
            let caller = Arc::new(CallerSession {
                consumer_id: c.consumer.id.clone(),
                upstreams: tokio::sync::Mutex::new(HashMap::new()),
            });
            self.sessions.insert(sid.clone(), caller.clone());
            (Some(sid), caller)
        } else {
            let found = session_header
                .and_then(|h| self.sessions.get(h).map(|s| s.clone()))
                .filter(|s| s.consumer_id == c.consumer.id);
            match (session_header, found) {
                (_, Some(s)) => (None, s),
                (None, None) => {
                    return Ok(Reply {
                        status: 400,
                        session_id: None,
                        body: Some(rpc_error(
                            &Value::Null,
                            -32600,
                            "missing Mcp-Session-Id: send initialize first",
                        )),
                    })
                }
                // Unknown, ended, or another consumer's: it does not exist here.
                (Some(_), None) => {
                    return Ok(Reply {
                        status: 404,
                        session_id: None,
                        body: Some(rpc_error(&Value::Null, -32001, "session not found")),
                    })
                }
            }
        };
        if let ([m], false, true) = (messages.as_slice(), batch, accepts_sse) {
            if let (Some(id), Some("tools/call")) =
                (m.get("id"), m.get("method").and_then(Value::as_str))
            {
                let params = m.get("params").cloned().unwrap_or(Value::Null);
                return match self.resolve_tool(c, id, params) {
                    Ok((registry_id, registry, tool, params)) => Err(StreamCall {
                        caller,
                        client_id: id.clone(),
                        registry_id,
                        registry,
                        tool,
                        params,
                    }),
                    Err(error) => Ok(Reply {
                        status: 200,
                        session_id: sid,
                        body: Some(error),
                    }),
                };
            }
        }
        let mut answers = Vec::new();
        for m in &messages {
            let (Some(id), Some(method)) = (m.get("id"), m.get("method").and_then(Value::as_str))
            else {
                continue; // notifications and responses need no answer
            };
            let params = m.get("params").cloned().unwrap_or(Value::Null);
            answers.push(self.dispatch(c, &caller, id, method, params).await);
        }
        if answers.is_empty() {
            return Ok(Reply {
                status: 202,
                session_id: sid,
                body: None,
            });
        }
        let body = if batch {
            Value::Array(answers)
        } else {
            answers.remove(0)
        };
        Ok(Reply {
            status: 200,
            session_id: sid,
            body: Some(body),
        })
    }

    /// A `tools/call`'s toolkit entry, after the rate limit: (registry id, registry name,
    /// exposed tool, params naming the original tool); else the JSON-RPC error to answer.
    fn resolve_tool(
        &self,
        c: &Call<'_>,
        id: &Value,
        mut params: Value,
    ) -> Result<(String, String, String, Value), Value> {
        let asked = params
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let entry = c
            .consumer
            .toolkit()
            .iter()
            .filter(|e| Cat::of(e) == Some(Cat::Tool))
            .find(|e| e.exposed().is_some_and(|(_, _, shown)| shown == asked))
            .ok_or_else(|| rpc_error(id, -32602, format!("unknown tool: `{asked}`")))?;
        let (_, original, _) = entry
            .exposed()
            .ok_or_else(|| rpc_error(id, -32602, "invalid toolkit entry"))?;
        let registry = c
            .snapshot
            .registries
            .get(&entry.registry_id)
            .map_or(entry.registry_id.clone(), |r| r.name.clone());
        if let Err(m) = (c.admit_tool_call)() {
            MCP_TOOL_CALLS
                .with_label_values(&[
                    c.consumer.gateway_name.as_str(),
                    &c.consumer.name,
                    &registry,
                    &asked,
                    "rate_limited",
                ])
                .inc();
            return Err(rpc_error(id, -32000, m));
        }
        params["name"] = json!(original);
        Ok((entry.registry_id.clone(), registry, asked, params))
    }

    /// Relays a `tools/call` to its backing server and its answer to the caller as it comes:
    /// SSE events (notifications, then the result under the caller's id) or one JSON answer.
    pub async fn stream_call(
        &self,
        session: &mut pingora::protocols::http::ServerSession,
        c: &Call<'_>,
        sc: StreamCall,
    ) -> u16 {
        let started = Instant::now();
        let (status, outcome) = self.relay_call(session, c, &sc).await;
        let elapsed = started.elapsed();
        MCP_TOOL_CALLS
            .with_label_values(&[
                c.consumer.gateway_name.as_str(),
                &c.consumer.name,
                &sc.registry,
                &sc.tool,
                outcome,
            ])
            .inc();
        MCP_TOOL_DURATION
            .with_label_values(&[&sc.registry, &sc.tool])
            .observe(elapsed.as_secs_f64());
        tracing::info!(target: "switchyard::mcp", request_id = c.request_id, consumer = %c.consumer.name,
            registry = %sc.registry, tool = %sc.tool, outcome, ms = elapsed.as_millis() as u64, "tool call");
        status
    }

    async fn relay_call(
        &self,
        session: &mut pingora::protocols::http::ServerSession,
        c: &Call<'_>,
        sc: &StreamCall,
    ) -> (u16, &'static str) {
        let unavailable = || {
            rpc_error(
                &sc.client_id,
                -32603,
                format!("backing MCP server `{}` is unavailable", sc.registry),
            )
        };
        let Some(reg) = c.snapshot.registries.get(&sc.registry_id) else {
            return (write_json(session, c, unavailable()).await, "unavailable");
        };
        let url = reg.spec.base_url.clone().unwrap_or_default();
        let mut renew = false;
        let (mut conn, our_id) = loop {
            let Ok(up) = self
                .session_for(c, &sc.caller, &sc.registry_id, renew)
                .await
            else {
                return (write_json(session, c, unavailable()).await, "unavailable");
            };
            let our_id = upstream::next_id();
            let body = json!({"jsonrpc": "2.0", "id": our_id, "method": "tools/call", "params": sc.params});
            let Ok(headers) = upstream::request_headers(reg, Some(&up)) else {
                return (write_json(session, c, unavailable()).await, "unavailable");
            };
            let timeout = reg.timeouts.first_byte.min(reg.timeouts.total);
            match c
                .upstream
                .open(
                    "POST",
                    &url,
                    &headers,
                    bytes::Bytes::from(body.to_string()),
                    timeout,
                )
                .await
            {
                Ok(conn) => {
                    let status = conn.response_header().map_or(0, |h| h.status.as_u16());
                    if status == 404 && !renew {
                        renew = true;
                        continue;
                    }
                    if status != 200 {
                        return (write_json(session, c, unavailable()).await, "unavailable");
                    }
                    break (conn, our_id);
                }
                Err(e) => {
                    tracing::warn!(request_id = c.request_id, registry = %sc.registry, error = %e, "MCP call failed");
                    return (write_json(session, c, unavailable()).await, "unavailable");
                }
            }
        };
        let is_sse = conn
            .response_header()
            .and_then(|h| h.headers.get("content-type"))
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let rewrite = |mut m: Value| -> (Value, bool) {
            let ours = m.get("id").and_then(Value::as_u64) == Some(our_id);
            if ours {
                m["id"] = sc.client_id.clone();
            }
            (m, ours)
        };
        let outcome_of = |m: &Value| {
            if m.get("error").is_some() {
                "rpc_error"
            } else if m.pointer("/result/isError").and_then(Value::as_bool) == Some(true) {
                "tool_error"
            } else {
                "ok"
            }
        };
        let idle = reg.timeouts.stream_idle;
        if !is_sse {
            let mut buf = Vec::new();
            while let Ok(Ok(Some(chunk))) =
                pingora::time::timeout(idle, conn.read_response_body()).await
            {
                buf.extend_from_slice(&chunk);
            }
            let answer = serde_json::from_slice::<Value>(&buf)
                .ok()
                .map(rewrite)
                .filter(|(_, ours)| *ours);
            return match answer {
                Some((m, _)) => {
                    let outcome = outcome_of(&m);
                    (write_json(session, c, m).await, outcome)
                }
                None => (write_json(session, c, unavailable()).await, "unavailable"),
            };
        }
        let header = (|| {
            let mut h = pingora::http::ResponseHeader::build(200, Some(4))?;
            h.insert_header("content-type", "text/event-stream")?;
            h.insert_header("cache-control", "no-cache")?;
            h.insert_header("x-request-id", c.request_id)?;
            if !session.is_http2() {
                h.insert_header("transfer-encoding", "chunked")?;
            }
            Ok::<_, Box<pingora::Error>>(h)
        })();
        let Ok(header) = header else {
            return (500, "unavailable");
        };
        if session
            .write_response_header(Box::new(header))
            .await
            .is_err()
        {
            return (200, "unavailable");
        }
        let mut parser = crate::stream::sse::SseParser::new();
        let mut outcome = "unavailable";
        'relay: loop {
            let chunk = match pingora::time::timeout(idle, conn.read_response_body()).await {
                Ok(Ok(Some(chunk))) => chunk,
                _ => break,
            };
            let Ok(events) = parser.feed(&chunk) else {
                break;
            };
            for (event, _) in events {
                let Some(msg) = event
                    .data
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                else {
                    continue;
                };
                let (msg, ours) = rewrite(msg);
                let frame = bytes::Bytes::from(format!("event: message\ndata: {msg}\n\n"));
                if session.write_response_body(frame, false).await.is_err() {
                    return (200, "unavailable"); // the caller left; dropping `conn` cancels upstream
                }
                if ours {
                    outcome = outcome_of(&msg);
                    break 'relay;
                }
            }
        }
        if outcome == "unavailable" {
            let frame = bytes::Bytes::from(format!("event: message\ndata: {}\n\n", unavailable()));
            let _ = session.write_response_body(frame, false).await;
        }
        let _ = session.write_response_body(bytes::Bytes::new(), true).await;
        (200, outcome)
    }

    /// Ends a session (`DELETE`); true when it existed for this consumer.
    pub fn delete(&self, consumer: &CompiledConsumer, session_header: Option<&str>) -> bool {
        let Some(h) = session_header else {
            return false;
        };
        self.sessions
            .remove_if(h, |_, s| s.consumer_id == consumer.id)
            .is_some()
    }

    async fn dispatch(
        &self,
        c: &Call<'_>,
        caller: &CallerSession,
        id: &Value,
        method: &str,
        params: Value,
    ) -> Value {
        match method {
            "initialize" => {
                let asked = params
                    .get("protocolVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let version = if PROTOCOLS.contains(&asked) {
                    asked
                } else {
                    PROTOCOLS[PROTOCOLS.len() - 1]
                };
                rpc_result(
                    id,
                    json!({"protocolVersion": version,
                           "capabilities": {"tools": {"listChanged": false}, "prompts": {"listChanged": false},
                                            "resources": {"listChanged": false, "subscribe": false}},
                           "serverInfo": {"name": format!("switchyard/{}", c.consumer.name), "version": env!("CARGO_PKG_VERSION")}}),
                )
            }
            "ping" => rpc_result(id, json!({})),
            "tools/list" => self.list(c, caller, id, Cat::Tool).await,
            "prompts/list" => self.list(c, caller, id, Cat::Prompt).await,
            "resources/list" => self.list(c, caller, id, Cat::Resource).await,
            "resources/templates/list" => rpc_result(id, json!({"resourceTemplates": []})),
            "tools/call" => match self.resolve_tool(c, id, params) {
                Ok((registry_id, registry, tool, params)) => {
                    self.call_tool(c, caller, id, &registry_id, &registry, &tool, params)
                        .await
                }
                Err(error) => error,
            },
            "prompts/get" => {
                self.forward(c, caller, id, Cat::Prompt, "prompts/get", "name", params)
                    .await
            }
            "resources/read" => {
                self.forward(
                    c,
                    caller,
                    id,
                    Cat::Resource,
                    "resources/read",
                    "uri",
                    params,
                )
                .await
            }
            other => rpc_error(
                id,
                -32601,
                format!("method `{other}` is not available through this gateway"),
            ),
        }
    }

    /// The caller's session with a backing server, opened on first use.
    async fn session_for(
        &self,
        c: &Call<'_>,
        caller: &CallerSession,
        registry_id: &str,
        renew: bool,
    ) -> Result<UpstreamSession, CallError> {
        let mut ups = caller.upstreams.lock().await;
        if !renew {
            if let Some(s) = ups.get(registry_id) {
                return Ok(s.clone());
            }
        }
        let reg = c
            .snapshot
            .registries
            .get(registry_id)
            .ok_or_else(|| CallError::Unavailable("the registry no longer exists".into()))?;
        let s = upstream::open(c.upstream, reg).await?;
        ups.insert(registry_id.to_string(), s.clone());
        Ok(s)
    }

    /// A call on a backing server, renewing an expired session once.
    async fn upstream_call(
        &self,
        c: &Call<'_>,
        caller: &CallerSession,
        registry_id: &str,
        method: &str,
        params: Value,
    ) -> Result<Value, CallError> {
        let reg = c
            .snapshot
            .registries
            .get(registry_id)
            .ok_or_else(|| CallError::Unavailable("the registry no longer exists".into()))?;
        let s = self.session_for(c, caller, registry_id, false).await?;
        match upstream::call(c.upstream, reg, &s, method, params.clone()).await {
            Err(CallError::SessionGone) => {
                let s = self.session_for(c, caller, registry_id, true).await?;
                upstream::call(c.upstream, reg, &s, method, params).await
            }
            other => other,
        }
    }

    async fn list(&self, c: &Call<'_>, caller: &CallerSession, id: &Value, cat: Cat) -> Value {
        let (method, key, field) = cat.list();
        let entries: Vec<&ToolkitEntry> = c
            .consumer
            .toolkit()
            .iter()
            .filter(|e| Cat::of(e) == Some(cat))
            .collect();
        let mut registries: Vec<&str> = entries.iter().map(|e| e.registry_id.as_str()).collect();
        registries.dedup();
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for rid in registries {
            if !seen.insert(rid) {
                continue;
            }
            let mut items: Vec<Value> = Vec::new();
            let mut cursor: Option<Value> = None;
            let listed = loop {
                let params = cursor
                    .as_ref()
                    .map_or(json!({}), |cur| json!({"cursor": cur}));
                match self.upstream_call(c, caller, rid, method, params).await {
                    Ok(r) => {
                        items.extend(
                            r.get(key)
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default(),
                        );
                        match r.get("nextCursor").filter(|v| !v.is_null()) {
                            Some(next) if items.len() < 10_000 => cursor = Some(next.clone()),
                            _ => break Ok(()),
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            let name = c
                .snapshot
                .registries
                .get(rid)
                .map_or(rid.to_string(), |r| r.name.clone());
            if let Err(e) = listed {
                tracing::warn!(request_id = c.request_id, registry = %name, error = ?e, "MCP backing server unavailable");
                if c.consumer.fail_mode == FailMode::Closed {
                    return rpc_error(
                        id,
                        -32603,
                        format!("backing MCP server `{name}` is unavailable"),
                    );
                }
                continue;
            }
            for e in entries.iter().filter(|e| e.registry_id == rid) {
                let Some((_, original, shown)) = e.exposed() else {
                    continue;
                };
                if let Some(item) = items
                    .iter()
                    .find(|i| i.get(field).and_then(Value::as_str) == Some(original))
                {
                    let mut item = item.clone();
                    item[field] = json!(shown);
                    out.push(item);
                }
            }
        }
        rpc_result(id, json!({ key: out }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_tool(
        &self,
        c: &Call<'_>,
        caller: &CallerSession,
        id: &Value,
        registry_id: &str,
        registry: &str,
        tool: &str,
        params: Value,
    ) -> Value {
        let started = Instant::now();
        let result = self
            .upstream_call(c, caller, registry_id, "tools/call", params)
            .await;
        let elapsed = started.elapsed();
        let outcome = match &result {
            Ok(r) if r.get("isError").and_then(Value::as_bool) == Some(true) => "tool_error",
            Ok(_) => "ok",
            Err(CallError::Rpc(_)) => "rpc_error",
            Err(_) => "unavailable",
        };
        MCP_TOOL_CALLS
            .with_label_values(&[
                c.consumer.gateway_name.as_str(),
                &c.consumer.name,
                registry,
                tool,
                outcome,
            ])
            .inc();
        MCP_TOOL_DURATION
            .with_label_values(&[registry, tool])
            .observe(elapsed.as_secs_f64());
        tracing::info!(target: "switchyard::mcp", request_id = c.request_id, consumer = %c.consumer.name,
            registry = %registry, tool = %tool, outcome, ms = elapsed.as_millis() as u64, "tool call");
        answer(id, registry, result)
    }

    /// `prompts/get` and `resources/read`: the toolkit entry, then the owning server.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        c: &Call<'_>,
        caller: &CallerSession,
        id: &Value,
        cat: Cat,
        method: &str,
        field: &str,
        mut params: Value,
    ) -> Value {
        let asked = params
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let entry = c
            .consumer
            .toolkit()
            .iter()
            .filter(|e| Cat::of(e) == Some(cat))
            .find(|e| e.exposed().is_some_and(|(_, _, shown)| shown == asked));
        let Some((entry, original)) = entry.and_then(|e| Some((e, e.exposed()?.1))) else {
            // Not in the toolkit: it does not exist for the caller, and is never forwarded.
            let what = if cat == Cat::Prompt {
                "prompt"
            } else {
                "resource"
            };
            return rpc_error(id, -32602, format!("unknown {what}: `{asked}`"));
        };
        let registry = c
            .snapshot
            .registries
            .get(&entry.registry_id)
            .map_or(entry.registry_id.clone(), |r| r.name.clone());
        params[field] = json!(original);
        let result = self
            .upstream_call(c, caller, &entry.registry_id, method, params)
            .await;
        answer(id, &registry, result)
    }
}

/// A backing server's result (or failure) as the caller's JSON-RPC answer.
fn answer(id: &Value, registry: &str, result: Result<Value, CallError>) -> Value {
    match result {
        Ok(r) => rpc_result(id, r),
        Err(CallError::Rpc(e)) => json!({"jsonrpc": "2.0", "id": id, "error": e}),
        Err(e) => {
            tracing::warn!(registry = %registry, error = ?e, "MCP call failed");
            rpc_error(
                id,
                -32603,
                format!("backing MCP server `{registry}` is unavailable"),
            )
        }
    }
}

/// Writes a JSON-RPC answer; returns the status.
async fn write_json(
    session: &mut pingora::protocols::http::ServerSession,
    c: &Call<'_>,
    body: Value,
) -> u16 {
    let bytes = bytes::Bytes::from(body.to_string());
    let header = (|| {
        let mut h = pingora::http::ResponseHeader::build(200, Some(3))?;
        h.insert_header("content-type", "application/json")?;
        h.insert_header("content-length", bytes.len().to_string())?;
        h.insert_header("x-request-id", c.request_id)?;
        Ok::<_, Box<pingora::Error>>(h)
    })();
    if let Ok(h) = header {
        if session.write_response_header(Box::new(h)).await.is_ok() {
            let _ = session.write_response_body(bytes, true).await;
        }
    }
    200
}
