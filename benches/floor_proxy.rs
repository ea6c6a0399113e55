//! The floor of the load benchmark (`benches/load.sh`): the least a Pingora reverse proxy does,
//! built from the same pingora version as switchyard. It forwards every request, unchanged and
//! without reading its body, to one upstream over Pingora's connection pool, and relays the
//! answer as it arrives. No logging, no metrics.
//!
//! `cargo run --release --example floor_proxy -- LISTEN UPSTREAM [THREADS]`,
//! e.g. `127.0.0.1:9100 127.0.0.1:9000 2`.
//!
//! `FLOOR_L4_READ_BUFFER=0` turns off the read buffer Pingora puts under each client connection
//! (64 KiB by default), as switchyard does: the benchmark's floor for memory per open stream.
//! `FLOOR_H2C=1` also accepts HTTP/2 with prior knowledge, as switchyard's `proxy.h2c` does.

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};
use std::net::SocketAddr;

struct Floor {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: floor_proxy LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    }
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM is host:port");
    let threads = args.get(3).map_or(2, |t| t.parse().expect("THREADS"));
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("/tmp/floor_proxy.{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/floor_proxy.{}.sock", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Floor { upstream });
    if std::env::var("FLOOR_H2C").is_ok_and(|v| v == "1") {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        proxy.app_logic_mut().expect("a proxy app").server_options = Some(options);
    }
    match std::env::var("FLOOR_L4_READ_BUFFER") {
        Ok(read) => {
            let read = read
                .parse()
                .expect("FLOOR_L4_READ_BUFFER is a size in bytes");
            let l4 = L4BufferSettings::new(read, DEFAULT_L4_WRITE_BUFFER_SIZE);
            proxy.add_listener(ListenerConfig::tcp(args[1].as_str()).l4_buffer(l4));
        }
        Err(_) => proxy.add_tcp(&args[1]),
    }
    server.add_service(proxy);
    server.run_forever();
}
