//! The attempt loop (SPEC §3 steps 8–10): send the request to the chosen candidate, relay the
//! response to the client as it arrives, chunk by chunk (SSE streams event by event, never
//! buffered whole), with the registry's timeouts, and the gateway's response headers.
//!
//! A client that goes away mid-response cancels the upstream request: its connection is
//! dropped instead of being returned to the pool.

use super::body::JsonBody;
use super::error::{ClientFormat, ProxyError};
use super::{Gateway, RequestCtx};
use crate::entities::registry::Provider;
use crate::providers::{self, mock, Api};
use crate::routing::Candidate;
use crate::snapshot::CompiledConsumer;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
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

/// How an attempt ended.
enum Outcome {
    /// The response went to the client (wholly, or until the client left).
    Done,
    /// Failed before anything reached the client.
    Failed(ProxyError),
}

pub async fn run(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    consumer: &CompiledConsumer,
    api: Api,
    body: &JsonBody,
    candidates: Vec<Candidate>,
) -> Result<(), ProxyError> {
    let Some(candidate) = candidates.into_iter().next() else {
        return Err(ProxyError::ModelNotAllowed(
            "no registry can serve this request".into(),
        ));
    };
    ctx.attempts += 1;
    ctx.registry = Some(candidate.registry.name.clone());
    ctx.model = Some(format!(
        "{}/{}",
        candidate.registry.provider.as_str(),
        candidate.model
    ));
    let outcome = match candidate.registry.provider {
        Provider::Mock => attempt_mock(session, ctx, &candidate, api, body).await,
        _ => attempt_http(gw, session, ctx, consumer, &candidate, api, body).await,
    };
    match outcome {
        Outcome::Done => Ok(()),
        Outcome::Failed(e) => Err(e),
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
        Err(e) => return Outcome::Failed(e),
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
        return Outcome::Failed(ProxyError::Internal(
            "cannot build the response header".into(),
        ));
    };
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        return Outcome::Done;
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
            return Outcome::Done; // the client left
        }
    }
    let _ = session.write_response_body(None, true).await;
    Outcome::Done
}

/// Maps a Pingora connect/IO error before the response to the client's error.
fn upstream_error(reg: &str, e: &pingora::Error) -> ProxyError {
    use pingora::ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            ProxyError::UpstreamTimeout(format!("registry `{reg}` timed out"))
        }
        _ => ProxyError::UpstreamUnavailable(format!(
            "registry `{reg}` is unreachable: {}",
            e.etype().as_str()
        )),
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
        Err(e) => return Outcome::Failed(e),
    };
    let Some(endpoint) = reg.endpoint.as_ref() else {
        return Outcome::Failed(ProxyError::Internal(format!(
            "registry `{}` has no base_url",
            reg.name
        )));
    };
    let addr = match gw.upstream.resolve(endpoint).await {
        Ok(a) => a,
        Err(e) => return Outcome::Failed(e),
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
        return Outcome::Failed(ProxyError::Internal(
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
            Err(e) => return Outcome::Failed(upstream_error(&reg.name, &e)),
        };
        let exchange = async {
            conn.write_request_header(Box::new(header.clone())).await?;
            conn.write_request_body(request.body.clone(), true).await?;
            conn.finish_request_body().await?;
            conn.read_response_header().await
        };
        let waited = unless_client_leaves(
            session,
            tokio::time::timeout(left(timeouts.first_byte), exchange),
        )
        .await;
        match waited {
            None => return Outcome::Done, // the client left; `conn` drops, cancelling upstream
            Some(Err(_)) => {
                return Outcome::Failed(ProxyError::UpstreamTimeout(format!(
                    "registry `{}` sent no response within {} ms",
                    reg.name,
                    left(timeouts.first_byte)
                        .as_millis()
                        .max(timeouts.first_byte.as_millis())
                )))
            }
            Some(Ok(Err(e))) if reused => {
                tracing::debug!(error = %e, "pooled upstream connection failed; retrying on a fresh one");
                continue;
            }
            Some(Ok(Err(e))) => return Outcome::Failed(upstream_error(&reg.name, &e)),
            Some(Ok(Ok(()))) => {
                up = Some(conn);
                break;
            }
        }
    }
    let Some(mut up) = up else {
        return Outcome::Failed(ProxyError::UpstreamUnavailable(format!(
            "registry `{}` is unreachable",
            reg.name
        )));
    };
    ctx.upstream_latency = Some(sent_at.elapsed());

    let Some(upstream_resp) = up.response_header().cloned() else {
        return Outcome::Failed(ProxyError::UpstreamUnavailable("no response header".into()));
    };
    ctx.status = upstream_resp.status.as_u16();
    let is_sse = upstream_resp
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let resp = (|| {
        let mut resp =
            ResponseHeader::build(upstream_resp.status, Some(upstream_resp.headers.len() + 8))?;
        for (k, v) in upstream_resp.headers.iter() {
            if !DROPPED_RESPONSE_HEADERS.contains(&k.as_str()) {
                resp.append_header(k.clone(), v.clone())?;
            }
        }
        if let Some(id) = upstream_resp.headers.get("x-request-id") {
            resp.insert_header("x-upstream-request-id", id.clone())?;
        }
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
        return Outcome::Failed(ProxyError::UpstreamUnavailable(
            "the upstream sent an unusable header".into(),
        ));
    };
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        return Outcome::Done;
    }

    // Relay the body as it arrives.
    let failure = loop {
        let read = unless_client_leaves(
            session,
            tokio::time::timeout(left(timeouts.stream_idle), up.read_response_body()),
        )
        .await;
        match read {
            None => return Outcome::Done, // the client left: drop `up`, cancelling upstream
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
                let _ = session.write_response_body(None, true).await;
                gw.upstream.release(up, &peer).await;
                return Outcome::Done;
            }
            Some(Ok(Ok(Some(chunk)))) => {
                if session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
                {
                    return Outcome::Done;
                }
            }
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
    Outcome::Done
}
