//! A client connection on the proxy listener, until it closes.
//!
//! pingora-core runs an HTTP app's connection in one future that holds HTTP/2's handshake and
//! accept loop inline: 3.7 KiB for every connection, an HTTP/1.1 one's too, kept as long as
//! the connection is open. An HTTP/1.1 connection runs its keep-alive loop here instead, in a
//! future of a few hundred bytes; an HTTP/2 one (ALPN `h2`, or `proxy.h2c`, whose preface
//! Pingora tells from an HTTP/1.1 request line) still goes through pingora-core's.

use super::ProxyApp;
use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::Arc;

/// How long an idle kept-alive connection waits for its next request, as in pingora-core.
const KEEPALIVE_S: u64 = 60;

pub struct ProxyConnections {
    app: Arc<ProxyApp>,
}

impl ProxyConnections {
    pub fn new(app: ProxyApp) -> Self {
        ProxyConnections { app: Arc::new(app) }
    }

    /// Whether the connection speaks HTTP/1.1 for certain: ALPN chose it (or nothing), and
    /// without TLS, h2c is off.
    fn is_http1(&self, stream: &Stream) -> bool {
        let h2c = self.app.server_options().is_some_and(|o| o.h2c);
        matches!(stream.selected_alpn_proto(), None | Some(ALPN::H1))
            && (stream.get_ssl_digest().is_some() || !h2c)
    }
}

#[async_trait]
impl ServerApp for ProxyConnections {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !self.is_http1(&stream) {
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        let mut next = Some((stream, None));
        while let Some((stream, settings)) = next.take() {
            // The session moves into the request's own (boxed) future: this one keeps none.
            let request = self
                .app
                .process_new_http(http1(stream, settings, shutdown), shutdown);
            next = request.await.map(ReusedHttpStream::consume);
        }
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

/// The session for a connection's next request: a new connection is kept alive unless the
/// service is shutting down; a reused one keeps what its last request left.
fn http1(
    stream: Stream,
    settings: Option<HttpPersistentSettings>,
    shutdown: &ShutdownWatch,
) -> ServerSession {
    let mut session = ServerSession::new_http1(stream);
    match settings {
        Some(settings) => settings.apply_to_session(&mut session),
        None => session.set_keepalive((!*shutdown.borrow()).then_some(KEEPALIVE_S)),
    }
    session
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Gateway;

    /// Held for as long as the connection is open, next to the request's own state.
    #[test]
    fn a_connections_state_is_small() {
        let gateway = Gateway::new(
            Default::default(),
            Default::default(),
            Default::default(),
            1 << 20,
        );
        let connections = Arc::new(ProxyConnections::new(ProxyApp::new(gateway, false)));
        let (io, _client) = tokio::io::duplex(64);
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let state = connections.process_new(Box::new(io), &shutdown);
        let size = std::mem::size_of_val(&*state);
        assert!(size <= 320, "a connection's future is {size} bytes");
    }
}
