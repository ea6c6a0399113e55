//! Writing whole responses (health answers, model lists and client errors).

use super::error::ProxyError;
use super::RequestCtx;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;

/// Writes a complete response.
pub async fn whole(
    session: &mut ServerSession,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&str, String)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    for (k, v) in extra {
        resp.insert_header(k.to_string(), v.as_str())?;
    }
    session.write_response_header(Box::new(resp)).await?;
    session.write_response_body(body, true).await
}

pub async fn text(session: &mut ServerSession, status: u16, body: &'static str) -> Result<()> {
    whole(
        session,
        status,
        "text/plain",
        Bytes::from_static(body.as_bytes()),
        &[],
    )
    .await
}

/// A client error in the client's format, with the request id (and attempts, if any).
pub async fn error(
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    err: &ProxyError,
) -> Result<()> {
    let mut extra = vec![("x-request-id", ctx.request_id.clone())];
    if ctx.attempts > 0 {
        extra.push(("x-switchyard-attempts", ctx.attempts.to_string()));
    }
    for (k, v) in &ctx.rate_headers {
        extra.push((k.as_str(), v.to_str().unwrap_or_default().to_string()));
    }
    whole(
        session,
        err.status(),
        "application/json",
        err.body(ctx.format),
        &extra,
    )
    .await
}
