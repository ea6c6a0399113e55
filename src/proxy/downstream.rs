//! Writing an answer's body to the client through a future sized for an open stream.
//!
//! A stream's relay awaits a body write for every event, so the write's future is part of
//! the request's state for as long as the stream is open (`app.rs` holds that state to a size
//! class). Pingora's `ServerSession::write_response_body` awaits, in one future, whichever of
//! its four session kinds the client has: 768 bytes, most of them for subrequests, which
//! switchyard never serves. `write_body` does what it does, but its future is only the write
//! of the client's own kind: HTTP/1 and HTTP/2 in place, the other kinds boxed.

use bytes::Bytes;
use futures_util::future::{ready, Either};
use pingora::protocols::http::ServerSession;
use std::future::Future;

/// `ServerSession::write_response_body` (`None` with `end` finishes the body).
pub fn write_body(
    session: &mut ServerSession,
    body: Option<Bytes>,
    end: bool,
) -> impl Future<Output = pingora::Result<()>> + Send + '_ {
    let data = match body {
        Some(data) if !data.is_empty() => data,
        // Nothing to write: an empty chunk would end an HTTP/1 chunked body.
        _ if !end => return Either::Left(ready(Ok(()))),
        _ => Bytes::new(),
    };
    Either::Right(match session {
        ServerSession::H2(h2) => Either::Left(h2.write_body(data, end)),
        ServerSession::H1(h1) => Either::Right(Either::Left(async move {
            if !data.is_empty() {
                h1.write_body(&data).await?;
            }
            if end {
                h1.finish_body().await?;
            }
            Ok(())
        })),
        other => Either::Right(Either::Right(Box::pin(
            other.write_response_body(data, end),
        ))),
    })
}
