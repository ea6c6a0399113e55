//! Relaying a successful answer to the client, from the upstream or the in-process mock.
//!
//! - Non-streamed bodies pass through chunk by chunk (a copy is kept, bounded, to read the
//!   usage at the end). With response guardrails they are read whole first, checked, and
//!   redacted or refused.
//! - Chat streams go event by event through the SSE parser: the usage chunk is read (and dropped
//!   when only the gateway asked for it), guardrails check and redact the content deltas (a
//!   match split across deltas counts), a finished stream without `[DONE]` gets one, and a cut,
//!   stalled or malformed stream ends with an in-band error event.
//! - Other streams (Responses API) are relayed as they come.

use super::compact;
use super::downstream::write_body;
use super::error::{ClientFormat, ProxyError};
use super::RequestCtx;
use crate::policy::guardrail::{check_whole, Delta, StreamGuard, Verdict};
use crate::policy::text::response_texts_mut;
use crate::policy::Guardrail;
use crate::providers::{Api, Translation};
use crate::stream::sse::SseParser;
use crate::telemetry::metrics::{ActiveStream, GUARDRAIL_ACTIONS};
use crate::translate::{anthropic, usage_in, usage_of, ToOpenAiStage};
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::ServerSession;
use pingora::upstreams::peer::HttpPeer;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Largest body kept to read its usage or to check it against guardrails.
const MAX_KEPT_BODY: usize = 8 << 20;

/// Where the body comes from.
pub enum Source<'a> {
    Upstream {
        /// The connection while its answer is being read.
        up: Option<Box<HttpSession>>,
        /// The connection once its answer was read to the end, until `recycle` returns it to
        /// the pool.
        spent: Option<Box<HttpSession>>,
        pool: &'a crate::upstream::Upstream,
        peer: &'a HttpPeer,
        idle: Duration,
        deadline: Instant,
        registry: &'a str,
    },
    Mock {
        chunks: std::vec::IntoIter<Bytes>,
        delay: Duration,
        first: bool,
    },
}

impl Source<'_> {
    /// The next piece of body; `Ok(None)` at its end; `Err` names the failure.
    async fn next(&mut self, session: &mut ServerSession) -> Result<Option<Bytes>, Failure> {
        match self {
            Source::Mock {
                chunks,
                delay,
                first,
            } => {
                if !*first && !delay.is_zero() {
                    tokio::time::sleep(*delay).await;
                }
                *first = false;
                Ok(chunks.next())
            }
            Source::Upstream {
                up,
                spent,
                idle,
                deadline,
                registry,
                ..
            } => {
                let Some(conn) = up.as_mut() else {
                    return Ok(None);
                };
                let wait = capped(*idle, *deadline);
                // The upstream first: once a length-delimited answer is complete its end is
                // ready at once, and the client (which has the whole answer) may already be
                // sending its next request on this connection. Polling the client then would
                // take that request's first byte and fail it.
                // The client's watch is boxed (one allocation per read): Pingora's HTTP/1 idle
                // read is 256 bytes, which an open stream's state would otherwise carry.
                let read = tokio::select! {
                    biased;
                    r = pingora::time::timeout(wait, conn.read_response_body()) => r,
                    _ = Box::pin(session.read_body_or_idle(true)) => return Err(Failure::ClientLeft),
                };
                match read {
                    Err(_) => Err(Failure::Upstream(format!(
                        "registry `{registry}` sent nothing for {} ms",
                        wait.as_millis()
                    ))),
                    Ok(Err(e)) => Err(Failure::Upstream(format!(
                        "registry `{registry}` failed mid-response: {}",
                        e.etype().as_str()
                    ))),
                    Ok(Ok(chunk)) => {
                        if chunk.is_none() || conn.response_done() {
                            *spent = up.take();
                        }
                        Ok(chunk)
                    }
                }
            }
        }
    }

    /// Returns the connection of a completely read answer to the pool.
    ///
    /// Called once the client's answer is written out, not as its last byte arrives: the
    /// release (a pool insert and a spawned idle watcher) would otherwise sit between the
    /// upstream's last byte and the client's. The client's next request on this connection
    /// is read only after this request's task returns, so it still finds the connection idle.
    pub async fn recycle(&mut self) {
        if let Source::Upstream {
            spent, pool, peer, ..
        } = self
        {
            if let Some(done) = spent.take() {
                pool.release(done, peer).await;
            }
        }
    }
}

/// `cap`, or less if `deadline` comes sooner.
pub fn capped(cap: Duration, deadline: Instant) -> Duration {
    cap.min(deadline.saturating_duration_since(Instant::now()))
}

pub enum Failure {
    ClientLeft,
    Upstream(String),
}

/// How a relay ended.
pub enum End {
    /// The whole answer reached the client (or a guardrail ended it on purpose).
    Complete,
    /// The client left; the upstream request is to be cancelled.
    ClientLeft,
    /// The upstream failed after bytes reached the client.
    Failed,
}

/// The in-band error that ends a stream after its first byte.
pub fn stream_error_event(format: ClientFormat, code: &str, message: &str) -> Bytes {
    let m = Value::String(message.to_string());
    Bytes::from(match format {
        ClientFormat::OpenAi => format!(
            "data: {{\"error\":{{\"message\":{m},\"type\":\"api_error\",\"code\":\"{code}\",\"param\":null}}}}\n\n"
        ),
        ClientFormat::Anthropic => format!(
            "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"api_error\",\"message\":{m}}}}}\n\n"
        ),
    })
}

fn framing(
    session: &ServerSession,
    resp: &mut ResponseHeader,
    length: Option<usize>,
) -> pingora::Result<()> {
    match length {
        Some(n) => resp.insert_header("content-length", n),
        None if !session.is_http2() => resp.insert_header("transfer-encoding", "chunked"),
        None => Ok(()),
    }
}

pub struct Relay<'g> {
    pub api: Api,
    /// When the provider speaks another format than the client.
    pub translation: Option<Translation>,
    pub is_sse: bool,
    /// The upstream's content-length, for pass-through bodies.
    pub length: Option<usize>,
    /// Response guardrails of the consumer.
    pub guards: Vec<&'g Guardrail>,
}

impl Relay<'_> {
    /// Writes the header (framing added) and relays the body from `src`.
    pub async fn run(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        resp: Box<ResponseHeader>,
        src: &mut Source<'_>,
    ) -> End {
        // The paths other than plain and chat streams are boxed: an open stream keeps this
        // future for its lifetime, so it is only as large as the streams' own state.
        if self.is_sse {
            let Ok(resp) = stream_header(session, resp, self.translation.is_some()) else {
                return End::Failed;
            };
            if let Err(end) = send_header(session, resp).await {
                return end;
            }
            let _active = ActiveStream::start();
            // A provider in another format goes through OpenAI chat chunks first (boxed: most
            // streams pass through and need no stage).
            let mut stage = self
                .translation
                .and_then(|t| ToOpenAiStage::new(t.upstream, model_of(ctx)))
                .map(Box::new);
            return match (self.translation.map(|t| t.client), self.api) {
                (Some(ClientFormat::Anthropic), _) => {
                    Box::pin(self.anthropic_stream(session, ctx, src, &mut stage)).await
                }
                (_, Api::ChatCompletions) => self.chat_stream(session, ctx, src, &mut stage).await,
                _ => self.raw(session, ctx, src, true).await,
            };
        }
        if let Some(t) = self.translation {
            return Box::pin(self.translated_whole(session, ctx, resp, src, t)).await;
        }
        if self.guards.is_empty() {
            if let Err(end) = write_header(session, resp, self.length).await {
                return end;
            }
            return self.raw(session, ctx, src, false).await;
        }
        Box::pin(self.checked_whole(session, ctx, resp, src)).await
    }

    /// Relays the body as it comes, keeping its chunks (bounded) for the usage.
    async fn raw(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        src: &mut Source<'_>,
        sse: bool,
    ) -> End {
        let mut kept = (!sse).then(Kept::default);
        loop {
            match src.next(session).await {
                Ok(Some(chunk)) => {
                    if kept.as_mut().is_some_and(|k| !k.push(&chunk)) {
                        kept = None;
                    }
                    if write_body(session, Some(chunk), false).await.is_err() {
                        return End::ClientLeft;
                    }
                }
                Ok(None) => {
                    // The answer out first: the client does not wait for the usage read.
                    let _ = write_body(session, None, true).await;
                    if let Some(k) = kept {
                        ctx.usage = ctx.usage.or(k.usage());
                    }
                    return End::Complete;
                }
                Err(f) => return self.fail(session, ctx, f, sse).await,
            }
        }
    }

    async fn fail(
        &self,
        session: &mut ServerSession,
        ctx: &RequestCtx,
        f: Failure,
        sse: bool,
    ) -> End {
        let Failure::Upstream(message) = f else {
            return End::ClientLeft;
        };
        tracing::warn!(request_id = %ctx.request_id, error = %message, "upstream failed mid-response");
        if sse {
            // The error event and the chunked end keep the framing whole; the connection stays usable.
            let event = stream_error_event(ctx.format, "upstream_stream_error", &message);
            let _ = write_body(session, Some(event), false).await;
            let _ = write_body(session, None, true).await;
        } else {
            // A cut body must not look complete: close without the final chunk.
            session.set_keepalive(None);
            session.shutdown().await;
        }
        End::Failed
    }

    /// Reads a non-streamed answer whole (at most `MAX_KEPT_BODY`) in order to `purpose` it;
    /// on failure the client has been answered and the error says how the relay ended.
    async fn read_whole(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        src: &mut Source<'_>,
        purpose: &str,
    ) -> Result<Bytes, End> {
        let mut body = BytesMut::new();
        loop {
            match src.next(session).await {
                Ok(Some(c)) if body.len() + c.len() <= MAX_KEPT_BODY => body.extend_from_slice(&c),
                Ok(Some(_)) => {
                    let e = ProxyError::UpstreamUnavailable(format!(
                        "the answer is too large to {purpose}"
                    ));
                    return Err(self.refuse(session, ctx, e).await);
                }
                Ok(None) => return Ok(body.freeze()),
                Err(Failure::ClientLeft) => return Err(End::ClientLeft),
                Err(Failure::Upstream(m)) => {
                    return Err(self
                        .refuse(session, ctx, ProxyError::UpstreamUnavailable(m))
                        .await)
                }
            }
        }
    }

    /// A non-streamed answer under response guardrails: read whole, checked, then sent.
    async fn checked_whole(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        resp: Box<ResponseHeader>,
        src: &mut Source<'_>,
    ) -> End {
        let mut out = match self
            .read_whole(session, ctx, src, "check against guardrails")
            .await
        {
            Ok(body) => body,
            Err(end) => return end,
        };
        if let Ok(mut v) = serde_json::from_slice::<Value>(&out) {
            ctx.usage = usage_of(&v);
            match self.check(&mut v, ctx) {
                Err(e) => return self.refuse(session, ctx, e).await,
                Ok(true) => out = Bytes::from(v.to_string()),
                Ok(false) => {}
            }
        }
        send_whole(session, resp, out).await
    }

    /// Runs an OpenAI-shaped answer through the response guardrails: redacts in place
    /// (`Ok(true)` if it changed) or refuses it.
    fn check(&self, v: &mut Value, ctx: &RequestCtx) -> Result<bool, ProxyError> {
        let verdict = check_whole(&self.guards, v, response_texts_mut, |g, action| {
            if let Some(c) = &ctx.consumer {
                GUARDRAIL_ACTIONS
                    .with_label_values(&[c.gateway_name.as_str(), &c.name, &g.name, action])
                    .inc();
            }
        });
        match verdict {
            Verdict::Blocked(g) => Err(ProxyError::ContentBlocked(format!(
                "the answer matched guardrail `{}`",
                g.name
            ))),
            Verdict::Redacted => Ok(true),
            Verdict::Clean => Ok(false),
        }
    }

    async fn refuse(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        e: ProxyError,
    ) -> End {
        ctx.status = e.status();
        ctx.error_code = Some(e.code());
        let _ = super::respond::error(session, ctx, &e).await;
        End::Complete
    }

    /// Ends a stream whose upstream sent an event that cannot be read.
    async fn malformed(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> End {
        let reg = ctx.registry.clone().unwrap_or_default();
        let f = Failure::Upstream(format!("registry `{reg}` sent a malformed event"));
        self.fail(session, ctx, f, true).await
    }

    /// Ends a stream that a guardrail blocked or whose upstream sent an unreadable event.
    async fn stopped(&self, session: &mut ServerSession, ctx: &mut RequestCtx, stop: Stop) -> End {
        match stop {
            Stop::Malformed => self.malformed(session, ctx).await,
            Stop::Blocked(name) => {
                let event = stream_error_event(
                    ctx.format,
                    "content_blocked",
                    &format!("the answer matched guardrail `{name}`"),
                );
                let _ = write_body(session, Some(event), false).await;
                let _ = write_body(session, None, true).await;
                ctx.error_code = Some("content_blocked");
                End::Complete
            }
        }
    }

    /// A non-streamed answer in another format: read whole, translated, then sent.
    async fn translated_whole(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        mut resp: Box<ResponseHeader>,
        src: &mut Source<'_>,
        t: Translation,
    ) -> End {
        let body = match self.read_whole(session, ctx, src, "translate").await {
            Ok(body) => body,
            Err(end) => return end,
        };
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            return self
                .refuse(
                    session,
                    ctx,
                    ProxyError::UpstreamUnavailable("the provider's answer is not JSON".into()),
                )
                .await;
        };
        let mut openai = crate::translate::response_to_openai(t.upstream, &v, model_of(ctx));
        ctx.usage = usage_of(&openai);
        // Only guardrails need it owned: a pass-through middle (OpenAI provider, Anthropic
        // client) is otherwise never copied.
        if !self.guards.is_empty() {
            if let Err(e) = self.check(openai.to_mut(), ctx) {
                return self.refuse(session, ctx, e).await;
            }
        }
        let out = crate::translate::response_for_client(t.client, openai);
        let out = Bytes::from(out.to_string());
        let _ = resp.insert_header("content-type", "application/json");
        send_whole(session, resp, out).await
    }

    /// An OpenAI chat stream relayed to an Anthropic-format client, event by event.
    async fn anthropic_stream(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        src: &mut Source<'_>,
        stage: &mut Option<Box<ToOpenAiStage>>,
    ) -> End {
        let mut parser = SseParser::new();
        let mut machine = anthropic::FromOpenAiStream::default();
        let mut finished = false;
        let mut guard = (!self.guards.is_empty()).then(|| {
            let state = ChatStream {
                guards: self.guards.clone(),
                keep_usage: true,
                ..ChatStream::default()
            };
            (state, SseParser::new())
        });
        loop {
            let chunk = match next_openai(src, session, ctx, stage).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    if !machine.done && finished {
                        let out = machine.event(None);
                        let _ = write_body(session, Some(Bytes::from(out)), false).await;
                    }
                    if machine.done {
                        let _ = write_body(session, None, true).await;
                        return End::Complete;
                    }
                    let reg = ctx.registry.clone().unwrap_or_default();
                    return self
                        .fail(
                            session,
                            ctx,
                            Failure::Upstream(format!(
                                "registry `{reg}` ended the stream before it was complete"
                            )),
                            true,
                        )
                        .await;
                }
                Err(f) => return self.fail(session, ctx, f, true).await,
            };
            let Ok(mut events) = parser.feed(&chunk) else {
                return self.malformed(session, ctx).await;
            };
            let mut out = String::new();
            // Response guardrails check the OpenAI chunks before they are translated.
            if let Some((state, reparse)) = guard.as_mut() {
                let mut checked = Vec::new();
                for (event, raw) in events {
                    match state.event(&event.data, raw, ctx) {
                        Ok(bytes) => checked.extend(reparse.feed(&bytes).unwrap_or_default()),
                        Err(stop) => {
                            for (event, _) in checked {
                                if let Some(v) =
                                    event.data.and_then(|d| serde_json::from_str(&d).ok())
                                {
                                    out += &machine.event(Some(&v));
                                }
                            }
                            let _ = write_body(session, Some(Bytes::from(out)), false).await;
                            return self.stopped(session, ctx, stop).await;
                        }
                    }
                }
                events = checked;
            }
            for (event, _) in events {
                let Some(data) = event.data else { continue };
                if data.trim() == "[DONE]" {
                    out += &machine.event(None);
                    continue;
                }
                if let Some(frames) = machine.text_fast_path(&data) {
                    out += &frames;
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(&data) else {
                    let _ = write_body(session, Some(Bytes::from(out)), false).await;
                    return self.malformed(session, ctx).await;
                };
                ctx.usage = usage_of(&v).or(ctx.usage);
                finished |= v
                    .pointer("/choices/0/finish_reason")
                    .is_some_and(|f| !f.is_null());
                out += &machine.event(Some(&v));
            }
            // An empty `out` writes nothing (`write_body` skips it).
            if write_body(session, Some(Bytes::from(out)), false)
                .await
                .is_err()
            {
                return End::ClientLeft;
            }
        }
    }

    /// An OpenAI chat stream, event by event. Its rare endings (a failure, a malformed
    /// event, a guardrail stop) are boxed: the open stream's state stays the loop's own.
    async fn chat_stream(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        src: &mut Source<'_>,
        stage: &mut Option<Box<ToOpenAiStage>>,
    ) -> End {
        let mut parser = SseParser::new();
        let mut state = ChatStream {
            guards: self.guards.clone(),
            ..ChatStream::default()
        };
        loop {
            let chunk = match next_openai(src, session, ctx, stage).await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    if state.done {
                        let _ = write_body(session, None, true).await;
                        return End::Complete;
                    }
                    if state.finished && parser.pending() == 0 {
                        let _ = write_body(
                            session,
                            Some(Bytes::from_static(b"data: [DONE]\n\n")),
                            false,
                        )
                        .await;
                        let _ = write_body(session, None, true).await;
                        return End::Complete;
                    }
                    let reg = ctx.registry.clone().unwrap_or_default();
                    let f = Failure::Upstream(format!(
                        "registry `{reg}` ended the stream before it was complete"
                    ));
                    return Box::pin(self.fail(session, ctx, f, true)).await;
                }
                Err(f) => return Box::pin(self.fail(session, ctx, f, true)).await,
            };
            let events = match parser.feed(&chunk) {
                Ok(e) => e,
                Err(_) => {
                    return Box::pin(self.malformed(session, ctx)).await;
                }
            };
            let mut out = BytesMut::new();
            let mut stop = None;
            for (event, raw) in events {
                match state.event(&event.data, raw, ctx) {
                    Ok(bytes) => out.extend_from_slice(&bytes),
                    Err(s) => {
                        stop = Some(s);
                        break;
                    }
                }
            }
            let written = write_body(session, Some(out.freeze()), false).await.is_ok();
            if let Some(stop) = stop {
                return Box::pin(self.stopped(session, ctx, stop)).await;
            }
            if !written {
                return End::ClientLeft;
            }
        }
    }
}

/// The model part of `<provider>/<model>`.
fn model_of(ctx: &RequestCtx) -> &str {
    ctx.model
        .as_deref()
        .and_then(|m| m.split_once('/'))
        .map_or("", |m| m.1)
}

/// The next piece of an answer as OpenAI chat chunks: the source's bytes, through the
/// translating stage if there is one (and what it owes once the source ends).
async fn next_openai(
    src: &mut Source<'_>,
    session: &mut ServerSession,
    ctx: &RequestCtx,
    stage: &mut Option<Box<ToOpenAiStage>>,
) -> Result<Option<Bytes>, Failure> {
    let Some(st) = stage.as_mut() else {
        return src.next(session).await;
    };
    loop {
        match src.next(session).await? {
            Some(chunk) => match st.feed(&chunk) {
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return Ok(Some(Bytes::from(out))),
                Err(_) => {
                    let reg = ctx.registry.as_deref().unwrap_or_default();
                    return Err(Failure::Upstream(format!(
                        "registry `{reg}` sent a malformed event"
                    )));
                }
            },
            None => {
                let tail = st.end();
                *stage = None;
                return Ok((!tail.is_empty()).then(|| Bytes::from(tail)));
            }
        }
    }
}

/// The chunks of a relayed answer, held (not copied) until its end to read the usage.
#[derive(Default)]
struct Kept {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Kept {
    /// `false` once the answer is larger than `MAX_KEPT_BODY`.
    fn push(&mut self, chunk: &Bytes) -> bool {
        self.len += chunk.len();
        self.chunks.push(chunk.clone());
        self.len <= MAX_KEPT_BODY
    }

    fn usage(self) -> Option<(u64, u64)> {
        match self.chunks.as_slice() {
            [one] => usage_in(one),
            many => usage_in(&many.concat()),
        }
    }
}

/// Sends a whole answer with its length.
async fn send_whole(session: &mut ServerSession, resp: Box<ResponseHeader>, out: Bytes) -> End {
    if let Err(end) = write_header(session, resp, Some(out.len())).await {
        return end;
    }
    let _ = write_body(session, Some(out), true).await;
    End::Complete
}

/// A stream's header: no caching or proxy buffering (and the SSE type for a translated one),
/// framed, compacted (it is held while the stream lasts).
fn stream_header(
    session: &ServerSession,
    mut resp: Box<ResponseHeader>,
    translated: bool,
) -> pingora::Result<Box<ResponseHeader>> {
    if translated {
        resp.insert_header(header::CONTENT_TYPE, "text/event-stream")?;
    }
    resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
    resp.insert_header("x-accel-buffering", "no")?;
    framing(session, &mut resp, None)?;
    compact::response(resp, session.is_http2())
}

/// Writes the header with the body's framing (a length, else chunked on HTTP/1).
async fn write_header(
    session: &mut ServerSession,
    mut resp: Box<ResponseHeader>,
    length: Option<usize>,
) -> Result<(), End> {
    if framing(session, &mut resp, length).is_err() {
        return Err(End::Failed);
    }
    send_header(session, resp).await
}

/// Writes a header that is already framed.
async fn send_header(session: &mut ServerSession, resp: Box<ResponseHeader>) -> Result<(), End> {
    if session.write_response_header(resp).await.is_err() {
        return Err(End::ClientLeft);
    }
    Ok(())
}

enum Stop {
    Malformed,
    Blocked(String),
}

#[derive(Default)]
struct ChatStream<'g> {
    /// Keep the usage chunk even if the client did not ask for it (a translation needs it).
    keep_usage: bool,
    finished: bool,
    done: bool,
    guards: Vec<&'g Guardrail>,
    /// One stream guard (all guardrails) per choice index.
    per_choice: HashMap<u64, StreamGuard<'g>>,
}

#[derive(serde::Deserialize)]
struct ChunkPeek<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoicePeek<'a>>,
    #[serde(default)]
    usage: Option<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct ChoicePeek<'a> {
    #[serde(default, borrow)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

impl<'g> ChatStream<'g> {
    /// What to send for one event (possibly nothing).
    fn event(
        &mut self,
        data: &Option<String>,
        raw: Bytes,
        ctx: &mut RequestCtx,
    ) -> Result<Bytes, Stop> {
        let Some(data) = data else { return Ok(raw) }; // comments and keep-alives
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(raw);
        }
        if self.done {
            return Ok(Bytes::new());
        }
        let peek: ChunkPeek = serde_json::from_str(data).map_err(|_| Stop::Malformed)?;
        let finishing = peek.choices.iter().any(|c| c.finish_reason.is_some());
        if peek.choices.is_empty() && peek.usage.is_some() {
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                ctx.usage = usage_of(&v).or(ctx.usage);
            }
            // Asked for by the gateway only: not the client's to see.
            return Ok(if ctx.client_wants_usage || self.keep_usage {
                raw
            } else {
                Bytes::new()
            });
        }
        if finishing {
            self.finished = true;
        }
        if self.guards.is_empty() {
            return Ok(raw);
        }
        self.guarded(data, raw, ctx)
    }

    /// Runs the content deltas through the guardrails, rewriting the event when they change it.
    fn guarded(&mut self, data: &str, raw: Bytes, ctx: &mut RequestCtx) -> Result<Bytes, Stop> {
        let mut v: Value = serde_json::from_str(data).map_err(|_| Stop::Malformed)?;
        let mut changed = false;
        let mut flushed: Vec<(usize, String)> = Vec::new();
        if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
            for (pos, choice) in choices.iter_mut().enumerate() {
                let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
                let guards = &self.guards;
                let guard = self
                    .per_choice
                    .entry(index)
                    .or_insert_with(|| StreamGuard::new(guards.clone()));
                if let Some(Value::String(text)) = choice.pointer_mut("/delta/content") {
                    match guard.delta(text) {
                        Delta::Blocked(name) => {
                            if let Some(c) = &ctx.consumer {
                                GUARDRAIL_ACTIONS
                                    .with_label_values(&[
                                        c.gateway_name.as_str(),
                                        &c.name,
                                        &name,
                                        "block",
                                    ])
                                    .inc();
                            }
                            return Err(Stop::Blocked(name));
                        }
                        Delta::Emit(t) => *text = t,
                    }
                    changed = true;
                }
                if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                    let rest = guard.finish();
                    if !rest.is_empty() {
                        // Held-back text goes out before the finish: in this delta if it has
                        // content, else in an event of its own just before.
                        match choice.pointer_mut("/delta/content") {
                            Some(Value::String(t)) => {
                                t.push_str(&rest);
                                changed = true;
                            }
                            _ => flushed.push((pos, rest)),
                        }
                    }
                }
            }
        }
        let mut out = BytesMut::new();
        for (pos, text) in flushed {
            // The held-back text goes out just before the finish.
            let mut extra = v.clone();
            if let Some(choices) = extra.get_mut("choices").and_then(Value::as_array_mut) {
                let choice = choices.swap_remove(pos);
                let mut c = choice;
                c["delta"] = serde_json::json!({"content": text});
                c["finish_reason"] = Value::Null;
                *choices = vec![c];
            }
            out.extend_from_slice(format!("data: {extra}\n\n").as_bytes());
        }
        if changed {
            out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
        } else {
            out.extend_from_slice(&raw);
        }
        Ok(out.freeze())
    }
}
