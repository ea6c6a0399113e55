//! The compiled, immutable view of the store that the proxy reads on every request.
//!
//! Built from the `Model` after each committed write and swapped in whole (`ArcSwap`), so a
//! request takes one lock-free load and then only follows `Arc`s: slug → consumer, with its
//! registries, weights, policies and key hashes already resolved. Registries and roles are
//! compiled once and shared by every consumer that uses them. Nothing here touches sled.

use crate::config::UpstreamDefaults;
use crate::entities::consumer::{ConsumerType, FailMode, RoutingMode, ToolkitEntry};
use crate::entities::registry::Provider;
use crate::entities::routing::{Algorithm, Fallback, LbConfig, Routing};
use crate::entities::{AuthSpec, Record, RegistrySpec};
use crate::policy::CompiledPolicy;
use crate::store::Model;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
pub struct Snapshot {
    /// Consumers by slug.
    pub consumers: HashMap<String, Arc<CompiledConsumer>>,
    /// Registries by id.
    pub registries: HashMap<String, Arc<CompiledRegistry>>,
}

/// Where a registry is: its base URL split for the connector.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The base URL's path, without a trailing `/` (may be empty).
    pub prefix: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Option<Endpoint> {
        let uri: http::Uri = url.parse().ok()?;
        let tls = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let host = uri
            .host()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let prefix = uri.path().trim_end_matches('/').to_string();
        Some(Endpoint {
            tls,
            host,
            port,
            prefix,
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub stream_idle: Duration,
    pub total: Duration,
}

#[derive(Debug)]
pub struct CompiledRegistry {
    pub id: String,
    pub name: String,
    pub provider: Provider,
    pub endpoint: Option<Endpoint>,
    pub timeouts: Timeouts,
    pub spec: RegistrySpec,
}

impl CompiledRegistry {
    /// Whether its catalog serves `model` (an empty catalog serves any).
    pub fn serves(&self, model: &str) -> bool {
        self.spec.models.is_empty() || self.spec.models.iter().any(|m| m == model)
    }
}

/// One attached registry of a routing config, with its weight and model policy.
#[derive(Debug, Clone)]
pub struct Target {
    pub registry: Arc<CompiledRegistry>,
    pub weight: u32,
}

#[derive(Debug, Clone, Default)]
pub struct ModelRule {
    pub allowed: Vec<String>,
    pub default: Option<String>,
}

impl ModelRule {
    pub fn allows(&self, model: &str) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|m| m == model)
    }
}

#[derive(Debug, Clone)]
pub struct PoolMember {
    pub registry: Arc<CompiledRegistry>,
    pub models: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub alias: String,
    pub members: Vec<PoolMember>,
}

/// A routing config (an inline consumer's or a role's), resolved.
#[derive(Debug, Default)]
pub struct CompiledRouting {
    /// Attached registries, in routing order.
    pub targets: Vec<Target>,
    /// Model policies by registry id.
    pub rules: HashMap<String, ModelRule>,
    pub algorithm: Algorithm,
    pub pool: Option<Pool>,
    pub fallback: Option<Fallback>,
    pub chain: Vec<Arc<CompiledRegistry>>,
}

impl CompiledRouting {
    pub fn rule(&self, registry_id: &str) -> Option<&ModelRule> {
        self.rules.get(registry_id)
    }

    /// Whether configuration names this model for this registry (a catalog, an allow-list, a
    /// default or a pool member), so it may be a metric label.
    pub fn knows_model(&self, registry: &CompiledRegistry, model: &str) -> bool {
        registry.spec.models.iter().any(|m| m == model)
            || self.rule(&registry.id).is_some_and(|r| {
                r.allowed.iter().any(|m| m == model) || r.default.as_deref() == Some(model)
            })
            || self.pool.as_ref().is_some_and(|p| {
                p.members
                    .iter()
                    .any(|m| m.registry.id == registry.id && m.models.iter().any(|x| x == model))
            })
    }
}

/// A jwt or oauth2 auth, ready to verify tokens.
pub struct TokenAuth {
    pub id: String,
    pub name: String,
    pub active: bool,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub kind: TokenKind,
}

pub enum TokenKind {
    Jwt(crate::auth::jwt::JwtAuth),
    OAuth2(crate::entities::auth::OAuth2Config),
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn compile_token_auth(a: &Record<AuthSpec>) -> Option<TokenAuth> {
    let kind = match (&a.spec.jwt, &a.spec.oauth2) {
        (Some(j), _) => TokenKind::Jwt(crate::auth::jwt::JwtAuth::compile(j)?),
        (None, Some(o)) => TokenKind::OAuth2(o.clone()),
        _ => return None,
    };
    Some(TokenAuth {
        id: a.meta.id.clone(),
        name: a.spec.name.clone(),
        active: a.spec.active,
        expires_at: a.spec.expires_at_unix(),
        kind,
    })
}

#[derive(Debug, Clone)]
pub struct CompiledKey {
    pub auth_id: String,
    pub hash: [u8; 32],
    pub active: bool,
    /// Unix seconds.
    pub expires_at: Option<i64>,
}

#[derive(Debug)]
pub struct CompiledConsumer {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub gateway_id: String,
    pub gateway_name: String,
    pub active: bool,
    pub gateway_active: bool,
    pub kind: ConsumerType,
    pub routing_mode: RoutingMode,
    pub routing: Arc<CompiledRouting>,
    /// (role name, routing) in the consumer's `role_ids` order.
    pub roles: Vec<(String, Arc<CompiledRouting>)>,
    pub keys: Vec<CompiledKey>,
    /// jwt and oauth2 auths attached, compiled.
    pub token_auths: Vec<Arc<TokenAuth>>,
    /// Attached policies, compiled (shared with every consumer that has them).
    pub policies: Vec<Arc<CompiledPolicy>>,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub toolkit: Vec<ToolkitEntry>,
    pub fail_mode: FailMode,
}

fn compile_registry(r: &Record<RegistrySpec>, d: &UpstreamDefaults) -> CompiledRegistry {
    let t = &r.spec.timeouts;
    let ms = |v: Option<u64>, default: u64| Duration::from_millis(v.unwrap_or(default));
    CompiledRegistry {
        id: r.meta.id.clone(),
        name: r.spec.name.clone(),
        provider: r.spec.provider,
        endpoint: r.spec.base_url.as_deref().and_then(Endpoint::parse),
        timeouts: Timeouts {
            connect: ms(t.connect_ms, d.connect_ms),
            first_byte: ms(t.first_byte_ms, d.first_byte_ms),
            stream_idle: ms(t.stream_idle_ms, d.stream_idle_ms),
            total: ms(t.total_ms, d.total_ms),
        },
        spec: r.spec.clone(),
    }
}

fn compile_routing(
    routing: &Routing,
    regs: &HashMap<String, Arc<CompiledRegistry>>,
) -> CompiledRouting {
    let reg = |id: &str| regs.get(id).cloned();
    let targets = routing
        .registries
        .iter()
        .filter_map(|w| {
            reg(&w.registry_id).map(|registry| Target {
                registry,
                weight: w.weight,
            })
        })
        .collect();
    let rules = routing
        .model_policies
        .iter()
        .map(|p| {
            let rule = ModelRule {
                allowed: p.allowed.clone(),
                default: p.default.clone(),
            };
            (p.registry_id.clone(), rule)
        })
        .collect();
    let lb: Option<&LbConfig> = routing.lb_config.as_ref().filter(|l| l.enabled);
    let pool = lb.and_then(|l| {
        let alias = l.pool_alias.clone()?;
        let members = l
            .members
            .iter()
            .filter_map(|m| {
                reg(&m.registry_id).map(|registry| PoolMember {
                    registry,
                    models: m.models.clone(),
                })
            })
            .collect();
        Some(Pool { alias, members })
    });
    let fallback = routing.fallback.clone().filter(|f| f.enabled);
    let chain = fallback
        .iter()
        .flat_map(|f| f.chain.iter())
        .filter_map(|id| reg(id))
        .collect();
    CompiledRouting {
        targets,
        rules,
        algorithm: lb.map(|l| l.algorithm).unwrap_or_default(),
        pool,
        fallback,
        chain,
    }
}

fn parse_hash(hex_hash: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_hash).ok()?;
    bytes.try_into().ok()
}

impl Snapshot {
    pub fn compile(model: &Model, defaults: &UpstreamDefaults) -> Snapshot {
        let registries: HashMap<String, Arc<CompiledRegistry>> = model
            .registries
            .values()
            .map(|r| (r.meta.id.clone(), Arc::new(compile_registry(r, defaults))))
            .collect();
        let roles: HashMap<&str, (String, Arc<CompiledRouting>)> = model
            .roles
            .values()
            .map(|r| {
                let routing = Arc::new(compile_routing(&r.spec.routing, &registries));
                (r.meta.id.as_str(), (r.spec.name.clone(), routing))
            })
            .collect();
        let auths: HashMap<&str, Arc<Record<AuthSpec>>> = model
            .auths
            .values()
            .map(|a| (a.meta.id.as_str(), Arc::new(a.clone())))
            .collect();
        let token_auths: HashMap<&str, Arc<TokenAuth>> = model
            .auths
            .values()
            .filter(|a| a.spec.key_hash.is_none())
            .filter_map(|a| Some((a.meta.id.as_str(), Arc::new(compile_token_auth(a)?))))
            .collect();
        let policies: HashMap<&str, Arc<CompiledPolicy>> = model
            .policies
            .values()
            .filter_map(|p| Some((p.meta.id.as_str(), Arc::new(CompiledPolicy::compile(p)?))))
            .collect();
        let mut consumers = HashMap::with_capacity(model.consumers.len());
        for c in model.consumers.values() {
            let Some(slug) = c.meta.slug.clone() else {
                continue;
            };
            let gateway = model.gateways.get(c.meta.gateway_id());
            let attached = || {
                c.spec
                    .auth_ids
                    .iter()
                    .filter_map(|id| auths.get(id.as_str()))
            };
            let keys = attached()
                .filter_map(|a| {
                    Some(CompiledKey {
                        auth_id: a.meta.id.clone(),
                        hash: parse_hash(a.spec.key_hash.as_deref()?)?,
                        active: a.spec.active,
                        expires_at: a.spec.expires_at_unix(),
                    })
                })
                .collect();
            let token_auths = c
                .spec
                .auth_ids
                .iter()
                .filter_map(|id| token_auths.get(id.as_str()).cloned())
                .collect();
            let headers = c
                .spec
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                        http::HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect();
            let compiled = CompiledConsumer {
                id: c.meta.id.clone(),
                name: c.spec.name.clone(),
                slug: slug.clone(),
                gateway_id: c.meta.gateway_id().to_string(),
                gateway_name: gateway.map(|g| g.spec.name.clone()).unwrap_or_default(),
                active: c.spec.active,
                gateway_active: gateway.is_some_and(|g| g.spec.active),
                kind: c.spec.kind,
                routing_mode: c.spec.routing_mode,
                routing: Arc::new(compile_routing(&c.spec.routing, &registries)),
                roles: c
                    .spec
                    .role_ids
                    .iter()
                    .filter_map(|id| roles.get(id.as_str()).cloned())
                    .collect(),
                keys,
                token_auths,
                policies: c
                    .spec
                    .policy_ids
                    .iter()
                    .filter_map(|id| policies.get(id.as_str()).cloned())
                    .collect(),
                headers,
                toolkit: c.spec.toolkit.clone(),
                fail_mode: c.spec.fail_mode,
            };
            consumers.insert(slug, Arc::new(compiled));
        }
        Snapshot {
            consumers,
            registries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parsing() {
        let e = Endpoint::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.prefix.as_str()),
            (true, "api.openai.com", 443, "/v1")
        );
        assert_eq!(e.authority(), "api.openai.com");
        let e = Endpoint::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!((e.port, e.prefix.as_str()), (9000, ""));
        assert_eq!(e.authority(), "127.0.0.1:9000");
    }
}
