//! The admin listener (SPEC §2): a Pingora `ServeHttp` app on loopback.
//!
//! `GET /healthz` and `GET /metrics` are open; everything else needs the admin token. Routes:
//! - `/v1/gateways[/{gid}]`
//! - `/v1/gateways/{gid}/{registries|auths|roles|policies|consumers}[/{id}]`
//! - `/v1/gateways/{gid}/consumers/{id}/{registries|roles|auths|policies}/{target}` (attach/detach)
//! - `/v1/export`, `/v1/import`, `/v1/status`
//!
//! Store work runs on the blocking pool (sled calls and the flush block).

pub mod token;

pub use token::AdminToken;

use crate::entities::{by_kind, Kind};
use crate::error::ApiError;
use crate::lifecycle::Lifecycle;
use crate::routing::health::{Health, DEFAULT_COOLDOWN};
use crate::store::{ops, Store};
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::Value;
use std::sync::Arc;

pub struct AdminApp {
    lifecycle: Arc<Lifecycle>,
    health: Arc<Health>,
    token: AdminToken,
    max_body_bytes: usize,
}

/// What a handler produces: a status and an optional JSON body.
type Reply = Result<(StatusCode, Option<Value>), ApiError>;

impl AdminApp {
    pub fn new(
        lifecycle: Arc<Lifecycle>,
        health: Arc<Health>,
        token: AdminToken,
        max_body_bytes: usize,
    ) -> Self {
        AdminApp {
            lifecycle,
            health,
            token,
            max_body_bytes,
        }
    }

    /// `switchyard_circuit_state` is read at scrape time.
    fn update_circuit_gauges(&self) {
        let snapshot = self.lifecycle.snapshot.load_full();
        for r in snapshot.registries.values() {
            let cooldown = r.spec.circuit_breaker.map_or(DEFAULT_COOLDOWN, |cb| {
                std::time::Duration::from_millis(cb.cooldown_ms)
            });
            let state = match self.health.of(&r.id).circuit(cooldown) {
                crate::routing::health::Circuit::Closed => 0,
                crate::routing::health::Circuit::HalfOpen => 1,
                crate::routing::health::Circuit::Open => 2,
            };
            crate::telemetry::metrics::CIRCUIT_STATE
                .with_label_values(&[&r.name])
                .set(state);
        }
    }

    /// `GET /v1/status`: per registry, its circuit, requests in flight, and the last minute's
    /// latency percentiles and error rate.
    fn status(&self) -> Value {
        let snapshot = self.lifecycle.snapshot.load_full();
        let mut regs: Vec<_> = snapshot.registries.values().collect();
        regs.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        let items: Vec<Value> = regs
            .into_iter()
            .map(|r| {
                let h = self.health.of(&r.id);
                let cooldown = r
                    .spec
                    .circuit_breaker
                    .map_or(DEFAULT_COOLDOWN, |cb| std::time::Duration::from_millis(cb.cooldown_ms));
                let (requests, errors, p50, p95) = h.window_stats();
                serde_json::json!({
                    "id": r.id, "name": r.name, "provider": r.provider.as_str(),
                    "circuit": h.circuit(cooldown).as_str(),
                    "in_flight": h.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                    "latency_ms": {"p50": p50, "p95": p95},
                    "requests_1m": requests, "errors_1m": errors,
                    "error_rate_1m": if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
                })
            })
            .collect();
        serde_json::json!({ "registries": items })
    }

    /// Reads the whole body. Past the limit it keeps draining (up to a hard cap) so the client
    /// can read the 413 instead of seeing its upload reset.
    async fn read_body(&self, session: &mut ServerSession) -> Result<Vec<u8>, ApiError> {
        let hard_cap = self.max_body_bytes.saturating_mul(4).max(64 << 20);
        let mut body = Vec::new();
        let mut total = 0usize;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    total += chunk.len();
                    if total <= self.max_body_bytes {
                        body.extend_from_slice(&chunk);
                    } else if total > hard_cap {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(ApiError::invalid_json(format!(
                        "could not read the request body: {e}"
                    )))
                }
            }
        }
        if total > self.max_body_bytes {
            session.set_keepalive(None);
            return Err(ApiError::body_too_large(self.max_body_bytes));
        }
        Ok(body)
    }

    async fn handle(&self, session: &mut ServerSession) -> Reply {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let segments: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if method == Method::GET && segments == ["healthz"] {
            return Ok((StatusCode::OK, Some(serde_json::json!({"status": "ok"}))));
        }
        let presented = session
            .get_header(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        if !presented.is_some_and(|t| self.token.matches(t.trim())) {
            return Err(ApiError::unauthorized());
        }
        if method == Method::GET && segments == ["v1", "status"] {
            return Ok((StatusCode::OK, Some(self.status())));
        }
        let raw = self.read_body(session).await?;
        let body = if raw.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&raw)
                .map_err(|e| ApiError::invalid_json(format!("malformed JSON body: {e}")))?
        };
        let needs_body = matches!(method, Method::POST | Method::PUT | Method::PATCH);
        let store = self.lifecycle.store().ok_or_else(|| {
            ApiError::unavailable("the store is not open (starting up or shutting down)")
        })?;
        if !runs_long(&method, &segments) {
            return dispatch(&store, &method, &segments, body, needs_body);
        }
        let run = move || dispatch(&store, &method, &segments, body, needs_body);
        tokio::task::spawn_blocking(run)
            .await
            .unwrap_or_else(|e| Err(ApiError::internal(format!("admin task failed: {e}"))))
    }
}

/// Whether a request's work grows with the store: lists, export and import. Those run on the
/// blocking pool so they never hold up an admin worker. The rest reads or writes one entity and
/// runs inline: a write's cost is mostly its journal `fdatasync`, and a hand-off to another
/// thread and back would add two context switches to every write.
fn runs_long(method: &Method, segments: &[String]) -> bool {
    let export_or_import = segments.len() == 2
        && segments[0] == "v1"
        && (segments[1] == "export" || segments[1] == "import");
    let list = *method == Method::GET && matches!(segments.len(), 2 | 4);
    export_or_import || list
}

fn ok(v: Value) -> Reply {
    Ok((StatusCode::OK, Some(v)))
}

fn require_body(body: &Value) -> Result<(), ApiError> {
    if body.is_null() {
        return Err(ApiError::invalid_json("a JSON body is required"));
    }
    Ok(())
}

fn entity_route(
    store: &Store,
    method: &Method,
    kind: Kind,
    gid: Option<&str>,
    id: Option<&str>,
    body: Value,
) -> Reply {
    fn create<S: crate::entities::FromInput>(s: &Store, g: Option<&str>, b: Value) -> Reply {
        ops::create::<S>(s, g, b).map(|v| (StatusCode::CREATED, Some(v)))
    }
    fn list<S: crate::entities::EntitySpec>(s: &Store, g: Option<&str>) -> Reply {
        ops::list::<S>(s, g).and_then(ok)
    }
    fn get<S: crate::entities::EntitySpec>(s: &Store, g: Option<&str>, id: &str) -> Reply {
        ops::get::<S>(s, g, id).and_then(ok)
    }
    fn update<S: crate::entities::FromInput>(
        s: &Store,
        g: Option<&str>,
        id: &str,
        b: Value,
        patch: bool,
    ) -> Reply {
        ops::update::<S>(s, g, id, b, patch).and_then(ok)
    }
    fn delete<S: crate::entities::EntitySpec>(s: &Store, g: Option<&str>, id: &str) -> Reply {
        ops::delete::<S>(s, g, id).map(|()| (StatusCode::NO_CONTENT, None))
    }
    match (method, id) {
        (&Method::GET, None) => by_kind!(kind, list(store, gid)),
        (&Method::POST, None) => by_kind!(kind, create(store, gid, body)),
        (&Method::GET, Some(id)) => by_kind!(kind, get(store, gid, id)),
        (&Method::PUT, Some(id)) => by_kind!(kind, update(store, gid, id, body, false)),
        (&Method::PATCH, Some(id)) => by_kind!(kind, update(store, gid, id, body, true)),
        (&Method::DELETE, Some(id)) => by_kind!(kind, delete(store, gid, id)),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn dispatch(
    store: &Store,
    method: &Method,
    seg: &[String],
    body: Value,
    needs_body: bool,
) -> Reply {
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    let attach_method = matches!(*method, Method::PUT | Method::POST);
    if needs_body && !(seg.len() == 7 && attach_method) {
        require_body(&body)?;
    }
    match seg.as_slice() {
        ["v1", "export"] if method == Method::GET => ok(ops::export(store)),
        ["v1", "import"] if method == Method::POST => ops::import(store, body).and_then(ok),
        ["v1", "export"] | ["v1", "import"] => Err(ApiError::method_not_allowed()),
        ["v1", "gateways"] => entity_route(store, method, Kind::Gateway, None, None, body),
        ["v1", "gateways", gid] => {
            entity_route(store, method, Kind::Gateway, None, Some(gid), body)
        }
        ["v1", "gateways", gid, coll] | ["v1", "gateways", gid, coll, _] => {
            let kind = Kind::from_collection(coll)
                .filter(|k| *k != Kind::Gateway)
                .ok_or_else(|| ApiError::not_found(format!("no collection `{coll}`")))?;
            entity_route(store, method, kind, Some(gid), seg.get(4).copied(), body)
        }
        ["v1", "gateways", gid, "consumers", cid, sub, target] => {
            let kind = Kind::from_collection(sub)
                .filter(|k| matches!(k, Kind::Registry | Kind::Role | Kind::Auth | Kind::Policy))
                .ok_or_else(|| ApiError::not_found(format!("no consumer sub-resource `{sub}`")))?;
            let attach = match *method {
                Method::PUT | Method::POST => true,
                Method::DELETE => false,
                _ => return Err(ApiError::method_not_allowed()),
            };
            ops::attachment(store, gid, cid, kind, target, attach, body).and_then(ok)
        }
        _ => Err(ApiError::not_found("no such admin route")),
    }
}

fn json_response(status: StatusCode, body: Option<&Value>) -> Response<Vec<u8>> {
    // `to_vec` writes straight into the buffer; `to_string` goes through a `fmt` adapter.
    let bytes = body
        .and_then(|b| serde_json::to_vec(b).ok())
        .unwrap_or_default();
    let mut builder = Response::builder().status(status);
    if body.is_some() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    builder
        .header(http::header::CONTENT_LENGTH, bytes.len())
        .body(bytes)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method == Method::GET && req.uri.path() == "/metrics" {
            self.update_circuit_gauges();
            let text = crate::telemetry::metrics::render();
            return Response::builder()
                .status(StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .header(http::header::CONTENT_LENGTH, text.len())
                .body(text.into_bytes())
                .unwrap_or_else(|_| Response::new(Vec::new()));
        }
        match self.handle(session).await {
            Ok((status, body)) => json_response(status, body.as_ref()),
            Err(e) => {
                let status =
                    StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                json_response(status, Some(&e.to_json()))
            }
        }
    }
}
