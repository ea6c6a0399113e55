//! The fallback plan (SPEC §3 step 9): after a failed attempt, which attempt comes next, if any.
//!
//! The order is the selected candidate, then `fallback.chain` (else the remaining candidates).
//! A 5xx, reset or short-`retry-after` 429 is first retried on the same registry up to
//! `retry_same` times. Everything stays within `budget.max_attempts` and
//! `budget.max_total_latency_ms`. On a chain registry the model is the request's resolved model
//! if that registry may serve it, else its default; a registry with neither is skipped.

use super::resolve::may_serve;
use super::select::cooldown_of;
use super::{health::Health, Candidate};
use crate::entities::routing::{Fallback, Trigger};
use crate::snapshot::CompiledRouting;
use std::time::{Duration, Instant};

/// A `retry-after` up to this long is waited out on the same registry; a longer one sends the
/// registry to sit out and the request to the next one.
pub const SHORT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Without `budget.max_attempts`, attempts stop here.
const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Why an attempt failed before any byte reached the client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailureClass {
    ConnectError,
    Timeout,
    /// Connection reset or closed before a response.
    Reset,
    Status5xx,
    Status429 {
        retry_after: Option<Duration>,
    },
    ContextLength,
    ContentPolicy,
    Other4xx,
    /// Not the upstream's doing (e.g. the request cannot be built for this provider).
    Local,
}

impl FailureClass {
    fn triggered_by(self, triggers: &[Trigger]) -> bool {
        let has = |t| triggers.contains(&t);
        match self {
            FailureClass::ConnectError => has(Trigger::ConnectError),
            FailureClass::Timeout => has(Trigger::Timeout),
            FailureClass::Reset | FailureClass::Status5xx => has(Trigger::Status5xx),
            FailureClass::Status429 { .. } => has(Trigger::Status429),
            FailureClass::ContextLength => has(Trigger::ContextLength) || has(Trigger::Status4xx),
            FailureClass::Other4xx => has(Trigger::Status4xx),
            FailureClass::ContentPolicy | FailureClass::Local => false,
        }
    }

    fn retry_same(self) -> bool {
        match self {
            FailureClass::Reset | FailureClass::Status5xx => true,
            FailureClass::Status429 { retry_after } => {
                retry_after.is_none_or(|d| d <= SHORT_RETRY_AFTER)
            }
            _ => false,
        }
    }

    /// The label of `switchyard_upstream_attempts_total{outcome}`.
    pub fn label(self) -> &'static str {
        match self {
            FailureClass::ConnectError => "connect_error",
            FailureClass::Timeout => "timeout",
            FailureClass::Reset => "reset",
            FailureClass::Status5xx => "5xx",
            FailureClass::Status429 { .. } => "429",
            FailureClass::ContextLength => "context_length",
            FailureClass::ContentPolicy => "content_policy",
            FailureClass::Other4xx => "4xx",
            FailureClass::Local => "local",
        }
    }

    /// Whether the failure counts against the registry's circuit.
    pub fn is_health_failure(self) -> bool {
        matches!(
            self,
            FailureClass::ConnectError
                | FailureClass::Timeout
                | FailureClass::Reset
                | FailureClass::Status5xx
        )
    }
}

pub struct Plan {
    order: Vec<Candidate>,
    pos: usize,
    same: u32,
    fallback: Option<Fallback>,
    max_attempts: u32,
    deadline: Option<Instant>,
}

impl Plan {
    /// `ordered` comes from selection; its first is tried first.
    pub fn new(
        routing: &CompiledRouting,
        ordered: Vec<Candidate>,
        health: &Health,
        started: Instant,
    ) -> Plan {
        let fallback = routing.fallback.clone();
        let mut order = ordered;
        if let (Some(first), true) = (order.first().cloned(), fallback.is_some()) {
            if !routing.chain.is_empty() {
                order.truncate(1);
                for reg in &routing.chain {
                    if reg.id == first.registry.id || order.iter().any(|c| c.registry.id == reg.id)
                    {
                        continue;
                    }
                    let model = if may_serve(routing, reg, &first.model) {
                        Some(first.model.clone())
                    } else {
                        routing.rule(&reg.id).and_then(|r| r.default.clone())
                    };
                    let weight = routing
                        .targets
                        .iter()
                        .find(|t| t.registry.id == reg.id)
                        .map_or(1, |t| t.weight);
                    if let Some(model) = model {
                        let cand = Candidate {
                            registry: reg.clone(),
                            model,
                            weight,
                        };
                        if health.of(&reg.id).admits(cooldown_of(&cand)) {
                            order.push(cand);
                        }
                    }
                }
            }
        }
        // Registries with an open circuit or sitting out a retry-after are skipped while any
        // other registry of the plan (a chain member too) can take the request.
        if fallback.is_some() {
            let admitted: Vec<bool> = order
                .iter()
                .map(|c| health.of(&c.registry.id).admits(cooldown_of(c)))
                .collect();
            if admitted.iter().any(|a| *a) && !admitted.iter().all(|a| *a) {
                let mut keep = admitted.into_iter();
                order.retain(|_| keep.next().unwrap_or(false));
            }
        }
        let max_attempts = fallback.as_ref().map_or(1, |f| {
            f.budget.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1)
        });
        let deadline = fallback
            .as_ref()
            .and_then(|f| f.budget.max_total_latency_ms)
            .map(|ms| started + Duration::from_millis(ms));
        Plan {
            order,
            pos: 0,
            same: 0,
            fallback,
            max_attempts,
            deadline,
        }
    }

    pub fn current(&self) -> Option<&Candidate> {
        self.order.get(self.pos)
    }

    /// After a failure, moves to the next attempt. Returns `None` when there is none, else
    /// whether it goes to the same registry again. `made` counts the attempts so far.
    pub fn advance(&mut self, class: FailureClass, made: u32) -> Option<bool> {
        let fb = self.fallback.as_ref()?;
        if !class.triggered_by(&fb.triggers) || made >= self.max_attempts {
            return None;
        }
        if class.retry_same() && self.same < fb.retry_same {
            self.same += 1;
            return Some(true);
        }
        self.same = 0;
        self.pos += 1;
        (self.pos < self.order.len()).then_some(false)
    }

    /// Whether an attempt starting after `wait` still fits the latency budget.
    pub fn fits(&self, wait: Duration) -> bool {
        self.deadline.is_none_or(|d| Instant::now() + wait < d)
    }
}
