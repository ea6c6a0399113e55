//! The process's life: the store is opened by a background service once Pingora has
//! bootstrapped (after a daemon fork, and after a zero-downtime upgrade has handed the listening
//! sockets over), so `/readyz` turns 200 only once the store is loaded. On SIGTERM `/readyz`
//! turns 503 at once and listeners close after `shutdown.drain_delay_ms`; on SIGTERM or SIGQUIT
//! the store is flushed and released at once, so a new process can open it while this one
//! finishes its in-flight requests from the in-memory snapshot.

use crate::config::Config;
use crate::snapshot::Snapshot;
use crate::store::Store;
use crate::{demo, telemetry};
use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// How long a starting process waits for another (an upgrade's old one) to release the store.
const STORE_WAIT: Duration = Duration::from_secs(60);

pub struct Lifecycle {
    /// The store is loaded and the snapshot published.
    pub ready: AtomicBool,
    /// Shutting down: load balancers should send no new requests.
    pub draining: AtomicBool,
    /// The proxy's view; published into by the store.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    store: ArcSwapOption<Store>,
    loaded: tokio::sync::watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            store: ArcSwapOption::empty(),
            loaded: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Lifecycle {
    pub fn serving(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    /// Waits until the store is loaded (a request that arrives while a new process is still
    /// loading must not see an empty snapshot). False on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        let mut rx = self.loaded.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|loaded| *loaded))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
        self.loaded.send_replace(true);
    }

    /// The store, while this process holds it.
    pub fn store(&self) -> Option<Arc<Store>> {
        self.store.load_full()
    }

    pub fn set_store(&self, store: Arc<Store>) {
        self.store.store(Some(store));
    }

    /// Flushes and lets go of the store (sled's file lock is freed once in-flight admin
    /// requests drop their handles).
    pub fn release_store(&self) {
        if let Some(s) = self.store.swap(None) {
            if let Err(e) = s.flush() {
                tracing::warn!(error = %e, "flushing the store on release failed");
            }
        }
    }
}

/// Opens the store once the server runs; releases it on shutdown.
pub struct StoreLoader {
    pub lifecycle: Arc<Lifecycle>,
    pub config: Config,
}

#[async_trait]
impl BackgroundService for StoreLoader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let started = Instant::now();
        let store = loop {
            let (dir, defaults, snap) = (
                self.config.data_dir.clone(),
                self.config.upstream.defaults(),
                self.lifecycle.snapshot.clone(),
            );
            let interval = Duration::from_millis(self.config.admin.commit_interval_ms);
            let opened = tokio::task::spawn_blocking(move || {
                Store::open_into(&dir, defaults, snap, interval)
            })
            .await;
            match opened {
                Ok(Ok(store)) => break store,
                Ok(Err(e)) if Store::is_locked(&e) && started.elapsed() < STORE_WAIT => {
                    tracing::info!("waiting for the previous process to release the store");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot open the store; exiting");
                    std::process::exit(2);
                }
                Err(e) => {
                    tracing::error!(error = %e, "store loader failed; exiting");
                    std::process::exit(2);
                }
            }
        };
        if self.config.demo {
            match demo::seed(&store, &self.config) {
                Ok(Some(d)) => println!("{}", demo::banner(&d, &self.config)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "demo seed skipped"),
            }
        }
        self.lifecycle.set_store(Arc::new(store));
        self.lifecycle.mark_ready();
        telemetry::metrics::init();
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "store loaded; ready"
        );
        let _ = shutdown.changed().await;
        self.lifecycle.release_store();
    }
}

/// Pingora's signals, with a drain step: SIGTERM marks the process draining (`/readyz` 503),
/// releases the store, waits `drain` for load balancers to notice, then shuts down gracefully;
/// SIGQUIT releases the store and hands the sockets to the new process; SIGINT is fast.
pub struct Signals {
    pub lifecycle: Arc<Lifecycle>,
    pub drain: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: handing the listeners to the new process");
                self.lifecycle.release_store();
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => {
                tracing::info!(drain_ms = self.drain.as_millis() as u64, "SIGTERM: draining");
                self.lifecycle.draining.store(true, Ordering::Release);
                self.lifecycle.release_store();
                tokio::time::sleep(self.drain).await;
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}
