//! The proxy listener's application: one HTTP request from its header to its access line.
//!
//! `pingora-core` runs the connections (TLS, HTTP/2 and h2c; HTTP/1.1's keep-alive loop is
//! `connection.rs`) and hands each request here as a `ServerSession`. `ProxyApp::request`
//! reads top to bottom: read the header → answer it (`Gateway::serve`, SPEC §3) → log it
//! (`Gateway::log`) → hand the connection back for the next request.
//!
//! Why not `pingora-proxy`'s `ProxyHttp`: switchyard answers every request itself (see
//! `mod.rs`), so of its hooks only `request_filter` and `logging` ever ran. Its per-request
//! future still holds the state of every path it does not take (the cache, subrequests,
//! `proxy_to_upstream`): 14 KiB boxed for every open connection, a quarter of what an open
//! stream cost. Here the request's state is `serve`'s, held to a size class by a test.

use super::{Gateway, RequestCtx};
use async_trait::async_trait;
use http::Method;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

pub struct ProxyApp {
    gateway: Gateway,
    /// `h2c` for the plain listeners.
    options: Option<HttpServerOptions>,
    /// Set once the service shuts down: kept-alive connections stop waiting for a request.
    closing: AtomicBool,
    closed: Notify,
}

impl ProxyApp {
    pub fn new(gateway: Gateway, h2c: bool) -> Self {
        let options = h2c.then(|| {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            options
        });
        ProxyApp {
            gateway,
            options,
            closing: AtomicBool::new(false),
            closed: Notify::new(),
        }
    }

    /// Resolves once the service shuts down.
    async fn shutting_down(&self) {
        // Registered before the flag is read, so a shutdown in between still wakes it.
        let closed = self.closed.notified();
        if !self.closing.load(Ordering::Acquire) {
            closed.await;
        }
    }

    /// Reads the request header. `None`: no request to answer (the client left, the header
    /// was malformed and refused, or the service is shutting down).
    async fn read_header(&self, session: &mut ServerSession) -> Option<()> {
        let read = tokio::select! {
            // A request already on its way is read even when the shutdown comes with it.
            biased;
            read = session.read_request() => read,
            _ = self.shutting_down() => return None,
        };
        let refuse = match read {
            Ok(true) if session.req_header().method == Method::CONNECT => Some(405),
            Ok(true) => return Some(()),
            Ok(false) => return None,
            Err(e) if e.etype == ErrorType::InvalidHTTPHeader => {
                tracing::debug!(error = %e, "malformed request header");
                Some(400)
            }
            Err(e) => {
                tracing::debug!(error = %e, "client connection broke before a request");
                None
            }
        };
        if let Some(status) = refuse {
            let _ = session.respond_error(status).await;
        }
        session.shutdown().await;
        None
    }

    /// One request: read its header, answer it, log it, and hand the connection back.
    ///
    /// `session` is borrowed from the caller's future rather than moved into this one: a
    /// moved argument would be stored twice in the state every open stream keeps.
    async fn request(
        &self,
        session: &mut Option<ServerSession>,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let live = session.as_mut()?;
        self.read_header(live).await?;
        if *shutdown.borrow() {
            // Draining: this answer closes the connection.
            live.set_keepalive(None);
        }
        let mut ctx = RequestCtx::default();
        let answered = self.gateway.serve(live, &mut ctx).await;
        self.gateway.log(&ctx);
        if let Err(e) = answered {
            tracing::debug!(error = %e, "could not write the answer");
            return None;
        }
        let settings = HttpPersistentSettings::for_session(live);
        let done = session.take()?;
        // Boxed: its future (3.7 KiB) would otherwise be part of every request's state.
        let reusable = Box::pin(done.finish()).await.ok().flatten()?;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
    }
}

#[async_trait]
impl HttpServerApp for ProxyApp {
    // Written out rather than as an `async fn`: `async_trait` would move `session` into a
    // local of the future, next to the argument's own copy.
    fn process_new_http<'app, 'watch, 'fut>(
        self: &'app Arc<Self>,
        session: ServerSession,
        shutdown: &'watch ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'fut>>
    where
        'app: 'fut,
        'watch: 'fut,
        Self: 'fut,
    {
        let mut session = Some(session);
        Box::pin(async move { self.request(&mut session, shutdown).await })
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.options.as_ref()
    }

    async fn http_cleanup(&self) {
        self.closing.store(true, Ordering::Release);
        self.closed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's state lives as long as its answer, so for an open stream it is most of what
    /// switchyard adds to Pingora's memory per connection: one allocation, held to jemalloc's
    /// 3 KiB class. What would push it past: a large future awaited inline on the chat path
    /// (Pingora's connection release, the connect or send futures, the non-streaming or
    /// translated relays, MCP, Pingora's own body write or idle read), a value passed by value
    /// into an async fn (it stays for the fn's whole life), a local kept in scope across the
    /// attempt, or a connection or peer held by value.
    #[test]
    fn a_requests_state_fits_its_size_class() {
        let gateway = Gateway::new(
            Default::default(),
            Default::default(),
            Default::default(),
            1 << 20,
        );
        let app = Arc::new(ProxyApp::new(gateway, false));
        let (io, _client) = tokio::io::duplex(64);
        let session = ServerSession::new_http1(Box::new(io));
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let state = app.process_new_http(session, &shutdown);
        let size = std::mem::size_of_val(&*state);
        assert!(size <= 3072, "a request's future is {size} bytes");
    }
}
