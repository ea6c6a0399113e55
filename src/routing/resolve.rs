//! Model resolution (SPEC §3 step 5): from the requested model (or none) to the candidate
//! registries, each with the model it will be sent.

use crate::proxy::error::ProxyError;
use crate::snapshot::{CompiledRegistry, CompiledRouting};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Candidate {
    pub registry: Arc<CompiledRegistry>,
    /// The model sent upstream.
    pub model: String,
    pub weight: u32,
}

/// Whether the routing config lets `registry` serve `model` (its policy allows it and its
/// catalog has it).
pub fn may_serve(routing: &CompiledRouting, registry: &CompiledRegistry, model: &str) -> bool {
    routing.rule(&registry.id).is_none_or(|r| r.allows(model)) && registry.serves(model)
}

fn not_allowed(model: &str) -> ProxyError {
    ProxyError::ModelNotAllowed(format!("model `{model}` is not allowed for this consumer"))
}

/// The candidates for a request, in routing order.
pub fn resolve(
    routing: &CompiledRouting,
    requested: Option<&str>,
) -> Result<Vec<Candidate>, ProxyError> {
    let requested = requested.map(str::trim).filter(|m| !m.is_empty());
    let model = match requested {
        Some(m) => m.to_string(),
        None => {
            // The default of the first registry (routing order) that has one.
            let first = routing.targets.iter().find_map(|t| {
                let d = routing.rule(&t.registry.id)?.default.as_deref()?;
                Some((t, d))
            });
            let Some((target, default)) = first else {
                return Err(ProxyError::InvalidRequest(
                    "`model` is required: this consumer has no default model".into(),
                ));
            };
            let mut out = vec![Candidate {
                registry: target.registry.clone(),
                model: default.to_string(),
                weight: target.weight,
            }];
            out.extend(
                routing
                    .targets
                    .iter()
                    .filter(|t| {
                        t.registry.id != target.registry.id
                            && may_serve(routing, &t.registry, default)
                    })
                    .map(|t| Candidate {
                        registry: t.registry.clone(),
                        model: default.to_string(),
                        weight: t.weight,
                    }),
            );
            return Ok(out);
        }
    };

    if let Some(pool) = routing.pool.as_ref().filter(|p| p.alias == model) {
        let weight_of = |id: &str| {
            routing
                .targets
                .iter()
                .find(|t| t.registry.id == id)
                .map_or(1, |t| t.weight)
        };
        let out: Vec<Candidate> = pool
            .members
            .iter()
            .filter_map(|m| {
                let model = m
                    .models
                    .first()
                    .cloned()
                    .or_else(|| routing.rule(&m.registry.id)?.default.clone())?;
                Some(Candidate {
                    registry: m.registry.clone(),
                    model,
                    weight: weight_of(&m.registry.id),
                })
            })
            .collect();
        return if out.is_empty() {
            Err(not_allowed(&model))
        } else {
            Ok(out)
        };
    }

    if let Some((name, rest)) = model.split_once('/') {
        if let Some(t) = routing.targets.iter().find(|t| t.registry.name == name) {
            if rest.is_empty() || !may_serve(routing, &t.registry, rest) {
                return Err(not_allowed(&model));
            }
            return Ok(vec![Candidate {
                registry: t.registry.clone(),
                model: rest.to_string(),
                weight: t.weight,
            }]);
        }
    }

    let out: Vec<Candidate> = routing
        .targets
        .iter()
        .filter(|t| may_serve(routing, &t.registry, &model))
        .map(|t| Candidate {
            registry: t.registry.clone(),
            model: model.clone(),
            weight: t.weight,
        })
        .collect();
    if out.is_empty() {
        return Err(not_allowed(&model));
    }
    Ok(out)
}

/// The models a consumer may use, as `(model, registry name)`, for `GET /v1/models`.
pub fn listable_models(routing: &CompiledRouting) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |m: &str, owner: &str| {
        if !out.iter().any(|(a, b)| a == m && b == owner) {
            out.push((m.to_string(), owner.to_string()));
        }
    };
    for t in &routing.targets {
        let r = &t.registry;
        let rule = routing.rule(&r.id);
        let allowed = rule.map(|r| r.allowed.as_slice()).unwrap_or_default();
        let models: Vec<&String> = if !allowed.is_empty() {
            allowed.iter().filter(|m| r.serves(m)).collect()
        } else {
            r.spec.models.iter().collect()
        };
        for m in models {
            push(m, &r.name);
        }
        if let Some(d) = rule.and_then(|r| r.default.as_deref()) {
            push(d, &r.name);
        }
    }
    if let Some(pool) = &routing.pool {
        push(&pool.alias, "switchyard");
    }
    out
}
