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
//!
//! The request body is held only while it may be sent again: once an answer is committed to
//! the client it is dropped, with the copy rendered for the provider, so an open stream does
//! not keep its prompt.

use super::body::JsonBody;
use super::error::ProxyError;
use super::relay::{capped, End, Relay, Source};
use super::{Gateway, RequestCtx};
use crate::entities::registry::Provider;
use crate::policy::{CompiledPolicy, Guardrail};
use crate::providers::{self, mock, Api, Translation, UpstreamRequest, Wire};
use crate::routing::health::{InFlight, DEFAULT_FAILURE_THRESHOLD};
use crate::routing::plan::{FailureClass, Plan};
use crate::routing::select::cooldown_of;
use crate::routing::Candidate;
use crate::snapshot::{CompiledConsumer, CompiledRouting, Endpoint};
use crate::telemetry::metrics::{ATTEMPTS, FALLBACK_ATTEMPTS};
use crate::upstream::send_request;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts as ReqParts;
use http::response::Parts as RespParts;
use http::StatusCode;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::ServerSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType::InvalidHTTPHeader;
use pingora::OrErr;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Client request headers passed upstream; everything else (credentials, cookies, hop-by-hop
/// headers, the client's encoding preferences) stays at the gateway.
static FORWARDED_REQUEST_HEADERS: [HeaderName; 4] = [
    header::ACCEPT,
    header::USER_AGENT,
    HeaderName::from_static("openai-beta"),
    HeaderName::from_static("x-stainless-lang"),
];

/// Upstream response headers not relayed: hop-by-hop and framing (the gateway re-frames).
/// The upstream's `x-request-id` goes on as `x-upstream-request-id`.
static DROPPED_RESPONSE_HEADERS: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    HeaderName::from_static("proxy-connection"),
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::CONTENT_LENGTH,
];
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
static X_REGISTRY: HeaderName = HeaderName::from_static("x-switchyard-registry");
static X_MODEL: HeaderName = HeaderName::from_static("x-switchyard-model");
static X_ATTEMPTS: HeaderName = HeaderName::from_static("x-switchyard-attempts");
static X_UPSTREAM_LATENCY: HeaderName = HeaderName::from_static("x-switchyard-upstream-latency");
static X_PROXY_LATENCY: HeaderName = HeaderName::from_static("x-switchyard-proxy-latency");

/// Largest upstream error body read for classification.
const MAX_ERROR_BODY: usize = 1 << 20;

/// What the client gets if a failed attempt is the last one.
enum Reply {
    Error(ProxyError),
    Upstream {
        header: Box<ResponseHeader>,
        body: Bytes,
        /// The error body is in the provider's format; the client may need its own.
        translation: Option<Translation>,
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
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    consumer: &CompiledConsumer,
    routing: &CompiledRouting,
    api: Api,
    body: &mut JsonBody,
    candidates: Vec<Candidate>,
) -> Result<(), ProxyError> {
    let ordered = gw.selector.order(routing.algorithm, candidates, &gw.health);
    let mut plan = Plan::new(routing, ordered, &gw.health, ctx.started);
    let mut last: Option<Failure> = None;
    let mut wait = Duration::ZERO;
    loop {
        // Not `while let`: its scrutinee would stay in the state across the attempt.
        let Some(cand) = plan.current().cloned() else {
            break;
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        ctx.attempts += 1;
        ctx.registry = Some(cand.registry.name.clone());
        ctx.model = Some([cand.registry.provider.as_str(), "/", &cand.model].concat());
        ctx.model_label = if routing.knows_model(&cand.registry, &cand.model) {
            cand.model.clone()
        } else {
            "other".into()
        };
        ctx.upstream_latency = None;
        if ctx.attempts > 1 {
            FALLBACK_ATTEMPTS
                .with_label_values(&[&cand.registry.name])
                .inc();
        }
        let health = gw.health.of(&cand.registry.id);
        let threshold = cand
            .registry
            .spec
            .circuit_breaker
            .map_or(DEFAULT_FAILURE_THRESHOLD, |cb| cb.failure_threshold);
        let started = Instant::now();
        let in_flight = health.start(cooldown_of(&cand));
        let outcome = match cand.registry.provider {
            // Boxed: the built-in mock's state is not carried by every provider's request.
            Provider::Mock => {
                let outcome =
                    Box::pin(attempt_mock(session, ctx, consumer, &cand, api, body)).await;
                drop(in_flight);
                outcome
            }
            _ => attempt_http(gw, session, ctx, consumer, &cand, api, body, in_flight).await,
        };
        let latency = ctx.upstream_latency.unwrap_or_else(|| started.elapsed());
        let outcome_label = match &outcome {
            Outcome::Done { ok: true } => "success",
            Outcome::Done { ok: false } => "failed_mid_response",
            Outcome::Failed(f) => f.class.label(),
        };
        ATTEMPTS
            .with_label_values(&[&cand.registry.name, outcome_label])
            .inc();
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
        Some(Reply::Upstream {
            header,
            body,
            translation,
        }) => {
            ctx.status = header.status.as_u16();
            let body = match translation {
                Some(t) => {
                    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    let error_type = header
                        .headers
                        .get("x-amzn-errortype")
                        .and_then(|v| v.to_str().ok());
                    let out = crate::translate::error(t, ctx.status, &v, error_type);
                    Bytes::from(out.to_string())
                }
                None => body,
            };
            write_whole(session, ctx, header, body, translation.is_some()).await;
            Ok(())
        }
        Some(Reply::Error(e)) => Err(e),
        None => Err(ProxyError::UpstreamUnavailable(
            "no registry is available for this request".into(),
        )),
    }
}

/// The gateway's own response headers (SPEC §3 step 10), then the response header.
///
/// Headers are set on `http`'s map with names built once: Pingora's `insert_header` parses
/// each name again and keeps a second, case-preserving map, which cost more than the rest of
/// the response path. Names go out lower-case (common ones titled), as HTTP/2 sends them.
/// A value that cannot be a header (a model name with a control character) is left out.
fn with_gateway_headers(mut parts: RespParts, ctx: &RequestCtx) -> ResponseHeader {
    let upstream = ctx.upstream_latency.unwrap_or_default();
    let proxy = ctx.started.elapsed().saturating_sub(upstream);
    let h = &mut parts.headers;
    h.reserve(6 + ctx.rate_headers.len());
    let text = |v: &str| HeaderValue::from_str(v).ok();
    let ms = |d: Duration| HeaderValue::from(d.as_millis() as u64);
    let values = [
        (&X_REQUEST_ID, text(&ctx.request_id)),
        (&X_REGISTRY, text(ctx.registry.as_deref().unwrap_or(""))),
        (&X_MODEL, text(ctx.model.as_deref().unwrap_or(""))),
        (&X_ATTEMPTS, Some(HeaderValue::from(ctx.attempts))),
        (&X_UPSTREAM_LATENCY, Some(ms(upstream))),
        (&X_PROXY_LATENCY, Some(ms(proxy))),
    ];
    for (name, value) in values {
        if let Some(v) = value {
            h.insert(name.clone(), v);
        }
    }
    for (k, v) in &ctx.rate_headers {
        h.insert(k.clone(), v.clone());
    }
    ResponseHeader::from(parts)
}

/// The upstream's header as the client gets it: hop-by-hop and framing headers dropped.
fn client_parts(upstream: ResponseHeader) -> RespParts {
    let mut parts = RespParts::from(upstream);
    let h = &mut parts.headers;
    for name in &DROPPED_RESPONSE_HEADERS {
        h.remove(name);
    }
    if let Some(id) = h.remove(&X_REQUEST_ID) {
        h.insert(X_UPSTREAM_REQUEST_ID.clone(), id);
    }
    parts
}

/// An empty response header with `status`.
fn parts_with(status: u16) -> RespParts {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    parts
}

/// Writes a buffered upstream answer (the last error of a failed plan).
async fn write_whole(
    session: &mut ServerSession,
    ctx: &RequestCtx,
    header: Box<ResponseHeader>,
    body: Bytes,
    translated: bool,
) {
    let mut parts = client_parts(*header);
    if translated {
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let resp = with_gateway_headers(parts, ctx);
    if session.write_response_header(Box::new(resp)).await.is_ok() {
        let _ = session.write_response_body(body, true).await;
    }
}

/// Maps a Pingora error before any response byte to a failure class and client error.
fn transport_failure(reg: &str, e: &pingora::Error, connected: bool) -> Outcome {
    use pingora::ErrorType::*;
    match e.etype() {
        TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup => failed(
            FailureClass::ConnectError,
            ProxyError::UpstreamUnavailable(format!(
                "TLS with registry `{reg}` failed: its certificate is not trusted, has expired or names another host"
            )),
        ),
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
    session: &mut ServerSession,
    fut: F,
) -> Option<F::Output> {
    tokio::select! {
        out = fut => Some(out),
        _ = session.read_body_or_idle(true) => None,
    }
}

/// One attempt on an HTTP registry: send, then relay a committed answer.
///
/// An open stream keeps this future for as long as it lasts, so what only sending needs (the
/// request rendered for the provider, the upstream's own header, the exchange's futures) lives
/// in `send`, which has returned by then.
///
/// `in_flight` ends as soon as the upstream's part is over, before its connection goes back
/// to the pool: selection reads the count, and the admin status shows it.
#[allow(clippy::too_many_arguments)]
async fn attempt_http(
    gw: &Gateway,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    consumer: &CompiledConsumer,
    candidate: &Candidate,
    api: Api,
    body: &mut JsonBody,
    in_flight: InFlight,
) -> Outcome {
    let reg = &candidate.registry;
    let Sent {
        up,
        peer,
        resp,
        translation,
        is_sse,
        length,
        sent_at,
        deadline,
    } = match send(gw, session, ctx, consumer, candidate, api, body).await {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    let relay = Relay {
        api,
        translation,
        is_sse,
        length,
        guards: response_guards(consumer),
    };
    let mut src = Source::Upstream {
        up: Some(up),
        spent: None,
        pool: &gw.upstream,
        peer: &peer,
        idle: reg.timeouts.stream_idle,
        deadline,
        registry: &reg.name,
    };
    let end = relay.run(session, ctx, resp, &mut src).await;
    ctx.upstream_total = Some(sent_at.elapsed());
    drop(in_flight);
    // A completely read answer's connection goes back to the pool.
    src.recycle().await;
    match end {
        End::Complete => Outcome::Done { ok: true },
        // Dropping the source closes the connection: the upstream request is cancelled.
        End::ClientLeft => Outcome::Done { ok: true },
        End::Failed => Outcome::Done { ok: false },
    }
}

/// A committed answer: its connection with the header read, and the header for the client.
struct Sent {
    up: Box<HttpSession>,
    peer: Arc<HttpPeer>,
    resp: Box<ResponseHeader>,
    translation: Option<Translation>,
    is_sse: bool,
    length: Option<usize>,
    /// When the request left, and when the attempt must be over.
    sent_at: Instant,
    deadline: Instant,
}

/// Sends the request; the answer if it is to be relayed (status < 400), else how the attempt
/// ended (an error answer read whole and classified).
async fn send(
    gw: &Gateway,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    consumer: &CompiledConsumer,
    candidate: &Candidate,
    api: Api,
    body: &mut JsonBody,
) -> Result<Sent, Outcome> {
    let reg = &candidate.registry;
    let request = providers::build(
        reg,
        api,
        &candidate.model,
        body,
        &session.req_header().headers,
    )
    .map_err(local)?;
    let Some(endpoint) = reg.endpoint.as_ref() else {
        return Err(local(ProxyError::Internal(format!(
            "registry `{}` has no base_url",
            reg.name
        ))));
    };
    let addr = match gw.upstream.resolve(endpoint).await {
        Ok(a) => a,
        Err(e) => return Err(failed(FailureClass::ConnectError, e)),
    };
    let peer = gw.upstream.peer(endpoint, addr, &reg.timeouts, &reg.peer);
    let timeouts = reg.timeouts;
    let deadline = Instant::now() + timeouts.total;

    let header = |s: &ServerSession| upstream_header(s, ctx, consumer, api, endpoint, &request);
    let sent_at = Instant::now();
    let first_byte = capped(timeouts.first_byte, deadline);
    // Boxed: connecting and waiting for the header is a future of ~2.4 KiB, dead once the
    // answer relays.
    let exchange = exchange(
        gw,
        session,
        &peer,
        header,
        &request.body,
        &reg.name,
        first_byte,
    );
    let mut up = Box::pin(exchange).await?;
    ctx.upstream_latency = Some(sent_at.elapsed());
    let Some(upstream_resp) = up.response_header().cloned() else {
        return Err(failed(
            FailureClass::Reset,
            ProxyError::UpstreamUnavailable("no response header".into()),
        ));
    };

    if upstream_resp.status.as_u16() >= 400 {
        let Some(body) = error_body(&mut up, timeouts.stream_idle, deadline).await else {
            return Err(failed(
                FailureClass::Reset,
                ProxyError::UpstreamUnavailable(format!(
                    "registry `{}` answered {} with an unreadable body",
                    reg.name,
                    upstream_resp.status.as_u16()
                )),
            ));
        };
        gw.upstream.release(up, &peer).await;
        return Err(Outcome::Failed(Failure {
            class: classify(&upstream_resp, &body),
            reply: Reply::Upstream {
                header: Box::new(upstream_resp),
                body,
                translation: request.translation,
            },
        }));
    }

    // Committed: this answer goes to the client, so the request is never sent again.
    let translation = request.translation;
    drop(request);
    body.release();
    ctx.status = upstream_resp.status.as_u16();
    let is_sse = upstream_resp
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("text/event-stream")
                || v.starts_with("application/vnd.amazon.eventstream")
        });
    let length = upstream_resp
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok(Sent {
        up,
        peer,
        resp: Box::new(with_gateway_headers(client_parts(upstream_resp), ctx)),
        translation,
        is_sse,
        length,
        sent_at,
        deadline,
    })
}

/// The request header sent upstream; an error if a value cannot be a header.
fn upstream_header(
    session: &ServerSession,
    ctx: &RequestCtx,
    consumer: &CompiledConsumer,
    api: Api,
    endpoint: &Endpoint,
    request: &UpstreamRequest,
) -> pingora::Result<RequestHeader> {
    let method = if api == Api::Models { "GET" } else { "POST" };
    let h = RequestHeader::build_no_case(method, request.path.as_bytes(), None)?;
    // Set on `http`'s map with names built once: Pingora's `insert_header` turns every name
    // into text and parses it back. Names go out lower-case (no case-preserving map).
    let mut parts = ReqParts::from(h);
    let text = |v: &str| {
        HeaderValue::from_str(v).explain_err(InvalidHTTPHeader, |_| "invalid header value")
    };
    let h = &mut parts.headers;
    h.reserve(8 + request.headers.len() + consumer.headers().len());
    h.insert(header::HOST, text(endpoint.authority())?);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(request.body.len()),
    );
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    h.insert(X_REQUEST_ID.clone(), text(&ctx.request_id)?);
    let client = &session.req_header().headers;
    for name in &FORWARDED_REQUEST_HEADERS {
        if let Some(v) = client.get(name) {
            h.insert(name.clone(), v.clone());
        }
    }
    for (k, v) in request.headers.iter().chain(consumer.headers().iter()) {
        h.insert(k.clone(), v.clone());
    }
    let sent = RequestHeader::from(parts);
    // The connection keeps the header it sent until the answer ends.
    Ok(if ctx.stream {
        super::compact::request(sent)
    } else {
        sent
    })
}

/// Sends the request and waits (up to `first_byte`) for the response header: the connection
/// with that header read, or how the attempt ended.
///
/// A pooled connection may have been closed by the upstream meanwhile: then the exchange
/// fails before any response byte, and one fresh connection is tried.
///
/// The request header is built for each try (`header`), so the common case, one try, copies
/// none.
///
/// Its own function: the connect, send and header futures, and the request header, are dead
/// once the answer relays, so they share no room with a streamed answer's state.
async fn exchange(
    gw: &Gateway,
    session: &mut ServerSession,
    peer: &HttpPeer,
    header: impl Fn(&ServerSession) -> pingora::Result<RequestHeader>,
    body: &Bytes,
    registry: &str,
    first_byte: Duration,
) -> Result<Box<HttpSession>, Outcome> {
    for _ in 0..2 {
        let Ok(sent) = header(session) else {
            return Err(local(ProxyError::Internal(
                "cannot build the upstream request".into(),
            )));
        };
        let (mut conn, reused) = match gw.upstream.connect(peer).await {
            Ok(c) => c,
            Err(e) => return Err(transport_failure(registry, &e, false)),
        };
        let round_trip = async {
            send_request(&mut conn, Box::new(sent), body.clone()).await?;
            conn.read_response_header().await
        };
        match unless_client_leaves(session, pingora::time::timeout(first_byte, round_trip)).await {
            // The client left; dropping `conn` cancels the upstream request.
            None => return Err(Outcome::Done { ok: true }),
            Some(Err(_)) => {
                return Err(failed(
                    FailureClass::Timeout,
                    ProxyError::UpstreamTimeout(format!(
                        "registry `{registry}` sent no response within {} ms",
                        first_byte.as_millis()
                    )),
                ))
            }
            Some(Ok(Err(e))) if reused => {
                tracing::debug!(error = %e, "pooled upstream connection failed; retrying on a fresh one");
            }
            Some(Ok(Err(e))) => return Err(transport_failure(registry, &e, true)),
            Some(Ok(Ok(()))) => return Ok(conn),
        }
    }
    Err(failed(
        FailureClass::Reset,
        ProxyError::UpstreamUnavailable(format!("registry `{registry}` closed the connection")),
    ))
}

/// An error answer's body, read whole (bounded) so it can be classified and, if retried,
/// never shown; `None` if it is larger, stalls for `idle`, passes `deadline` or breaks.
async fn error_body(up: &mut HttpSession, idle: Duration, deadline: Instant) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    loop {
        match pingora::time::timeout(capped(idle, deadline), up.read_response_body()).await {
            Ok(Ok(Some(chunk))) if buf.len() + chunk.len() <= MAX_ERROR_BODY => {
                buf.extend_from_slice(&chunk)
            }
            Ok(Ok(None)) => return Some(buf.freeze()),
            _ => return None,
        }
    }
}

/// The consumer's guardrails that apply to answers.
fn response_guards(consumer: &CompiledConsumer) -> Vec<&Guardrail> {
    consumer
        .policies
        .iter()
        .filter_map(|p| match &**p {
            CompiledPolicy::Guardrail(g) if g.on_response() => Some(g),
            _ => None,
        })
        .collect()
}

async fn attempt_mock(
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    consumer: &CompiledConsumer,
    candidate: &Candidate,
    api: Api,
    body: &mut JsonBody,
) -> Outcome {
    // The mock speaks OpenAI: an Anthropic-format request is translated first.
    let translation = Translation::new(Wire::OpenAi, api);
    let (mock_api, mock_body) = match translation {
        Some(_) => match providers::openai_body(api, &candidate.model, body)
            .map(|b| serde_json::from_slice(&b))
        {
            Ok(Ok(v)) => (Api::ChatCompletions, v),
            Ok(Err(_)) => {
                return local(ProxyError::Internal("translation produced no JSON".into()))
            }
            Err(e) => return local(e),
        },
        None => (api, body.value()),
    };
    let usage_chunk = ctx.client_wants_usage || translation.is_some();
    let reply = match mock::answer(
        &candidate.registry,
        mock_api,
        &candidate.model,
        &mock_body,
        usage_chunk,
    ) {
        Ok(r) => r,
        Err(e) => return local(e),
    };
    // Committed, as in `attempt_http`.
    drop(mock_body);
    body.release();
    ctx.upstream_latency = Some(Duration::ZERO);
    ctx.upstream_total = Some(Duration::ZERO);
    ctx.status = reply.status;
    ctx.usage = reply.usage;
    let mut parts = parts_with(reply.status);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    let resp = Box::new(with_gateway_headers(parts, ctx));
    let is_sse = reply.content_type == "text/event-stream";
    let relay = Relay {
        api,
        translation,
        is_sse,
        length: (!is_sse).then(|| reply.chunks.iter().map(Bytes::len).sum()),
        guards: response_guards(consumer),
    };
    let mut src = Source::Mock {
        chunks: reply.chunks.into_iter(),
        delay: reply.delay,
        first: true,
    };
    match relay.run(session, ctx, resp, &mut src).await {
        End::Failed => Outcome::Done { ok: false },
        _ => Outcome::Done { ok: true },
    }
}
