//! Builds and runs the Pingora server: the proxy service, the admin service, one process.

use crate::admin::token::TokenSource;
use crate::admin::{AdminApp, AdminToken};
use crate::config::Config;
use crate::proxy::{Gateway, Lifecycle};
use crate::store::Store;
use crate::{demo, telemetry};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;
use std::sync::Arc;

/// Flags of `switchyard run` that Pingora acts on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFlags {
    /// Take the listening sockets over from a running instance (zero-downtime upgrade).
    pub upgrade: bool,
}

/// Starts the gateway; returns only on a start-up error (Pingora exits the process itself).
pub fn run(config: Config, flags: RunFlags) -> Result<(), String> {
    telemetry::init_logging(&config.log);
    telemetry::metrics::init();
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", config.data_dir.display()))?;
    let store =
        Arc::new(Store::open(&config.data_dir, config.upstream).map_err(|e| e.to_string())?);
    if config.demo {
        match demo::seed(&store, &config) {
            Ok(Some(d)) => println!("{}", demo::banner(&d, &config)),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "demo seed skipped"),
        }
    }
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

    let data = config.data_dir.display().to_string();
    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.shutdown.grace_period_s),
        graceful_shutdown_timeout_seconds: Some(config.shutdown.shutdown_timeout_s),
        pid_file: format!("{data}/switchyard.pid"),
        upgrade_sock: format!("{data}/upgrade.sock"),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: flags.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let lifecycle = Arc::new(Lifecycle::default());
    let health = Arc::new(crate::routing::health::Health::default());
    let gateway = Gateway::new(
        store.snapshot(),
        lifecycle,
        health.clone(),
        config.proxy.max_body_bytes,
    );
    let mut proxy =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, gateway, "proxy");
    for addr in &config.proxy.listen {
        proxy.add_tcp(addr);
    }
    let mut admin = Service::new(
        "admin".to_string(),
        AdminApp::new(store, health, token, config.admin.max_body_bytes),
    );
    admin.add_tcp(&config.admin.listen);
    admin.threads = Some(2);
    server.add_service(proxy);
    server.add_service(admin);
    tracing::info!(proxy = ?config.proxy.listen, admin = %config.admin.listen, "switchyard starting");
    server.run_forever()
}
