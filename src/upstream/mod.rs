//! Connections to providers: Pingora's pooled HTTP connector (keep-alive reuse), peers built
//! from a registry's endpoint and timeouts, and host names resolved asynchronously and cached
//! (Pingora's `HttpPeer::new` would resolve with a blocking call, and panic on failure).

use crate::proxy::error::ProxyError;
use crate::snapshot::{Endpoint, Timeouts};
use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::l4::socket::SocketAddr as InetOrUnix;
use pingora::upstreams::peer::{HttpPeer, ALPN};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
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
        Upstream::new(None)
    }
}

impl Upstream {
    /// `ca_file`: CAs trusted for provider TLS instead of the system roots.
    pub fn new(ca_file: Option<&std::path::Path>) -> Upstream {
        let options = ca_file.map(|p| {
            let mut o = pingora::connectors::ConnectorOptions::new(128);
            o.ca_file = Some(p.display().to_string());
            o
        });
        Upstream {
            connector: Connector::new(options),
            dns: DashMap::new(),
        }
    }

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

    /// The peer for `addr`, from `cache` while the address stays the same.
    ///
    /// A peer is ~0.7 KiB and holds the TLS server name as a string: built once per registry
    /// and address instead of per request, and shared, so an open stream holds a pointer to it.
    pub fn peer(
        &self,
        ep: &Endpoint,
        addr: SocketAddr,
        t: &Timeouts,
        cache: &PeerCache,
    ) -> Arc<HttpPeer> {
        if let Some(p) = cache.0.load_full() {
            if matches!(p._address, InetOrUnix::Inet(a) if a == addr) {
                return p;
            }
        }
        let peer = Arc::new(build_peer(ep, addr, t));
        cache.0.store(Some(peer.clone()));
        peer
    }

    /// A pooled connection to `peer` if one is idle (`true`), else a new one.
    ///
    /// Peers speak HTTP/1.1 (`ALPN::H1`), so Pingora's HTTP/1 connector is used directly. Opening
    /// a connection (TCP, TLS) is a future of several KiB: it is boxed so that it is paid for
    /// only when a connection is opened, instead of enlarging the state of every request that
    /// finds one in the pool. The connection itself (~0.5 KiB) is boxed too: the request's state
    /// holds it across every await of an exchange and a whole streamed answer.
    pub async fn connect(&self, peer: &HttpPeer) -> pingora::Result<(Box<HttpSession>, bool)> {
        if let Some(h1) = self.connector.reused_http_session(peer).await {
            return Ok((Box::new(HttpSession::H1(h1)), true));
        }
        let (h1, reused) = Box::pin(self.connector.get_http_session(peer)).await?;
        Ok((Box::new(HttpSession::H1(h1)), reused))
    }

    /// Returns a connection whose response was read to the end to the pool.
    ///
    /// Pingora's release is a future of ~3 KiB, and a connection ~0.5 KiB: both stay boxed, so
    /// that the relay loop that calls this once per answer (and every open stream with it)
    /// does not carry their size.
    pub async fn release(&self, session: Box<HttpSession>, peer: &HttpPeer) {
        Box::pin(async move {
            if let HttpSession::H1(h1) = *session {
                self.connector
                    .release_http_session(h1, peer, Some(POOL_IDLE))
                    .await;
            }
        })
        .await;
    }
}

fn build_peer(ep: &Endpoint, addr: SocketAddr, t: &Timeouts) -> HttpPeer {
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

/// A registry's last peer (see [`Upstream::peer`]); a new snapshot starts empty.
#[derive(Default)]
pub struct PeerCache(ArcSwapOption<HttpPeer>);

impl std::fmt::Debug for PeerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerCache")
    }
}

/// Writes a whole request (header and body) on `conn`.
///
/// Pingora flushes the header on its own, so header and body would leave as two TCP
/// segments, each a trip through the network stack on both ends. The socket is corked while
/// both are written and uncorked after: one segment for a request that fits in one.
pub async fn send_request(
    conn: &mut HttpSession,
    header: Box<RequestHeader>,
    body: bytes::Bytes,
) -> pingora::Result<()> {
    cork(conn, true);
    let sent = async {
        conn.write_request_header(header).await?;
        conn.write_request_body(body, true).await?;
        conn.finish_request_body().await
    }
    .await;
    cork(conn, false);
    sent.map(|_| ())
}

/// Sets or clears `TCP_CORK` (a no-op on anything but a TCP socket).
fn cork(conn: &HttpSession, on: bool) {
    let HttpSession::H1(h1) = conn else {
        return;
    };
    // A connector stream's id is its socket's descriptor (Pingora matches pooled connections
    // to peers by it too).
    let fd = h1.stream().id();
    // SAFETY: the descriptor belongs to `conn`, which stays borrowed for the whole call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = socket2::SockRef::from(&fd).set_tcp_cork(on);
}

/// A whole HTTP exchange for the gateway's own calls (JWKS, token introspection, MCP).
pub struct Fetched {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Upstream {
    /// Sends one request and returns the open exchange once the response header has arrived,
    /// for the caller to read the body as it comes (dropping it cancels the request).
    pub async fn open(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: bytes::Bytes,
        first_byte: Duration,
    ) -> Result<Box<HttpSession>, String> {
        let ep = crate::snapshot::Endpoint::parse(url).ok_or_else(|| format!("bad URL `{url}`"))?;
        let uri: http::Uri = url.parse().map_err(|_| format!("bad URL `{url}`"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let addr = self.resolve(&ep).await.map_err(|e| e.to_string())?;
        let t = crate::snapshot::Timeouts {
            connect: first_byte,
            first_byte,
            stream_idle: first_byte,
            total: first_byte,
        };
        let peer = build_peer(&ep, addr, &t);
        let exchange = async {
            let (mut s, _) = self.connect(&peer).await.map_err(|e| e.to_string())?;
            let mut req = pingora::http::RequestHeader::build(method, path.as_bytes(), None)
                .map_err(|e| e.to_string())?;
            req.insert_header("host", ep.authority())
                .map_err(|e| e.to_string())?;
            req.insert_header("content-length", body.len().to_string())
                .map_err(|e| e.to_string())?;
            for (k, v) in headers {
                req.insert_header(k.clone(), v.as_str())
                    .map_err(|e| e.to_string())?;
            }
            send_request(&mut s, Box::new(req), body.clone())
                .await
                .map_err(|e| e.to_string())?;
            s.read_response_header().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(s)
        };
        pingora::time::timeout(first_byte, exchange)
            .await
            .map_err(|_| format!("no answer within {} ms", first_byte.as_millis()))?
    }

    /// Sends one request and reads the whole answer (at most 1 MiB) within `timeout`.
    pub async fn fetch(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<Fetched, String> {
        let mut owned: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        if !owned.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept")) {
            owned.push(("accept".into(), "application/json".into()));
        }
        let whole = async {
            let mut s = self.open(method, url, &owned, body, timeout).await?;
            let status = s.response_header().map_or(0, |h| h.status.as_u16());
            let headers = s
                .response_header()
                .map(|h| h.headers.clone())
                .unwrap_or_default();
            let mut out = bytes::BytesMut::new();
            while let Some(chunk) = s.read_response_body().await.map_err(|e| e.to_string())? {
                if out.len() + chunk.len() > 1 << 20 {
                    return Err("answer larger than 1 MiB".to_string());
                }
                out.extend_from_slice(&chunk);
            }
            Ok(Fetched {
                status,
                headers,
                body: out.freeze(),
            })
        };
        pingora::time::timeout(timeout, whole)
            .await
            .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
    }
}
