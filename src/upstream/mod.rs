//! Connections to providers: Pingora's pooled HTTP connector (keep-alive reuse), peers built
//! from a registry's endpoint and timeouts, and host names resolved asynchronously and cached
//! (Pingora's `HttpPeer::new` would resolve with a blocking call, and panic on failure).

use crate::proxy::error::ProxyError;
use crate::snapshot::{Endpoint, Timeouts};
use dashmap::DashMap;
use pingora::connectors::http::Connector;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::{HttpPeer, ALPN};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a resolved address is reused.
const DNS_TTL: Duration = Duration::from_secs(60);
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);

pub struct Upstream {
    connector: Connector,
    dns: DashMap<(String, u16), (SocketAddr, Instant)>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            connector: Connector::new(None),
            dns: DashMap::new(),
        }
    }
}

impl Upstream {
    /// The address for an endpoint: IP literals as they are, names through the cache.
    pub async fn resolve(&self, ep: &Endpoint) -> Result<SocketAddr, ProxyError> {
        if let Ok(ip) = ep.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, ep.port));
        }
        let key = (ep.host.clone(), ep.port);
        if let Some(hit) = self.dns.get(&key) {
            if hit.1.elapsed() < DNS_TTL {
                return Ok(hit.0);
            }
        }
        // tokio resolves on its blocking pool, never on a worker thread.
        let addr = tokio::net::lookup_host((ep.host.as_str(), ep.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                ProxyError::UpstreamUnavailable(format!(
                    "cannot resolve upstream host `{}`",
                    ep.host
                ))
            })?;
        self.dns.insert(key, (addr, Instant::now()));
        Ok(addr)
    }

    pub fn peer(&self, ep: &Endpoint, addr: SocketAddr, t: &Timeouts) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, ep.tls, ep.host.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(t.connect);
        o.total_connection_timeout = Some(t.connect);
        o.idle_timeout = Some(POOL_IDLE);
        o.alpn = ALPN::H1;
        o.verify_cert = true;
        o.verify_hostname = true;
        peer
    }

    pub async fn connect(&self, peer: &HttpPeer) -> pingora::Result<(HttpSession, bool)> {
        self.connector.get_http_session(peer).await
    }

    /// Returns a connection whose response was read to the end to the pool.
    pub async fn release(&self, session: HttpSession, peer: &HttpPeer) {
        self.connector
            .release_http_session(session, peer, Some(POOL_IDLE))
            .await;
    }
}
