//! What the gateway learns about each registry while serving: in-flight requests, a circuit
//! breaker, a `retry-after` sit-out, per-model latency estimates, and a one-minute window of
//! outcomes for `/v1/status`.
//!
//! Shared by all worker threads through a `DashMap` (sharded, no global lock); the per-request
//! counters are atomics. The window takes a short per-registry lock when a request ends.

use crate::hash::DashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Used when a registry configures no breaker of its own.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// Weight of a new sample in the latency estimate.
const EWMA_ALPHA: f64 = 0.3;
const WINDOW: Duration = Duration::from_secs(60);
const WINDOW_CAP: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }
}

/// Milliseconds on a process-wide monotonic clock.
fn now_ms() -> u64 {
    static START: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

#[derive(Default)]
pub struct RegistryHealth {
    pub in_flight: AtomicI64,
    consecutive_failures: AtomicU32,
    /// When the circuit opened (0 = closed).
    opened_at_ms: AtomicU64,
    /// A half-open probe is out.
    probing: AtomicBool,
    /// Not to be selected before this (from a `retry-after`).
    sit_out_until_ms: AtomicU64,
    /// Latency estimate per model, as f64 bits.
    latency: DashMap<String, AtomicU64>,
    window: Mutex<VecDeque<(Instant, u32, bool)>>,
}

/// Decrements the in-flight count when dropped.
pub struct InFlight(Arc<RegistryHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RegistryHealth {
    pub fn circuit(&self, cooldown: Duration) -> Circuit {
        match self.opened_at_ms.load(Ordering::Acquire) {
            0 => Circuit::Closed,
            at if now_ms().saturating_sub(at) < cooldown.as_millis() as u64 => Circuit::Open,
            _ => Circuit::HalfOpen,
        }
    }

    /// Whether selection may send this registry a request now. A half-open circuit lets one
    /// probe through at a time.
    pub fn admits(&self, cooldown: Duration) -> bool {
        if self.sit_out_until_ms.load(Ordering::Relaxed) > now_ms() {
            return false;
        }
        match self.circuit(cooldown) {
            Circuit::Closed => true,
            Circuit::Open => false,
            Circuit::HalfOpen => !self.probing.load(Ordering::Acquire),
        }
    }

    /// Marks the start of an attempt (claiming the probe when half-open).
    pub fn start(self: &Arc<Self>, cooldown: Duration) -> InFlight {
        if self.circuit(cooldown) == Circuit::HalfOpen {
            self.probing.store(true, Ordering::Release);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn success(&self, model: &str, latency: Duration) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.opened_at_ms.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
        self.observe_latency(model, latency);
        self.record(latency, true);
    }

    /// A failure that counts against the circuit (connect errors, timeouts, 5xx, resets).
    pub fn failure(&self, threshold: u32, latency: Duration) {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        if n >= threshold || was_probe {
            self.opened_at_ms.store(now_ms(), Ordering::Release);
        }
        self.record(latency, false);
    }

    /// A `retry-after`: this registry sits out until then.
    pub fn sit_out(&self, d: Duration) {
        let until = now_ms() + d.as_millis() as u64;
        self.sit_out_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    fn observe_latency(&self, model: &str, latency: Duration) {
        let sample = latency.as_secs_f64() * 1000.0;
        if let Some(cell) = self.latency.get(model) {
            let old = f64::from_bits(cell.load(Ordering::Relaxed));
            cell.store(
                (old + EWMA_ALPHA * (sample - old)).to_bits(),
                Ordering::Relaxed,
            );
            return;
        }
        self.latency
            .insert(model.to_string(), AtomicU64::new(sample.to_bits()));
    }

    /// The latency estimate for a model, in ms; `None` before the first sample.
    pub fn latency_ms(&self, model: &str) -> Option<f64> {
        self.latency
            .get(model)
            .map(|c| f64::from_bits(c.load(Ordering::Relaxed)))
    }

    fn record(&self, latency: Duration, ok: bool) {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while w
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > WINDOW)
            || w.len() >= WINDOW_CAP
        {
            w.pop_front();
        }
        w.push_back((now, latency.as_millis().min(u32::MAX as u128) as u32, ok));
    }

    /// (requests, errors, p50 ms, p95 ms) over the last minute.
    pub fn window_stats(&self) -> (usize, usize, Option<u32>, Option<u32>) {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let recent: Vec<&(Instant, u32, bool)> = w
            .iter()
            .filter(|(t, _, _)| now.duration_since(*t) <= WINDOW)
            .collect();
        let errors = recent.iter().filter(|(_, _, ok)| !ok).count();
        let mut lat: Vec<u32> = recent
            .iter()
            .filter(|(_, _, ok)| *ok)
            .map(|(_, l, _)| *l)
            .collect();
        lat.sort_unstable();
        let pct =
            |p: f64| (!lat.is_empty()).then(|| lat[((lat.len() - 1) as f64 * p).round() as usize]);
        (recent.len(), errors, pct(0.5), pct(0.95))
    }
}

/// Health of every registry, by id.
#[derive(Default)]
pub struct Health {
    registries: DashMap<String, Arc<RegistryHealth>>,
}

impl Health {
    pub fn of(&self, registry_id: &str) -> Arc<RegistryHealth> {
        if let Some(h) = self.registries.get(registry_id) {
            return h.clone();
        }
        self.registries
            .entry(registry_id.to_string())
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_half_opens_with_one_probe_and_closes() {
        let h = Arc::new(RegistryHealth::default());
        let cooldown = Duration::from_millis(50);
        for _ in 0..3 {
            assert!(h.admits(cooldown));
            h.failure(3, Duration::ZERO);
        }
        assert_eq!(h.circuit(cooldown), Circuit::Open);
        assert!(!h.admits(cooldown));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(h.circuit(cooldown), Circuit::HalfOpen);
        assert!(h.admits(cooldown));
        let probe = h.start(cooldown);
        assert!(!h.admits(cooldown), "only one probe at a time");
        h.failure(3, Duration::ZERO); // the probe failed: open again
        drop(probe);
        assert_eq!(h.circuit(cooldown), Circuit::Open);
        std::thread::sleep(Duration::from_millis(60));
        let _probe = h.start(cooldown);
        h.success("m", Duration::from_millis(5));
        assert_eq!(h.circuit(cooldown), Circuit::Closed);
        assert!(h.admits(cooldown));
    }

    #[test]
    fn latency_estimate_follows_samples() {
        let h = RegistryHealth::default();
        assert_eq!(h.latency_ms("m"), None);
        h.success("m", Duration::from_millis(10));
        for _ in 0..20 {
            h.success("m", Duration::from_millis(50));
        }
        assert!((h.latency_ms("m").unwrap() - 50.0).abs() < 1.0);
        let (n, errors, p50, p95) = h.window_stats();
        assert_eq!((n, errors, p50, p95), (21, 0, Some(50), Some(50)));
    }

    #[test]
    fn sit_out_excludes_until_it_ends() {
        let h = RegistryHealth::default();
        h.sit_out(Duration::from_millis(40));
        assert!(!h.admits(DEFAULT_COOLDOWN));
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.admits(DEFAULT_COOLDOWN));
    }
}
