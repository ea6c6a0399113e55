//! Policies (SPEC §2 policy types, §3 step 6): limits, guardrails and rate limits, compiled once
//! per snapshot and applied per request in that order.

pub mod guardrail;
pub mod limits;
pub mod rate_limit;
pub mod text;

use crate::entities::policy::{LimitsConfig, PolicyType, RateLimitConfig};
use crate::entities::{PolicySpec, Record};
pub use guardrail::Guardrail;

/// A policy ready for the hot path.
#[derive(Debug)]
pub enum CompiledPolicy {
    RateLimit {
        id: String,
        name: String,
        config: RateLimitConfig,
    },
    Guardrail(Guardrail),
    Limits(LimitsConfig),
}

impl CompiledPolicy {
    /// `None` only for a stored policy that no longer parses (validated on write, so never).
    pub fn compile(p: &Record<PolicySpec>) -> Option<CompiledPolicy> {
        Some(match p.spec.kind {
            PolicyType::RateLimit => CompiledPolicy::RateLimit {
                id: p.meta.id.clone(),
                name: p.spec.name.clone(),
                config: p.spec.rate_limit()?,
            },
            PolicyType::Guardrail => {
                CompiledPolicy::Guardrail(Guardrail::compile(&p.spec.name, &p.spec.guardrail()?)?)
            }
            PolicyType::Limits => CompiledPolicy::Limits(p.spec.limits()?),
        })
    }
}

/// The limits of several `limits` policies together: the tightest of each.
pub fn merged_limits<'a>(
    policies: impl Iterator<Item = &'a CompiledPolicy>,
) -> Option<LimitsConfig> {
    let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    policies
        .filter_map(|p| match p {
            CompiledPolicy::Limits(l) => Some(l.clone()),
            _ => None,
        })
        .reduce(|a, b| LimitsConfig {
            max_input_tokens: min(a.max_input_tokens, b.max_input_tokens),
            max_output_tokens: min(a.max_output_tokens, b.max_output_tokens),
            max_messages: min(a.max_messages, b.max_messages),
            max_body_bytes: min(a.max_body_bytes, b.max_body_bytes),
        })
}
