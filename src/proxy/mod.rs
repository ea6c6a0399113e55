//! The proxy listener's request path.
//!
//! `app.rs` takes each request from Pingora and calls, in order, `Gateway::serve` and
//! `Gateway::log`. `serve` runs SPEC §3's steps in order (slug → credential → body → model →
//! forward) and then relays the upstream response itself through Pingora's pooled connector
//! (`forward.rs`). Pingora's native forwarding (`ProxyHttp`) is not used: once the body has
//! been read, it can only re-send it from its 64 KiB retry buffer and silently stalls on
//! larger bodies (see `shared/notes/pingora.md` §3a). One attempt loop that owns selection,
//! forwarding, retries and stream relaying works for any body size and keeps streams
//! streaming. `log` runs last, once per request, answered or not.

mod app;
pub mod body;
pub mod compact;
mod connection;
mod downstream;
pub mod error;
mod forward;
mod relay;
mod respond;

use crate::auth;
use crate::auth::identity::{select_role, Identity};
use crate::entities::consumer::{ConsumerType, RoutingMode};
use crate::entities::policy::RateLimitKey;
use crate::lifecycle::Lifecycle;
use crate::policy::guardrail::{check_whole, Verdict};
use crate::policy::rate_limit::RateLimiter;
use crate::policy::text::request_texts_mut;
use crate::policy::{merged_limits, CompiledPolicy, Guardrail};
use crate::providers::Api;
use crate::routing::health::Health;
use crate::routing::select::Selector;
use crate::routing::{self, resolve::listable_models};
use crate::snapshot::{CompiledConsumer, CompiledRouting, Snapshot};
use crate::telemetry::access::AccessLine;
use crate::telemetry::metrics::{
    status_class, AUTH_FAILURES, GUARDRAIL_ACTIONS, PROXY_OVERHEAD, RATE_LIMITED, REQUESTS,
    REQUEST_DURATION, TIME_TO_FIRST_BYTE, TOKENS, UPSTREAM_DURATION,
};
use crate::upstream::Upstream;
pub use app::ProxyApp;
use body::JsonBody;
use bytes::{Bytes, BytesMut};
pub use connection::ProxyConnections;
use error::{ClientFormat, ProxyError};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Gateway {
    lifecycle: Arc<Lifecycle>,
    health: Arc<Health>,
    selector: Selector,
    limiter: RateLimiter,
    identity: Arc<Identity>,
    mcp: crate::mcp::McpGateway,
    upstream: Arc<Upstream>,
    max_body_bytes: usize,
}

impl Gateway {
    pub fn new(
        lifecycle: Arc<Lifecycle>,
        health: Arc<Health>,
        upstream: Upstream,
        max_body_bytes: usize,
    ) -> Self {
        Gateway {
            lifecycle,
            health,
            selector: Selector::default(),
            limiter: RateLimiter::default(),
            identity: Arc::default(),
            mcp: crate::mcp::McpGateway::default(),
            upstream: Arc::new(upstream),
            max_body_bytes,
        }
    }
}

/// Per-request state carried through the hooks; each step writes what it learned.
pub struct RequestCtx {
    pub started: Instant,
    pub request_id: String,
    pub format: ClientFormat,
    pub api: Option<Api>,
    pub consumer: Option<Arc<CompiledConsumer>>,
    /// Name of the registry that answered (or was tried last).
    pub registry: Option<String>,
    /// `<provider>/<model>` that answered.
    pub model: Option<String>,
    /// The model as a metric label (`other` unless configuration names it).
    pub model_label: String,
    /// The auth whose credential was presented (an API key's is shared with the snapshot).
    pub auth_id: Option<Arc<str>>,
    /// The token's subject (JWT `subject_claim`, introspection `sub`).
    pub subject: Option<String>,
    pub stream: bool,
    /// The client asked for OpenAI's usage chunk (else the gateway asks and drops it).
    pub client_wants_usage: bool,
    pub attempts: u32,
    /// Until the upstream's response header (time to first byte).
    pub upstream_latency: Option<Duration>,
    /// Until the upstream's response ended.
    pub upstream_total: Option<Duration>,
    /// (input, output) tokens the upstream reported.
    pub usage: Option<(u64, u64)>,
    /// `x-ratelimit-*` (and `retry-after`) headers for the response.
    pub rate_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Token rate limits to charge when the response ends: (policy, bucket key).
    pub charges: Vec<(Arc<CompiledPolicy>, String)>,
    pub status: u16,
    pub error_code: Option<&'static str>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            format: ClientFormat::OpenAi,
            api: None,
            consumer: None,
            registry: None,
            model: None,
            model_label: String::new(),
            auth_id: None,
            subject: None,
            stream: false,
            client_wants_usage: false,
            attempts: 0,
            upstream_latency: None,
            upstream_total: None,
            usage: None,
            rate_headers: Vec::new(),
            charges: Vec::new(),
            status: 0,
            error_code: None,
        }
    }
}

/// `/{slug}/v1/{api}` split apart.
fn parse_route(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (slug, rest) = rest.split_once('/')?;
    let api = rest.strip_prefix("v1/")?;
    (!slug.is_empty()).then_some((slug, api.trim_end_matches('/')))
}

/// The request id: the client's when it sent a sane one, else a fresh UUID.
fn request_id(session: &ServerSession) -> String {
    session
        .get_header("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        // From the thread's RNG: no system call per request.
        .unwrap_or_else(|| {
            uuid::Builder::from_random_bytes(rand::random())
                .into_uuid()
                .to_string()
        })
}

impl Gateway {
    /// SPEC §3 steps 1–5, then the forward loop. Errors are answered by the caller.
    async fn handle(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<(), ProxyError> {
        // The path is read (and owned) only in this block: an open stream does not keep it.
        let (api, consumer) = {
            let path = session.req_header().uri.path().to_string();
            if let Some(slug) = path
                .strip_prefix('/')
                .and_then(|p| p.strip_suffix("/mcp"))
                .filter(|s| !s.is_empty() && !s.contains('/'))
            {
                // Boxed: MCP's state is large and the chat path should not carry its size.
                return Box::pin(self.handle_mcp(session, ctx, slug)).await;
            }
            let Some((slug, api_path)) = parse_route(&path) else {
                return Err(ProxyError::NotFound(format!("no route for `{path}`")));
            };
            let api = Api::from_path(api_path);
            if api == Some(Api::Messages) {
                ctx.format = ClientFormat::Anthropic;
            }
            ctx.api = api;

            // 1. Slug.
            let (_, consumer) = self.lookup_consumer(slug, ctx).await?;
            let Some(api) = api else {
                return Err(ProxyError::NotFound(format!("no API at `/v1/{api_path}`")));
            };
            if consumer.kind == ConsumerType::Mcp {
                return Err(ProxyError::NotFound(
                    "this consumer serves MCP at /{slug}/mcp".into(),
                ));
            }
            let expected = if api == Api::Models {
                http::Method::GET
            } else {
                http::Method::POST
            };
            if session.req_header().method != expected {
                return Err(ProxyError::MethodNotAllowed(format!(
                    "use {expected} for /v1/{api_path}"
                )));
            }
            (api, consumer)
        };

        // 2. Credential (and 4. for role_based consumers, the role).
        let routing = self.authenticate(session, &consumer, ctx).await?;

        if api == Api::Models {
            let data: Vec<_> = listable_models(&routing)
                .into_iter()
                .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
                .collect();
            let body = Bytes::from(json!({"object": "list", "data": data}).to_string());
            ctx.status = 200;
            respond::whole(
                session,
                200,
                "application/json",
                body,
                &[("x-request-id", ctx.request_id.clone())],
            )
            .await
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
            return Ok(());
        }

        // 3. Body.
        let mut body = JsonBody::parse(self.read_body(session).await?)?;
        ctx.stream = body.stream;

        // 5. Model resolution.
        let candidates = routing::resolve(&routing, body.model.as_deref())?;

        // 6. Policies: limits, guardrails, rate limits.
        self.apply_policies(&consumer, api, &mut body, ctx)?;
        if api == Api::ChatCompletions && body.stream {
            // Streams report usage only when asked; ask, and drop it again if the client did not.
            let mut options = body
                .get("stream_options")
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({}));
            ctx.client_wants_usage = options
                .get("include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if !ctx.client_wants_usage {
                options["include_usage"] = json!(true);
                body.set("stream_options", &options);
            }
        }

        // 7–10: selection, forward, fallback, in the attempt loop.
        forward::run(
            self, session, ctx, &consumer, &routing, api, &mut body, candidates,
        )
        .await
    }

    /// SPEC §3 step 2 (and step 4 for role_based consumers): the credential, checked against
    /// the consumer's auths; returns the routing config to use.
    async fn authenticate(
        &self,
        session: &ServerSession,
        consumer: &Arc<CompiledConsumer>,
        ctx: &mut RequestCtx,
    ) -> Result<Arc<CompiledRouting>, ProxyError> {
        let presented = auth::presented(session.req_header()).ok_or(ProxyError::InvalidApiKey)?;
        let now = chrono::Utc::now().timestamp();
        let routing = match consumer.routing_mode {
            RoutingMode::Inline => match auth::verify_api_key(consumer, presented, now) {
                Some(key) => {
                    ctx.auth_id = Some(key.auth_id.clone());
                    consumer.routing.clone()
                }
                None if !consumer.token_auths().is_empty() => {
                    // Boxed: token checks may fetch keys, a large state the key path skips.
                    let v =
                        Box::pin(
                            self.identity
                                .verify(&self.upstream, consumer, presented, false),
                        )
                        .await?;
                    ctx.auth_id = Some(v.auth_id.into());
                    ctx.subject = v.subject;
                    consumer.routing.clone()
                }
                None => {
                    AUTH_FAILURES
                        .with_label_values(&[consumer.gateway_name.as_str(), "invalid_api_key"])
                        .inc();
                    return Err(ProxyError::InvalidApiKey);
                }
            },
            // 4. Routing config: the first of the consumer's roles named in the token.
            RoutingMode::RoleBased => {
                let v = Box::pin(
                    self.identity
                        .verify(&self.upstream, consumer, presented, true),
                )
                .await?;
                let routing = select_role(consumer, &v)?;
                ctx.auth_id = Some(v.auth_id.into());
                ctx.subject = v.subject;
                routing
            }
        };

        Ok(routing)
    }

    /// SPEC §3 step 1: the consumer at `slug`, active, from the current snapshot (once the
    /// store is loaded: a new process may still be loading it).
    async fn lookup_consumer(
        &self,
        slug: &str,
        ctx: &mut RequestCtx,
    ) -> Result<(Arc<Snapshot>, Arc<CompiledConsumer>), ProxyError> {
        if !self.lifecycle.wait_ready(Duration::from_secs(30)).await {
            return Err(ProxyError::Unavailable("the gateway is starting up".into()));
        }
        let snapshot = self.lifecycle.snapshot.load_full();
        let consumer = snapshot
            .consumers
            .get(slug)
            .cloned()
            .ok_or(ProxyError::ConsumerNotFound)?;
        ctx.consumer = Some(consumer.clone());
        if !consumer.active || !consumer.gateway_active {
            return Err(ProxyError::Forbidden("this consumer is not active".into()));
        }
        Ok((snapshot, consumer))
    }

    /// `/{slug}/mcp`: an MCP consumer's Streamable HTTP endpoint.
    async fn handle_mcp(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        slug: &str,
    ) -> Result<(), ProxyError> {
        let (snapshot, consumer) = self.lookup_consumer(slug, ctx).await?;
        if consumer.kind != ConsumerType::Mcp {
            return Err(ProxyError::NotFound(
                "this consumer is not an MCP consumer".into(),
            ));
        }
        self.authenticate(session, &consumer, ctx).await?;
        let sid = session
            .get_header("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let method = session.req_header().method.clone();
        let reply = match method {
            http::Method::POST => {
                let body = self.read_body(session).await?;
                let keys: Vec<(Arc<CompiledPolicy>, String)> = consumer
                    .policies
                    .iter()
                    .filter(|p| matches!(&***p, CompiledPolicy::RateLimit { .. }))
                    .map(|p| {
                        let key = self.rate_key(
                            p,
                            &consumer,
                            ctx.auth_id.as_deref(),
                            ctx.subject.as_deref(),
                        );
                        (p.clone(), key.into_owned())
                    })
                    .collect();
                let admit = || -> Result<(), String> {
                    for (p, key) in &keys {
                        if let CompiledPolicy::RateLimit { id, name, config } = &**p {
                            if config.requests_per_minute.is_some()
                                && self.limiter.check(id, config, key).limited
                            {
                                RATE_LIMITED
                                    .with_label_values(&[
                                        consumer.gateway_name.as_str(),
                                        &consumer.name,
                                        name,
                                    ])
                                    .inc();
                                return Err(format!("rate limit `{name}` exceeded"));
                            }
                        }
                    }
                    Ok(())
                };
                let call = crate::mcp::Call {
                    consumer: &consumer,
                    snapshot: &snapshot,
                    upstream: &self.upstream,
                    request_id: &ctx.request_id,
                    admit_tool_call: &admit,
                };
                let accepts_sse = session
                    .get_header(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("text/event-stream"));
                match self
                    .mcp
                    .post(&call, sid.as_deref(), &body, accepts_sse)
                    .await
                {
                    crate::mcp::Outcome::Reply(reply) => reply,
                    crate::mcp::Outcome::Stream(stream) => {
                        ctx.status = self.mcp.stream_call(session, &call, stream).await;
                        return Ok(());
                    }
                }
            }
            http::Method::DELETE => crate::mcp::Reply {
                status: if self.mcp.delete(&consumer, sid.as_deref()) {
                    200
                } else {
                    404
                },
                session_id: None,
                body: None,
            },
            _ => {
                return Err(ProxyError::MethodNotAllowed(
                    "use POST (and DELETE to end a session)".into(),
                ))
            }
        };
        ctx.status = reply.status;
        let body = reply
            .body
            .map(|b| Bytes::from(b.to_string()))
            .unwrap_or_default();
        let mut extra = vec![("x-request-id", ctx.request_id.clone())];
        if let Some(id) = reply.session_id {
            extra.push(("mcp-session-id", id));
        }
        respond::whole(session, reply.status, "application/json", body, &extra)
            .await
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        Ok(())
    }

    /// The bucket key of a rate-limit policy for this request (borrowed but for token subjects).
    /// It takes the request's credential and subject rather than the whole context, so the
    /// caller can still write the context's other fields while the key is borrowed.
    fn rate_key<'a>(
        &self,
        p: &CompiledPolicy,
        consumer: &'a CompiledConsumer,
        auth_id: Option<&'a str>,
        subject: Option<&str>,
    ) -> Cow<'a, str> {
        let CompiledPolicy::RateLimit { config, .. } = p else {
            return Cow::Borrowed(&consumer.id);
        };
        match config.key {
            RateLimitKey::Consumer => Cow::Borrowed(&consumer.id),
            RateLimitKey::Credential => Cow::Borrowed(auth_id.unwrap_or(&consumer.id)),
            // Without a token subject (API keys), the credential stands for it.
            RateLimitKey::Subject => match subject {
                Some(s) => Cow::Owned(format!("sub:{s}")),
                None => Cow::Borrowed(auth_id.unwrap_or(&consumer.id)),
            },
        }
    }

    fn apply_policies(
        &self,
        consumer: &CompiledConsumer,
        api: Api,
        body: &mut JsonBody,
        ctx: &mut RequestCtx,
    ) -> Result<(), ProxyError> {
        if consumer.policies.is_empty() {
            return Ok(());
        }
        if let Some(limits) = merged_limits(consumer.policies.iter().map(|p| &**p)) {
            crate::policy::limits::apply(&limits, api, body)?;
        }
        let guards: Vec<&Guardrail> = consumer
            .policies
            .iter()
            .filter_map(|p| match &**p {
                CompiledPolicy::Guardrail(g) if g.on_request() => Some(g),
                _ => None,
            })
            .collect();
        if !guards.is_empty() {
            let mut value = body.value();
            let verdict = check_whole(&guards, &mut value, request_texts_mut, |g, action| {
                GUARDRAIL_ACTIONS
                    .with_label_values(&[
                        consumer.gateway_name.as_str(),
                        &consumer.name,
                        &g.name,
                        action,
                    ])
                    .inc()
            });
            match verdict {
                Verdict::Blocked(g) => {
                    return Err(ProxyError::ContentBlocked(format!(
                        "the request matched guardrail `{}`",
                        g.name
                    )))
                }
                // Every key `request_texts_mut` reads (`system`: Anthropic's format).
                Verdict::Redacted => {
                    for key in ["messages", "input", "instructions", "system"] {
                        if let Some(v) = value.get(key) {
                            body.set(key, v);
                        }
                    }
                }
                Verdict::Clean => {}
            }
        }
        let mut limited: Option<(Duration, String)> = None;
        for p in &consumer.policies {
            let CompiledPolicy::RateLimit { id, name, config } = &**p else {
                continue;
            };
            let key = self.rate_key(p, consumer, ctx.auth_id.as_deref(), ctx.subject.as_deref());
            let d = self.limiter.check(id, config, &key);
            ctx.rate_headers.extend(d.headers);
            if d.limited {
                RATE_LIMITED
                    .with_label_values(&[consumer.gateway_name.as_str(), &consumer.name, name])
                    .inc();
                if limited.as_ref().is_none_or(|(w, _)| d.retry_after > *w) {
                    limited = Some((d.retry_after, name.clone()));
                }
            } else if config.tokens_per_minute.is_some() {
                ctx.charges.push((p.clone(), key.into_owned()));
            }
        }
        if let Some((wait, name)) = limited {
            ctx.charges.clear();
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            ctx.rate_headers
                .push((http::header::RETRY_AFTER, http::HeaderValue::from(secs)));
            return Err(ProxyError::RateLimited(format!(
                "rate limit `{name}` exceeded; retry after {secs} s"
            )));
        }
        Ok(())
    }

    /// Reads the whole body, at most `max_body_bytes`. Past the limit it keeps draining (up to
    /// a hard cap) so the client can read the 413 rather than see its upload reset.
    async fn read_body(&self, session: &mut ServerSession) -> Result<Bytes, ProxyError> {
        let limit = self.max_body_bytes;
        let hard_cap = limit.saturating_mul(4).max(64 << 20);
        let declared = session
            .get_header(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > hard_cap) {
            session.set_keepalive(None);
            return Err(ProxyError::BodyTooLarge(limit));
        }
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
        let mut total = 0usize;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    total += chunk.len();
                    if total <= limit {
                        buf.extend_from_slice(&chunk);
                    } else if total > hard_cap {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(ProxyError::InvalidRequest(format!(
                        "could not read the request body: {e}"
                    )))
                }
            }
        }
        if total > limit {
            session.set_keepalive(None);
            return Err(ProxyError::BodyTooLarge(limit));
        }
        Ok(buf.freeze())
    }

    /// Answers one request (SPEC §3), whatever the outcome. `Err` only when the answer could
    /// not be written: the connection is then not reused.
    pub(crate) async fn serve(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.started = Instant::now();
        match session.req_header().uri.path() {
            "/healthz" => return respond::text(session, 200, "ok").await,
            "/readyz" if self.lifecycle.serving() => {
                return respond::text(session, 200, "ready").await
            }
            "/readyz" if self.lifecycle.ready.load(Ordering::Acquire) => {
                return respond::text(session, 503, "draining").await
            }
            "/readyz" => return respond::text(session, 503, "loading").await,
            _ => {}
        }
        ctx.request_id = request_id(session);
        if let Err(e) = self.handle(session, ctx).await {
            ctx.status = e.status();
            ctx.error_code = Some(e.code());
            respond::error(session, ctx, &e).await?;
        }
        Ok(())
    }

    /// Metrics, token charges and the access line: once per request, answered or not.
    pub(crate) fn log(&self, ctx: &RequestCtx) {
        if ctx.request_id.is_empty() {
            return; // health checks
        }
        let total = ctx.started.elapsed();
        let (gateway, consumer) = ctx
            .consumer
            .as_ref()
            .map_or(("", ""), |c| (c.gateway_name.as_str(), &*c.name));
        let registry = ctx.registry.as_deref().unwrap_or("");
        REQUESTS
            .with_label_values(&[
                gateway,
                consumer,
                registry,
                &ctx.model_label,
                status_class(ctx.status),
            ])
            .inc();
        REQUEST_DURATION
            .with_label_values(&[gateway, consumer, registry])
            .observe(total.as_secs_f64());
        if let Some(ttfb) = ctx.upstream_latency {
            TIME_TO_FIRST_BYTE
                .with_label_values(&[registry])
                .observe(ttfb.as_secs_f64());
        }
        let upstream = ctx.upstream_total.unwrap_or_default();
        if ctx.upstream_total.is_some() {
            UPSTREAM_DURATION
                .with_label_values(&[registry])
                .observe(upstream.as_secs_f64());
        }
        PROXY_OVERHEAD
            .with_label_values(&[gateway])
            .observe(total.saturating_sub(upstream).as_secs_f64());
        let (tokens_in, tokens_out) = ctx.usage.unwrap_or_default();
        if ctx.usage.is_some() {
            // Charge first: once the token metric shows, the buckets hold the charge too.
            for (p, key) in &ctx.charges {
                if let CompiledPolicy::RateLimit { id, config, .. } = &**p {
                    self.limiter
                        .charge_tokens(id, config, key, tokens_in + tokens_out);
                }
            }
            TOKENS
                .with_label_values(&[gateway, consumer, registry, &ctx.model_label, "input"])
                .inc_by(tokens_in);
            TOKENS
                .with_label_values(&[gateway, consumer, registry, &ctx.model_label, "output"])
                .inc_by(tokens_out);
        }
        AccessLine {
            request_id: &ctx.request_id,
            gateway,
            consumer,
            api: ctx.api.map(Api::label).unwrap_or(""),
            stream: ctx.stream,
            registry,
            model: ctx.model.as_deref().unwrap_or(""),
            status: ctx.status,
            error: ctx.error_code.unwrap_or(""),
            attempts: ctx.attempts,
            tokens_in,
            tokens_out,
            ttfb_ms: ctx.upstream_latency.map_or(0, |d| d.as_millis() as u64),
            upstream_ms: upstream.as_millis() as u64,
            total_ms: total.as_millis() as u64,
        }
        .emit();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_route;

    #[test]
    fn routes_split_slug_and_api() {
        assert_eq!(
            parse_route("/abc/v1/chat/completions"),
            Some(("abc", "chat/completions"))
        );
        assert_eq!(parse_route("/abc/v1/models/"), Some(("abc", "models")));
        assert_eq!(parse_route("/abc/v2/models"), None);
        assert_eq!(parse_route("//v1/models"), None);
        assert_eq!(parse_route("/abc"), None);
    }
}
