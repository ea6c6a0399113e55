//! Selection (SPEC §3 step 7): which candidate is tried first.
//!
//! Registries whose circuit is open or that sit out a `retry-after` are skipped while another
//! candidate exists. Among the rest:
//! - `weighted` (default) and `round_robin`: a smooth weighted round-robin schedule per
//!   candidate set (weights 80/20 give exactly 4 of every 5, interleaved; equal weights
//!   alternate), walked by one atomic counter — no lock on the hot path.
//! - `least_latency`: the lowest latency estimate for the resolved model; an unmeasured
//!   registry counts as fastest, and a small share of requests explores the others so that
//!   estimates stay fresh and a recovered registry wins its traffic back.
//! - `least_connections`: the fewest requests in flight; ties go by the weighted schedule.
//! - `cost`: the cheapest by the registry's `pricing` for the model; ties by weight.
//! - `semantic` needs an embedding service and is served as `weighted`.

use super::health::{Health, DEFAULT_COOLDOWN};
use super::Candidate;
use crate::entities::routing::Algorithm;
use crate::hash::DashMap;
use rand::Rng;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Share of `least_latency` requests sent to a random other registry.
pub const EXPLORATION: f64 = 0.05;
/// Schedules kept before the cache is cleared (sets change with admin writes).
const MAX_SCHEDULES: usize = 10_000;

struct Schedule {
    slots: Vec<u16>,
    next: AtomicU64,
}

impl Schedule {
    /// The smooth weighted round-robin sequence over one full cycle.
    fn new(weights: &[u32]) -> Schedule {
        let total: i64 = weights.iter().map(|w| i64::from((*w).max(1))).sum();
        let mut current = vec![0i64; weights.len()];
        let mut slots = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(weights) {
                *c += i64::from((*w).max(1));
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
                .unwrap_or((0, &0));
            current[best] -= total;
            slots.push(best as u16);
        }
        Schedule {
            slots,
            next: AtomicU64::new(0),
        }
    }

    fn pick(&self) -> usize {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        usize::from(self.slots[(n % self.slots.len() as u64) as usize])
    }
}

pub fn cooldown_of(c: &Candidate) -> Duration {
    c.registry
        .spec
        .circuit_breaker
        .map_or(DEFAULT_COOLDOWN, |cb| Duration::from_millis(cb.cooldown_ms))
}

#[derive(Default)]
pub struct Selector {
    schedules: DashMap<u64, Arc<Schedule>>,
    /// Hashes a candidate set into its schedule's key.
    keys: crate::hash::RandomState,
}

impl Selector {
    fn schedule(&self, cands: &[&Candidate], equal: bool) -> Arc<Schedule> {
        let weights: Vec<u32> = cands
            .iter()
            .map(|c| if equal { 1 } else { c.weight })
            .collect();
        let mut h = self.keys.build_hasher();
        for (c, w) in cands.iter().zip(&weights) {
            c.registry.id.hash(&mut h);
            w.hash(&mut h);
        }
        let key = h.finish();
        if let Some(s) = self.schedules.get(&key) {
            return s.clone();
        }
        if self.schedules.len() >= MAX_SCHEDULES {
            self.schedules.clear();
        }
        self.schedules
            .entry(key)
            .or_insert_with(|| Arc::new(Schedule::new(&weights)))
            .clone()
    }

    /// Orders `candidates` for trying: the algorithm's pick first, then the other admitted
    /// candidates in routing order. Candidates not admitted are dropped unless none is.
    pub fn order(
        &self,
        algorithm: Algorithm,
        candidates: Vec<Candidate>,
        health: &Health,
    ) -> Vec<Candidate> {
        let admitted: Vec<bool> = candidates
            .iter()
            .map(|c| health.of(&c.registry.id).admits(cooldown_of(c)))
            .collect();
        let mut pool: Vec<Candidate> = if admitted.iter().any(|a| *a) {
            candidates
                .into_iter()
                .zip(&admitted)
                .filter(|(_, a)| **a)
                .map(|(c, _)| c)
                .collect()
        } else {
            candidates
        };
        if pool.len() < 2 {
            return pool;
        }
        let pick = self.pick(algorithm, &pool, health);
        let first = pool.remove(pick);
        pool.insert(0, first);
        pool
    }

    fn pick(&self, algorithm: Algorithm, pool: &[Candidate], health: &Health) -> usize {
        let all: Vec<&Candidate> = pool.iter().collect();
        match algorithm {
            Algorithm::Weighted | Algorithm::Semantic => self.schedule(&all, false).pick(),
            Algorithm::RoundRobin => self.schedule(&all, true).pick(),
            Algorithm::LeastLatency => {
                let mut rng = rand::thread_rng();
                let best = pool
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        (
                            i,
                            health
                                .of(&c.registry.id)
                                .latency_ms(&c.model)
                                .unwrap_or(0.0),
                        )
                    })
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map_or(0, |(i, _)| i);
                if rng.gen_bool(EXPLORATION) {
                    let other = rng.gen_range(0..pool.len() - 1);
                    if other >= best {
                        other + 1
                    } else {
                        other
                    }
                } else {
                    best
                }
            }
            Algorithm::LeastConnections => {
                let loads: Vec<i64> = pool
                    .iter()
                    .map(|c| health.of(&c.registry.id).in_flight.load(Ordering::Relaxed))
                    .collect();
                let min = loads.iter().copied().min().unwrap_or(0);
                let idle: Vec<usize> = (0..pool.len()).filter(|i| loads[*i] == min).collect();
                let tied: Vec<&Candidate> = idle.iter().map(|i| &pool[*i]).collect();
                idle[self.schedule(&tied, false).pick()]
            }
            Algorithm::Cost => {
                let price = |c: &Candidate| {
                    c.registry
                        .spec
                        .pricing
                        .get(&c.model)
                        .map_or(f64::INFINITY, |p| p.input_per_mtok + p.output_per_mtok)
                };
                (0..pool.len())
                    .min_by(|a, b| {
                        price(&pool[*a])
                            .total_cmp(&price(&pool[*b]))
                            .then(pool[*b].weight.cmp(&pool[*a].weight))
                    })
                    .unwrap_or(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_schedule_is_exact_and_interleaved() {
        let s = Schedule::new(&[80, 20]);
        assert_eq!(s.slots.len(), 100);
        assert_eq!(s.slots.iter().filter(|x| **x == 0).count(), 80);
        // never more than 4 of the heavy one in a row
        let runs = s.slots.split(|x| *x == 1).map(|r| r.len()).max().unwrap();
        assert!(runs <= 4, "{:?}", s.slots);
        let s = Schedule::new(&[1, 1]);
        assert_eq!(s.slots, vec![0, 1]);
        let s = Schedule::new(&[5, 1, 1]);
        assert_eq!(s.slots, vec![0, 0, 1, 0, 2, 0, 0]);
    }
}
