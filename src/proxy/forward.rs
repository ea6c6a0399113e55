//! The attempt loop (SPEC §3 steps 7–10): select, forward, fall back, relay.
//!
//! Each attempt sends the request to one candidate. An error answer (status ≥ 400) is read
//! whole (bounded) and classified before anything reaches the client, so the plan can retry it
//! elsewhere; the last failure is what the client gets. A successful answer is relayed as it
//! arrives, chunk by chunk; SSE streams go event by event, never buffered whole. Once bytes
//! reached the client, a failure ends the stream with an in-band error event.
//!
//! A client that goes away mid-response cancels the upstream request: its connection is
//! dropped instead of being returned to the pool.

use super::body::JsonBody;
use super::error::{ClientFormat, ProxyError};
use super::{Gateway, RequestCtx};
use crate::entities::registry::Provider;
use crate::providers::{self, mock, Api};
use crate::routing::health::DEFAULT_FAILURE_THRESHOLD;
use crate::routing::plan::{FailureClass, Plan};
use crate::routing::select::cooldown_of;
use crate::routing::Candidate;
use crate::snapshot::{CompiledConsumer, CompiledRouting};
use crate::stream::sse::SseParser;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use rand::Rng;
use std::time::{Duration, Instant};

/// Client request headers passed upstream; everything else (credentials, cookies, hop-by-hop
/// headers, the client's encoding preferences) stays at the gateway.
const FORWARDED_REQUEST_HEADERS: [&str; 4] =
    ["accept", "user-agent", "openai-beta", "x-stainless-lang"];

/// Upstream response headers not relayed: hop-by-hop and framing (the gateway re-frames).
const DROPPED_RESPONSE_HEADERS: [&str; 9] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "content-length",
    "x-request-id",
];

/// Largest upstream error body read for classification.
const MAX_ERROR_BODY: usize = 1 << 20;

/// What the client gets if a failed attempt is the last one.
enum Reply {
    Error(ProxyError),
    Upstream {
        header: Box<ResponseHeader>,
        body: Bytes,
    },
}

struct Failure {
    class: FailureClass,
    reply: Reply,
}

enum Outcome {
    /// The response went to the client; `ok` is false if the upstream failed midway.
    Done { ok: bool },
    /// Failed before anything reached the client.
    Failed(Failure),
}

fn local(e: ProxyError) -> Outcome {
    Outcome::Failed(Failure {
        class: FailureClass::Local,
        reply: Reply::Error(e),
    })
}

fn failed(class: FailureClass, e: ProxyError) -> Outcome {
    Outcome::Failed(Failure {
        class,
        reply: Reply::Error(e),
    })
}

/// The pause before the next attempt: a short `retry-after` when the same registry is tried
/// again, else a short jittered backoff growing with the attempts made.
fn backoff(class: FailureClass, same_registry: bool, made: u32) -> Duration {
    if let (
        FailureClass::Status429 {
            retry_after: Some(d),
        },
        true,
    ) = (class, same_registry)
    {
        return d;
    }
    let step = rand::thread_rng().gen_range(10..=40u64);
    Duration::from_millis((step * u64::from(made)).min(250))
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    consumer: &CompiledConsumer,
    routing: &CompiledRouting,
    api: Api,
    body: &JsonBody,
    candidates: Vec<Candidate>,
) -> Result<(), ProxyError> {
    let ordered = gw.selector.order(routing.algorithm, candidates, &gw.health);
    let mut plan = Plan::new(routing, ordered, &gw.health, ctx.started);
    let mut last: Option<Failure> = None;
    let mut wait = Duration::ZERO;
    while let Some(cand) = plan.current().cloned() {
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        ctx.attempts += 1;
        ctx.registry = Some(cand.registry.name.clone());
        ctx.model = Some(format!(
            "{}/{}",
            cand.registry.provider.as_str(),
            cand.model
        ));
        ctx.upstream_latency = None;
        let health = gw.health.of(&cand.registry.id);
        let threshold = cand
            .registry
            .spec
            .circuit_breaker
            .map_or(DEFAULT_FAILURE_THRESHOLD, |cb| cb.failure_threshold);
        let started = Instant::now();
        let in_flight = health.start(cooldown_of(&cand));
        let outcome = match cand.registry.provider {
            Provider::Mock => attempt_mock(session, ctx, &cand, api, body).await,
            _ => attempt_http(gw, session, ctx, consumer, &cand, api, body).await,
        };
        drop(in_flight);
        let latency = ctx.upstream_latency.unwrap_or_else(|| started.elapsed());
        match outcome {
            Outcome::Done { ok: true } => {
                health.success(&cand.model, latency);
                return Ok(());
            }
            Outcome::Done { ok: false } => {
                health.failure(threshold, latency);
                return Ok(());
            }
            Outcome::Failed(f) => {
                match f.class {
                    c if c.is_health_failure() => health.failure(threshold, latency),
                    FailureClass::Status429 { retry_after } => {
                        if let Some(d) =
                            retry_after.filter(|d| *d > crate::routing::plan::SHORT_RETRY_AFTER)
                        {
                            health.sit_out(d);
                        }
                    }
                    FailureClass::Local => {}
                    _ => health.success(&cand.model, latency),
                }
                let again = match plan.advance(f.class, ctx.attempts) {
                    Some(same) => {
                        wait = backoff(f.class, same, ctx.attempts);
                        plan.fits(wait)
                    }
                    None => false,
                };
                tracing::debug!(request_id = %ctx.request_id, registry = %cand.registry.name,
                    class = ?f.class, retry = again, "attempt failed");
                last = Some(f);
                if !again {
                    break;
                }
            }
        }
    }
    match last.map(|f| f.reply) {
        Some(Reply::Upstream { header, body }) => {
            ctx.status = header.status.as_u16();
            write_whole(session, ctx, header, body).await;
            Ok(())
        }
        Some(Reply::Error(e)) => Err(e),
        None => Err(ProxyError::UpstreamUnavailable(
            "no registry is available for this request".into(),
        )),
    }
}

/// The gateway's own response headers (SPEC §3 step 10).
fn gateway_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    let upstream = ctx.upstream_latency.unwrap_or_default();
    let proxy = ctx.started.elapsed().saturating_sub(upstream);
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    resp.insert_header(
        "x-switchyard-registry",
        ctx.registry.as_deref().unwrap_or(""),
    )?;
    resp.insert_header("x-switchyard-model", ctx.model.as_deref().unwrap_or(""))?;
    resp.insert_header("x-switchyard-attempts", ctx.attempts.to_string())?;
    resp.insert_header(
        "x-switchyard-upstream-latency",
        upstream.as_millis().to_string(),
    )?;
    resp.insert_header("x-switchyard-proxy-latency", proxy.as_millis().to_string())?;
    Ok(())
}

/// Marks a body without a length as chunked (HTTP/1.1; HTTP/2 frames it itself).
fn set_streaming_framing(session: &Session, resp: &mut ResponseHeader) -> pingora::Result<()> {
    if !session.is_http2() {
        resp.insert_header("transfer-encoding", "chunked")?;
    }
    Ok(())
}

/// The upstream's header as the client gets it: hop-by-hop headers dropped.
fn client_header(upstream: &ResponseHeader) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(upstream.status, Some(upstream.headers.len() + 8))?;
    for (k, v) in upstream.headers.iter() {
        if !DROPPED_RESPONSE_HEADERS.contains(&k.as_str()) {
            resp.append_header(k.clone(), v.clone())?;
        }
    }
    if let Some(id) = upstream.headers.get("x-request-id") {
        resp.insert_header("x-upstream-request-id", id.clone())?;
    }
    Ok(resp)
}

/// Writes a buffered upstream answer (the last error of a failed plan).
async fn write_whole(
    session: &mut Session,
    ctx: &RequestCtx,
    header: Box<ResponseHeader>,
    body: Bytes,
) {
    let resp = (|| {
        let mut resp = client_header(&header)?;
        resp.insert_header("content-length", body.len().to_string())?;
        gateway_headers(&mut resp, ctx)?;
        Ok::<_, Box<pingora::Error>>(resp)
    })();
    if let Ok(resp) = resp {
        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_ok()
        {
            let _ = session.write_response_body(Some(body), true).await;
        }
    }
}

/// The in-band error that ends a stream that failed after its first byte.
fn stream_error_event(format: ClientFormat, message: &str) -> Bytes {
    let m = serde_json::Value::String(message.to_string());
    Bytes::from(match format {
        ClientFormat::OpenAi => format!(
            "data: {{\"error\":{{\"message\":{m},\"type\":\"api_error\",\"code\":\"upstream_stream_error\",\"param\":null}}}}\n\n"
        ),
        ClientFormat::Anthropic => format!(
            "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"api_error\",\"message\":{m}}}}}\n\n"
        ),
    })
}

async fn attempt_mock(
    session: &mut Session,
    ctx: &mut RequestCtx,
    candidate: &Candidate,
    api: Api,
    body: &JsonBody,
) -> Outcome {
    let reply = match mock::answer(&candidate.registry, api, &candidate.model, &body.value()) {
        Ok(r) => r,
        Err(e) => return local(e),
    };
    ctx.upstream_latency = Some(Duration::ZERO);
    ctx.status = reply.status;
    let header = (|| {
        let mut resp = ResponseHeader::build(reply.status, Some(8))?;
        resp.insert_header("content-type", reply.content_type)?;
        if reply.chunks.len() == 1 {
            resp.insert_header("content-length", reply.chunks[0].len().to_string())?;
        } else {
            resp.insert_header("cache-control", "no-cache")?;
            set_streaming_framing(session, &mut resp)?;
        }
        gateway_headers(&mut resp, ctx)?;
        Ok::<_, Box<pingora::Error>>(resp)
    })();
    let Ok(resp) = header else {
        return local(ProxyError::Internal(
            "cannot build the response header".into(),
        ));
    };
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        return Outcome::Done { ok: true };
    }
    for (i, chunk) in reply.chunks.into_iter().enumerate() {
        if i > 0 && !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        if session
            .write_response_body(Some(chunk), false)
            .await
            .is_err()
        {
            return Outcome::Done { ok: true }; // the client left
        }
    }
    let _ = session.write_response_body(None, true).await;
    Outcome::Done { ok: true }
}

/// Maps a Pingora error before any response byte to a failure class and client error.
fn transport_failure(reg: &str, e: &pingora::Error, connected: bool) -> Outcome {
    use pingora::ErrorType::*;
    match e.etype() {
        ConnectTimedout | TLSHandshakeTimedout => failed(
            FailureClass::Timeout,
            ProxyError::UpstreamTimeout(format!(
                "registry `{reg}` did not accept a connection in time"
            )),
        ),
        ReadTimedout | WriteTimedout => failed(
            FailureClass::Timeout,
            ProxyError::UpstreamTimeout(format!("registry `{reg}` timed out")),
        ),
        _ if !connected => failed(
            FailureClass::ConnectError,
            ProxyError::UpstreamUnavailable(format!(
                "registry `{reg}` is unreachable: {}",
                e.etype().as_str()
            )),
        ),
        _ => failed(
            FailureClass::Reset,
            ProxyError::UpstreamUnavailable(format!(
                "registry `{reg}` closed the connection: {}",
                e.etype().as_str()
            )),
        ),
    }
}

/// `retry-after-ms`, else `retry-after` (seconds or an HTTP date), capped at 5 minutes.
fn retry_after(h: &ResponseHeader) -> Option<Duration> {
    let text = |n: &str| {
        h.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let d = if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        Duration::from_secs_f64((ms / 1000.0).max(0.0))
    } else {
        let v = text("retry-after")?;
        match v.parse::<f64>() {
            Ok(s) if s.is_finite() => Duration::from_secs_f64(s.max(0.0)),
            _ => {
                let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
                (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default()
            }
        }
    };
    Some(d.min(Duration::from_secs(300)))
}

/// Classifies an upstream error answer.
fn classify(header: &ResponseHeader, body: &[u8]) -> FailureClass {
    let status = header.status.as_u16();
    if status == 429 {
        return FailureClass::Status429 {
            retry_after: retry_after(header),
        };
    }
    if status >= 500 {
        return FailureClass::Status5xx;
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    const POLICY: [&str; 5] = [
        "content_filter",
        "content_policy",
        "content policy",
        "responsibleaipolicyviolation",
        "safety system",
    ];
    const CONTEXT: [&str; 5] = [
        "context_length_exceeded",
        "maximum context length",
        "context window",
        "context length",
        "prompt is too long",
    ];
    if status == 400 && POLICY.iter().any(|p| text.contains(p)) {
        FailureClass::ContentPolicy
    } else if status == 400 && CONTEXT.iter().any(|p| text.contains(p)) {
        FailureClass::ContextLength
    } else {
        FailureClass::Other4xx
    }
}

/// Waits for `fut` unless the client goes away first (`None` then).
async fn unless_client_leaves<F: std::future::Future>(
    session: &mut Session,
    fut: F,
) -> Option<F::Output> {
    tokio::select! {
        out = fut => Some(out),
        _ = session.read_body_or_idle(true) => None,
    }
}

async fn attempt_http(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    consumer: &CompiledConsumer,
    candidate: &Candidate,
    api: Api,
    body: &JsonBody,
) -> Outcome {
    let reg = &candidate.registry;
    let request = match providers::build(reg, api, &candidate.model, body) {
        Ok(r) => r,
        Err(e) => return local(e),
    };
    let Some(endpoint) = reg.endpoint.as_ref() else {
        return local(ProxyError::Internal(format!(
            "registry `{}` has no base_url",
            reg.name
        )));
    };
    let addr = match gw.upstream.resolve(endpoint).await {
        Ok(a) => a,
        Err(e) => return failed(FailureClass::ConnectError, e),
    };
    let peer = gw.upstream.peer(endpoint, addr, &reg.timeouts);
    let timeouts = reg.timeouts;
    let deadline = Instant::now() + timeouts.total;
    let left = |cap: Duration| cap.min(deadline.saturating_duration_since(Instant::now()));

    let header = (|| {
        let method = if api == Api::Models { "GET" } else { "POST" };
        let mut h = RequestHeader::build(method, request.path.as_bytes(), Some(16))?;
        h.insert_header("host", endpoint.authority())?;
        h.insert_header("content-type", "application/json")?;
        h.insert_header("content-length", request.body.len().to_string())?;
        h.insert_header("accept-encoding", "identity")?;
        h.insert_header("x-request-id", ctx.request_id.as_str())?;
        for name in FORWARDED_REQUEST_HEADERS {
            if let Some(v) = session.req_header().headers.get(name) {
                h.insert_header(name, v.clone())?;
            }
        }
        for (k, v) in request.headers.iter().chain(consumer.headers.iter()) {
            h.insert_header(k.clone(), v.clone())?;
        }
        Ok::<_, Box<pingora::Error>>(h)
    })();
    let Ok(header) = header else {
        return local(ProxyError::Internal(
            "cannot build the upstream request".into(),
        ));
    };

    // A pooled connection may have been closed by the upstream meanwhile: then the exchange
    // fails before any response byte, and one fresh connection is tried.
    let sent_at = Instant::now();
    let mut up: Option<HttpSession> = None;
    for _ in 0..2 {
        let (mut conn, reused) = match gw.upstream.connect(&peer).await {
            Ok(c) => c,
            Err(e) => return transport_failure(&reg.name, &e, false),
        };
        let exchange = async {
            conn.write_request_header(Box::new(header.clone())).await?;
            conn.write_request_body(request.body.clone(), true).await?;
            conn.finish_request_body().await?;
            conn.read_response_header().await
        };
        match unless_client_leaves(
            session,
            tokio::time::timeout(left(timeouts.first_byte), exchange),
        )
        .await
        {
            None => return Outcome::Done { ok: true }, // the client left; dropping `conn` cancels
            Some(Err(_)) => {
                return failed(
                    FailureClass::Timeout,
                    ProxyError::UpstreamTimeout(format!(
                        "registry `{}` sent no response within {} ms",
                        reg.name,
                        timeouts.first_byte.as_millis()
                    )),
                )
            }
            Some(Ok(Err(e))) if reused => {
                tracing::debug!(error = %e, "pooled upstream connection failed; retrying on a fresh one");
            }
            Some(Ok(Err(e))) => return transport_failure(&reg.name, &e, true),
            Some(Ok(Ok(()))) => {
                up = Some(conn);
                break;
            }
        }
    }
    let Some(mut up) = up else {
        return failed(
            FailureClass::Reset,
            ProxyError::UpstreamUnavailable(format!(
                "registry `{}` closed the connection",
                reg.name
            )),
        );
    };
    ctx.upstream_latency = Some(sent_at.elapsed());
    let Some(upstream_resp) = up.response_header().cloned() else {
        return failed(
            FailureClass::Reset,
            ProxyError::UpstreamUnavailable("no response header".into()),
        );
    };

    if upstream_resp.status.as_u16() >= 400 {
        // Read the error whole (bounded) so it can be classified and, if retried, never shown.
        let mut buf = BytesMut::new();
        loop {
            match tokio::time::timeout(left(timeouts.stream_idle), up.read_response_body()).await {
                Ok(Ok(Some(chunk))) if buf.len() + chunk.len() <= MAX_ERROR_BODY => {
                    buf.extend_from_slice(&chunk)
                }
                Ok(Ok(None)) => break,
                _ => {
                    return failed(
                        FailureClass::Reset,
                        ProxyError::UpstreamUnavailable(format!(
                            "registry `{}` answered {} with an unreadable body",
                            reg.name,
                            upstream_resp.status.as_u16()
                        )),
                    )
                }
            }
        }
        gw.upstream.release(up, &peer).await;
        let body = buf.freeze();
        return Outcome::Failed(Failure {
            class: classify(&upstream_resp, &body),
            reply: Reply::Upstream {
                header: Box::new(upstream_resp),
                body,
            },
        });
    }

    ctx.status = upstream_resp.status.as_u16();
    let is_sse = upstream_resp
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let resp = (|| {
        let mut resp = client_header(&upstream_resp)?;
        match upstream_resp.headers.get("content-length") {
            Some(cl) if !is_sse => resp.insert_header("content-length", cl.clone())?,
            _ => set_streaming_framing(session, &mut resp)?,
        }
        if is_sse {
            resp.insert_header("cache-control", "no-cache")?;
            resp.insert_header("x-accel-buffering", "no")?;
        }
        gateway_headers(&mut resp, ctx)?;
        Ok::<_, Box<pingora::Error>>(resp)
    })();
    let Ok(resp) = resp else {
        return failed(
            FailureClass::Reset,
            ProxyError::UpstreamUnavailable("the upstream sent an unusable header".into()),
        );
    };
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        return Outcome::Done { ok: true };
    }

    // Relay the body as it arrives.
    // Chat streams are checked for completeness; others (Responses API) are relayed as they are.
    let mut check = (is_sse && api == Api::ChatCompletions).then(OpenAiStreamCheck::default);
    let failure = loop {
        let read = unless_client_leaves(
            session,
            tokio::time::timeout(left(timeouts.stream_idle), up.read_response_body()),
        )
        .await;
        let chunk = match read {
            None => return Outcome::Done { ok: true }, // the client left: drop `up`, cancelling
            Some(Err(_)) => {
                break format!(
                    "registry `{}` sent nothing for {} ms",
                    reg.name,
                    timeouts.stream_idle.as_millis()
                )
            }
            Some(Ok(Err(e))) => {
                break format!(
                    "registry `{}` failed mid-response: {}",
                    reg.name,
                    e.etype().as_str()
                )
            }
            Some(Ok(Ok(None))) => {
                if let Some(c) = &check {
                    match c.at_end() {
                        End::Complete => {}
                        End::AddDone => {
                            let _ = session
                                .write_response_body(
                                    Some(Bytes::from_static(b"data: [DONE]\n\n")),
                                    false,
                                )
                                .await;
                        }
                        End::Cut => {
                            break format!(
                                "registry `{}` ended the stream before it was complete",
                                reg.name
                            )
                        }
                    }
                }
                let _ = session.write_response_body(None, true).await;
                gw.upstream.release(up, &peer).await;
                return Outcome::Done { ok: true };
            }
            Some(Ok(Ok(Some(chunk)))) => chunk,
        };
        let out = match &mut check {
            None => chunk,
            Some(c) => match c.feed(&chunk) {
                Ok(events) => events,
                Err(m) => break format!("registry `{}` sent a malformed event: {m}", reg.name),
            },
        };
        if !out.is_empty() && session.write_response_body(Some(out), false).await.is_err() {
            return Outcome::Done { ok: true };
        }
    };
    // Bytes already reached the client: end with an error it cannot mistake for a complete
    // answer (an in-band event on streams; a cut connection otherwise).
    tracing::warn!(request_id = %ctx.request_id, error = %failure, "upstream failed mid-response");
    if is_sse {
        // The error event and the chunked end keep the framing whole: the connection stays usable.
        let _ = session
            .write_response_body(Some(stream_error_event(ctx.format, &failure)), false)
            .await;
        let _ = session.write_response_body(None, true).await;
    } else {
        // A cut body must not look complete: close without the final chunk.
        session.set_keepalive(None);
        session.shutdown().await;
    }
    Outcome::Done { ok: false }
}

/// How a pass-through OpenAI stream ended.
enum End {
    Complete,
    /// Finished (a finish_reason was seen) but without `[DONE]`: add it.
    AddDone,
    Cut,
}

/// Watches a pass-through OpenAI chat stream: forwards whole events only (byte for byte), and
/// knows whether it saw `[DONE]` and a finish, and whether an event is malformed.
#[derive(Default)]
struct OpenAiStreamCheck {
    parser: SseParser,
    finished: bool,
    done: bool,
}

#[derive(serde::Deserialize)]
struct ChunkPeek<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoicePeek<'a>>,
}

#[derive(serde::Deserialize)]
struct ChoicePeek<'a> {
    #[serde(default, borrow)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

impl OpenAiStreamCheck {
    /// The bytes of the events this chunk completed.
    fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, String> {
        let events = self
            .parser
            .feed(chunk)
            .map_err(|_| "not UTF-8".to_string())?;
        let mut out = BytesMut::new();
        for (event, raw) in events {
            if let Some(data) = &event.data {
                if data.trim() == "[DONE]" {
                    self.done = true;
                } else if !self.done {
                    let peek: ChunkPeek =
                        serde_json::from_str(data).map_err(|_| "not JSON".to_string())?;
                    if peek.choices.iter().any(|c| c.finish_reason.is_some()) {
                        self.finished = true;
                    }
                }
            }
            out.extend_from_slice(&raw);
        }
        Ok(out.freeze())
    }

    fn at_end(&self) -> End {
        if self.done {
            End::Complete
        } else if self.finished && self.parser.pending() == 0 {
            End::AddDone
        } else {
            End::Cut
        }
    }
}
