//! The routing fields shared by inline consumers and roles: attached registries with weights,
//! `lb_config`, `fallback` and `model_policies`.
//!
//! Input accepts seed 001's create form (`registries: [{id, weight, model_policies}]`) and the
//! response form (`registry_ids` + `registry_weights`); both normalise to one stored list.

use super::registry::{Provider, ProviderAuth};
use super::{parse_input, redact_secret, Ctx, RegistrySpec};
use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::HashSet;

/// Top-level keys that belong to routing, split off a consumer's or role's body.
pub const ROUTING_KEYS: [&str; 6] = [
    "registries",
    "registry_ids",
    "registry_weights",
    "lb_config",
    "fallback",
    "model_policies",
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegistryWeight {
    pub registry_id: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPolicy {
    pub registry_id: String,
    #[serde(default)]
    pub allowed: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    RoundRobin,
    #[default]
    Weighted,
    LeastLatency,
    LeastConnections,
    Cost,
    Semantic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolMember {
    pub registry_id: String,
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub auth: ProviderAuth,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbConfig {
    #[serde(default = "super::default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_alias: Option<String>,
    #[serde(default)]
    pub members: Vec<PoolMember>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_config: Option<EmbeddingConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Trigger {
    #[serde(rename = "5xx")]
    Status5xx,
    #[serde(rename = "429")]
    Status429,
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "connect_error")]
    ConnectError,
    #[serde(rename = "context_length")]
    ContextLength,
    #[serde(rename = "4xx")]
    Status4xx,
}

fn default_triggers() -> Vec<Trigger> {
    vec![
        Trigger::Status5xx,
        Trigger::Status429,
        Trigger::Timeout,
        Trigger::ConnectError,
    ]
}

fn default_retry_same() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_latency_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    #[serde(default = "super::default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub chain: Vec<String>,
    #[serde(default = "default_triggers")]
    pub triggers: Vec<Trigger>,
    #[serde(default = "default_retry_same")]
    pub retry_same: u32,
    #[serde(default)]
    pub budget: Budget,
}

/// The stored routing config. Every consumer holds one, and most have no pool and no
/// fallback: those two are boxed, so that the config is 64 bytes instead of 360.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Routing {
    pub registries: Vec<RegistryWeight>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb_config: Option<Box<LbConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Box<Fallback>>,
    #[serde(default)]
    pub model_policies: Vec<ModelPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InlinePolicy {
    #[serde(default)]
    allowed: Vec<String>,
    #[serde(default)]
    default: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryRef {
    id: String,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    model_policies: Option<InlinePolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightInput {
    registry_id: String,
    weight: i64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RoutingInput {
    #[serde(default)]
    registries: Option<Vec<RegistryRef>>,
    #[serde(default)]
    registry_ids: Option<Vec<String>>,
    #[serde(default)]
    registry_weights: Option<Vec<WeightInput>>,
    #[serde(default)]
    lb_config: Option<LbConfig>,
    #[serde(default)]
    fallback: Option<Fallback>,
    #[serde(default)]
    model_policies: Option<Vec<ModelPolicy>>,
}

/// Removes the routing keys from `body` and returns them as their own object.
pub fn split_routing(body: &mut Map<String, Value>) -> Map<String, Value> {
    ROUTING_KEYS
        .iter()
        .filter_map(|k| body.remove(*k).map(|v| (k.to_string(), v)))
        .collect()
}

/// A weight of 1..100, else a validation error on `field`.
pub fn check_weight(w: i64, field: &str) -> Result<u32, ApiError> {
    if (1..=100).contains(&w) {
        Ok(w as u32)
    } else {
        Err(ApiError::validation(field, "weight must be 1..100"))
    }
}

fn check_registry(ctx: &Ctx, id: &str, field: &str) -> Result<(), ApiError> {
    let r = ctx.lookup::<RegistrySpec>(id, field)?;
    if r.spec.provider == Provider::Mcp {
        return Err(ApiError::validation(
            field,
            "an mcp registry serves a consumer's toolkit, not model routing",
        ));
    }
    Ok(())
}

fn check_policy(p: &ModelPolicy, field: &str) -> Result<(), ApiError> {
    if let Some(d) = &p.default {
        if d.is_empty() {
            return Err(ApiError::validation(
                format!("{field}.default"),
                "must not be empty",
            ));
        }
        if !p.allowed.is_empty() && !p.allowed.contains(d) {
            return Err(ApiError::validation(
                format!("{field}.default"),
                format!("default model `{d}` is not in allowed"),
            ));
        }
    }
    Ok(())
}

impl Routing {
    /// Parses and checks the routing part of a body (see `split_routing`).
    pub fn from_input(input: Map<String, Value>, ctx: &Ctx) -> Result<Routing, ApiError> {
        let input: RoutingInput = parse_input(Value::Object(input))?;
        let mut routing = Routing::default();
        let mut inline_policies = Vec::new();
        match (input.registries, input.registry_ids) {
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "registry_ids",
                    "give either registries or registry_ids, not both",
                ))
            }
            (Some(refs), None) => {
                if input.registry_weights.is_some() {
                    return Err(ApiError::validation(
                        "registry_weights",
                        "weights go inside `registries` when that form is used",
                    ));
                }
                for (i, r) in refs.into_iter().enumerate() {
                    let field = format!("registries[{i}]");
                    check_registry(ctx, &r.id, &format!("{field}.id"))?;
                    let weight = check_weight(r.weight.unwrap_or(1), &format!("{field}.weight"))?;
                    if let Some(p) = r.model_policies {
                        let p = ModelPolicy {
                            registry_id: r.id.clone(),
                            allowed: p.allowed,
                            default: p.default,
                        };
                        check_policy(&p, &format!("{field}.model_policies"))?;
                        inline_policies.push(p);
                    }
                    routing.push_registry(r.id, weight, &field)?;
                }
            }
            (None, ids) => {
                let weights = input.registry_weights.unwrap_or_default();
                for (i, id) in ids.unwrap_or_default().into_iter().enumerate() {
                    let field = format!("registry_ids[{i}]");
                    check_registry(ctx, &id, &field)?;
                    routing.push_registry(id, 1, &field)?;
                }
                for (i, w) in weights.into_iter().enumerate() {
                    let field = format!("registry_weights[{i}]");
                    let weight = check_weight(w.weight, &format!("{field}.weight"))?;
                    match routing
                        .registries
                        .iter_mut()
                        .find(|r| r.registry_id == w.registry_id)
                    {
                        Some(r) => r.weight = weight,
                        None => {
                            return Err(ApiError::validation(
                                format!("{field}.registry_id"),
                                "weights must name a registry in registry_ids",
                            ))
                        }
                    }
                }
            }
        }
        let listed = input.model_policies.unwrap_or_default();
        for (i, p) in listed.iter().enumerate() {
            let field = format!("model_policies[{i}]");
            check_registry(ctx, &p.registry_id, &format!("{field}.registry_id"))?;
            check_policy(p, &field)?;
            if inline_policies
                .iter()
                .any(|q| q.registry_id == p.registry_id)
            {
                return Err(ApiError::validation(
                    format!("{field}.registry_id"),
                    "this registry's model policy is also given inside `registries`",
                ));
            }
        }
        routing.model_policies = inline_policies;
        for p in listed {
            if routing
                .model_policies
                .iter()
                .any(|q| q.registry_id == p.registry_id)
            {
                return Err(ApiError::validation(
                    "model_policies",
                    "one policy per registry",
                ));
            }
            routing.model_policies.push(p);
        }
        if let Some(lb) = &input.lb_config {
            if lb
                .pool_alias
                .as_deref()
                .is_some_and(|a| a.trim().is_empty())
            {
                return Err(ApiError::validation(
                    "lb_config.pool_alias",
                    "must not be empty",
                ));
            }
            for (i, m) in lb.members.iter().enumerate() {
                check_registry(
                    ctx,
                    &m.registry_id,
                    &format!("lb_config.members[{i}].registry_id"),
                )?;
            }
            if lb.pool_alias.is_some() && lb.members.is_empty() {
                return Err(ApiError::validation(
                    "lb_config.members",
                    "a pool_alias needs members",
                ));
            }
        }
        if let Some(fb) = &input.fallback {
            for (i, id) in fb.chain.iter().enumerate() {
                check_registry(ctx, id, &format!("fallback.chain[{i}]"))?;
            }
            if fb.retry_same > 10 {
                return Err(ApiError::validation("fallback.retry_same", "must be 0..10"));
            }
            if fb.budget.max_attempts == Some(0) {
                return Err(ApiError::validation(
                    "fallback.budget.max_attempts",
                    "must be at least 1",
                ));
            }
            if fb.budget.max_total_latency_ms == Some(0) {
                return Err(ApiError::validation(
                    "fallback.budget.max_total_latency_ms",
                    "must be positive",
                ));
            }
        }
        routing.lb_config = input.lb_config.map(Box::new);
        routing.fallback = input.fallback.map(Box::new);
        Ok(routing)
    }

    fn push_registry(&mut self, id: String, weight: u32, field: &str) -> Result<(), ApiError> {
        if self.registries.iter().any(|r| r.registry_id == id) {
            return Err(ApiError::validation(
                field,
                format!("registry `{id}` is listed twice"),
            ));
        }
        self.registries.push(RegistryWeight {
            registry_id: id,
            weight,
        });
        Ok(())
    }

    /// Attaches (or re-weights) a registry.
    pub fn attach(&mut self, id: &str, weight: u32) {
        match self.registries.iter_mut().find(|r| r.registry_id == id) {
            Some(r) => r.weight = weight,
            None => self.registries.push(RegistryWeight {
                registry_id: id.to_string(),
                weight,
            }),
        }
    }

    /// Drops the spare capacity of its lists (see `ConsumerSpec::shrink_to_fit`).
    pub fn shrink_to_fit(&mut self) {
        self.registries.shrink_to_fit();
        self.model_policies.shrink_to_fit();
        for p in &mut self.model_policies {
            p.allowed.shrink_to_fit();
        }
    }

    /// Detaches a registry and drops its model policy.
    pub fn detach(&mut self, id: &str) {
        self.registries.retain(|r| r.registry_id != id);
        self.model_policies.retain(|p| p.registry_id != id);
    }

    /// Whether this config mentions a registry anywhere.
    pub fn references(&self, id: &str) -> bool {
        self.registries.iter().any(|r| r.registry_id == id)
            || self.model_policies.iter().any(|p| p.registry_id == id)
            || self
                .lb_config
                .as_ref()
                .is_some_and(|lb| lb.members.iter().any(|m| m.registry_id == id))
            || self
                .fallback
                .as_ref()
                .is_some_and(|fb| fb.chain.iter().any(|c| c == id))
    }

    /// The response form: `registry_ids`, `registry_weights`, `lb_config`, `fallback`,
    /// `model_policies`.
    pub fn public_fields(&self, redact: bool, out: &mut Map<String, Value>) {
        let ids: Vec<&str> = self
            .registries
            .iter()
            .map(|r| r.registry_id.as_str())
            .collect();
        out.insert("registry_ids".into(), json!(ids));
        out.insert("registry_weights".into(), json!(self.registries));
        let mut lb = self.lb_config.clone();
        if redact {
            if let Some(auth) = lb
                .as_mut()
                .and_then(|l| l.embedding_config.as_mut())
                .map(|e| &mut e.auth)
            {
                for s in [
                    &mut auth.api_key,
                    &mut auth.header_value,
                    &mut auth.param_value,
                ] {
                    if let Some(v) = s.as_mut() {
                        *v = redact_secret(v);
                    }
                }
            }
        }
        out.insert("lb_config".into(), json!(lb));
        out.insert("fallback".into(), json!(self.fallback));
        out.insert("model_policies".into(), json!(self.model_policies));
    }

    /// Ids of all registries referenced, deduplicated, in first-mention order.
    pub fn registry_ids(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let lb = self
            .lb_config
            .iter()
            .flat_map(|l| l.members.iter().map(|m| m.registry_id.as_str()));
        let fb = self
            .fallback
            .iter()
            .flat_map(|f| f.chain.iter().map(String::as_str));
        for id in self
            .registries
            .iter()
            .map(|r| r.registry_id.as_str())
            .chain(lb)
            .chain(fb)
            .chain(self.model_policies.iter().map(|p| p.registry_id.as_str()))
        {
            if seen.insert(id) {
                out.push(id);
            }
        }
        out
    }
}

/// Before merging a PATCH into the stored response form: a patch that restates the registry
/// set in one form replaces the other form, and keeps the model policies of registries that
/// stay attached unless it restates those too.
pub fn prepare_patch_base(base: &mut Map<String, Value>, patch: &Value) {
    let Some(p) = patch.as_object() else { return };
    if p.contains_key("registries") {
        base.remove("registry_ids");
        base.remove("registry_weights");
        if !p.contains_key("model_policies") {
            let kept: Vec<&str> = p["registries"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|r| r.get("model_policies").is_none())
                        .filter_map(|r| r.get("id").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(Value::Array(policies)) = base.get_mut("model_policies") {
                policies.retain(|mp| {
                    mp.get("registry_id")
                        .and_then(Value::as_str)
                        .is_some_and(|id| kept.contains(&id))
                });
            }
        }
    } else if p.contains_key("registry_ids") && !p.contains_key("registry_weights") {
        base.remove("registry_weights");
    }
    // Nulls in the stored form mean "not set"; drop them so they are not merged as values.
    base.retain(|_, v| !v.is_null());
}
