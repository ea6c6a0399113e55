//! The proxy listener: Pingora's `ProxyHttp` hooks, in the order Pingora calls them.

pub mod error;
mod respond;

use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use error::{ClientFormat, ProxyError};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Process-wide state the health endpoints report.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Set on SIGTERM: `/readyz` answers 503 so load balancers drain this host.
    pub draining: AtomicBool,
}

pub struct Gateway {
    snapshot: Arc<ArcSwap<Snapshot>>,
    lifecycle: Arc<Lifecycle>,
}

impl Gateway {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, lifecycle: Arc<Lifecycle>) -> Self {
        Gateway {
            snapshot,
            lifecycle,
        }
    }
}

/// Per-request state carried through the hooks.
#[derive(Default)]
pub struct RequestCtx {
    pub format: ClientFormat,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let path = session.req_header().uri.path();
        match path {
            "/healthz" => return respond::text(session, 200, "ok").await,
            "/readyz" => {
                return if self.lifecycle.draining.load(Ordering::Relaxed) {
                    respond::text(session, 503, "draining").await
                } else {
                    respond::text(session, 200, "ready").await
                }
            }
            _ => {}
        }
        let slug = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let snap = self.snapshot.load();
        let err = match snap.consumers.get(slug) {
            None => ProxyError::ConsumerNotFound,
            Some(_) => ProxyError::NotFound("not implemented yet".into()),
        };
        respond::error(session, ctx, &err).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Every request is answered in `request_filter`; Pingora never gets here.
        Err(Error::explain(
            ErrorType::InternalError,
            "no upstream peer: requests are answered in request_filter",
        ))
    }
}
