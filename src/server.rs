//! Builds and runs the Pingora server: the proxy and admin listeners and the store loader, in
//! one process, with switchyard's own signal handling (see `lifecycle`).

use crate::admin::token::TokenSource;
use crate::admin::{AdminApp, AdminToken};
use crate::config::Config;
use crate::lifecycle::{Lifecycle, Signals, StoreLoader};
use crate::proxy::{Gateway, ProxyApp, ProxyConnections};
use crate::routing::health::Health;
use crate::telemetry;
use crate::upstream::Upstream;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;

/// Flags of `switchyard run` that Pingora acts on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFlags {
    /// Take the listening sockets over from a running instance (zero-downtime upgrade).
    pub upgrade: bool,
    /// Fork into the background and write `<data_dir>/switchyard.pid` (systemd Type=forking).
    pub daemon: bool,
}

/// Runs the gateway until it is told to stop; returns only on a start-up error.
pub fn run(config: Config, flags: RunFlags) -> Result<(), String> {
    telemetry::init_logging(&config.log, flags.daemon);
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", config.data_dir.display()))?;
    let (token, source) = AdminToken::resolve(config.admin.token.as_deref(), &config.data_dir)
        .map_err(|e| format!("cannot set up the admin token: {e}"))?;
    match source {
        TokenSource::Generated(p) => {
            tracing::info!(path = %p.display(), "generated an admin token")
        }
        TokenSource::File(p) => tracing::info!(path = %p.display(), "admin token read from file"),
        TokenSource::Config => tracing::info!("admin token from the config file"),
        TokenSource::Env => tracing::info!("admin token from SWITCHYARD_ADMIN_TOKEN"),
    }

    let data = std::path::absolute(&config.data_dir)
        .unwrap_or_else(|_| config.data_dir.clone())
        .display()
        .to_string();
    let conf = ServerConf {
        threads: config.threads,
        daemon: flags.daemon,
        grace_period_seconds: Some(config.shutdown.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(config.shutdown.shutdown_timeout_s),
        pid_file: format!("{data}/switchyard.pid"),
        upgrade_sock: format!("{data}/upgrade.sock"),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // In upgrade mode this waits for the old process to hand over its listening sockets.
    server.bootstrap();

    let lifecycle = Arc::new(Lifecycle::default());
    let health = Arc::new(Health::default());
    let upstream = Upstream::new(config.upstream.ca_file.as_deref());
    let gateway = Gateway::new(
        lifecycle.clone(),
        health.clone(),
        upstream,
        config.proxy.max_body_bytes,
    );
    // With `proxy.h2c`, Pingora reads the first 24 bytes of each cleartext connection to tell
    // HTTP/2's preface from an HTTP/1.1 request line.
    let mut proxy = Service::new(
        "proxy".to_string(),
        ProxyConnections::new(ProxyApp::new(gateway, config.proxy.h2c)),
    );
    // Client connections read without Pingora's 64 KiB read buffer: it is zeroed (so
    // resident) for every connection, and the HTTP layer reads headers and bodies into its own
    // buffers anyway. Writes keep the default small buffer.
    let l4 = L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE);
    for addr in &config.proxy.listen {
        proxy.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(l4));
    }
    if let Some(tls) = &config.proxy.tls {
        let (cert, key) = (
            tls.cert.display().to_string(),
            tls.key.display().to_string(),
        );
        // HTTP/2 is offered through ALPN; HTTP/1.1 stays available.
        let mut settings = TlsSettings::intermediate(&cert, &key)
            .map_err(|e| format!("proxy.tls: cannot load {cert} / {key}: {e}"))?;
        settings.enable_h2();
        proxy.add_listener(
            ListenerConfig::tcp(tls.listen.as_str())
                .tls(settings)
                .l4_buffer(l4),
        );
    }
    let mut admin = Service::new(
        "admin".to_string(),
        AdminApp::new(
            lifecycle.clone(),
            health,
            token,
            config.admin.max_body_bytes,
        ),
    );
    admin.add_tcp(&config.admin.listen);
    admin.threads = Some(2);
    let loader = background_service(
        "store",
        StoreLoader {
            lifecycle: lifecycle.clone(),
            config: config.clone(),
        },
    );
    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(loader);
    tracing::info!(proxy = ?config.proxy.listen, admin = %config.admin.listen, "switchyard starting");
    let signals = Signals {
        lifecycle,
        drain: Duration::from_millis(config.shutdown.drain_delay_ms),
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    crate::telemetry::flush_logs();
    std::process::exit(0)
}
