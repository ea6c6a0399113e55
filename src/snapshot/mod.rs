//! The compiled, immutable view of the store that the proxy reads on every request.
//!
//! Built from the `Model` and swapped in whole (`ArcSwap`), so a request takes one lock-free
//! load and then only follows `Arc`s: slug → consumer, with its registries, weights, policies
//! and key hashes already resolved. Registries, roles and policies are compiled once and shared
//! by every consumer that uses them. Nothing here touches sled.
//!
//! A write does not recompile everything: `patch` copies the maps (pointers only) and
//! recompiles what the write touched plus the consumers that depend on it, so an admin write
//! costs the same at 100,000 consumers as at 10.

use crate::config::UpstreamDefaults;
use crate::entities::consumer::{ConsumerType, FailMode, RoutingMode, ToolkitEntry};
use crate::entities::registry::Provider;
use crate::entities::routing::{Algorithm, Fallback, LbConfig, Routing};
use crate::entities::Kind;
use crate::entities::{AuthSpec, ConsumerSpec, GatewaySpec, Record, RegistrySpec};
use crate::hash::HashMap;
use crate::policy::CompiledPolicy;
use crate::store::Model;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default, Clone)]
pub struct Snapshot {
    /// Consumers by slug.
    pub consumers: Consumers,
    /// Registries by id.
    pub registries: HashMap<String, Arc<CompiledRegistry>>,
    /// Roles by id: (name, routing).
    roles: HashMap<String, (String, Arc<CompiledRouting>)>,
    /// Policies by id.
    policies: HashMap<String, Arc<CompiledPolicy>>,
    /// jwt and oauth2 auths by id.
    token_auths: HashMap<String, Arc<TokenAuth>>,
}

/// Shards of the consumer map: a write copies the list of shards and the shards it changes,
/// never the whole map (at 100,000 consumers a full copy costs milliseconds of cache misses).
const SHARDS: usize = 256;

type Shard = HashMap<Arc<str>, Arc<CompiledConsumer>>;

/// Consumers by slug, sharded so that a snapshot's copy is cheap.
#[derive(Clone)]
pub struct Consumers {
    shards: Vec<Arc<Shard>>,
    len: usize,
}

impl Default for Consumers {
    fn default() -> Self {
        Consumers {
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
            len: 0,
        }
    }
}

impl Consumers {
    fn shard_of(slug: &str) -> usize {
        // FNV-1a: cheap, and slugs are not attacker-chosen keys of a shared map.
        let h = slug.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (h as usize) % SHARDS
    }

    pub fn get(&self, slug: &str) -> Option<&Arc<CompiledConsumer>> {
        self.shards[Self::shard_of(slug)].get(slug)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<CompiledConsumer>> {
        self.shards.iter().flat_map(|s| s.values())
    }

    fn insert(&mut self, c: Arc<CompiledConsumer>) {
        let shard = Arc::make_mut(&mut self.shards[Self::shard_of(&c.slug)]);
        if shard.insert(c.slug.clone(), c).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, slug: &str) {
        let shard = &mut self.shards[Self::shard_of(slug)];
        if shard.contains_key(slug) {
            Arc::make_mut(shard).remove(slug);
            self.len -= 1;
        }
    }
}

/// What one write changed: the entities it put or deleted, and the slugs its consumers had
/// before it.
#[derive(Debug, Default)]
pub struct Touched {
    pub entities: Vec<(Kind, String)>,
    pub old_slugs: Vec<String>,
}

/// Where a registry is: its base URL split for the connector.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The base URL's path, without a trailing `/` (may be empty).
    pub prefix: String,
    /// The `Host` header value, built once.
    authority: String,
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
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let authority = match (tls, port) {
            (true, 443) | (false, 80) => bracketed,
            _ => format!("{bracketed}:{port}"),
        };
        Some(Endpoint {
            tls,
            host,
            port,
            prefix,
            authority,
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> &str {
        &self.authority
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
    /// The connector's peer, built on first use.
    pub peer: crate::upstream::PeerCache,
    /// The credential as placed on requests, built on first use.
    pub credential: crate::providers::CredentialCache,
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
        (None, Some(o)) => TokenKind::OAuth2((**o).clone()),
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
    /// Shared with the compile's map of every key (see `CompiledAuths`).
    pub auth_id: Arc<str>,
    pub hash: [u8; 32],
    /// Unix seconds; `i64::MAX` when the key does not expire (no `Option`: 64 bytes, not 72,
    /// which the 100,000 keys of the scale bench hold twice while the snapshot compiles).
    pub expires_at: i64,
    pub active: bool,
}

/// One consumer, compiled. The snapshot holds one per consumer (100,000 in the scale bench),
/// so it is kept small: ids and names are shared or boxed, the lists are boxed slices, and
/// what few consumers have sits behind one pointer (`Extras`).
#[derive(Debug)]
pub struct CompiledConsumer {
    pub id: Arc<str>,
    pub name: Box<str>,
    pub slug: Arc<str>,
    /// Shared by the gateway's consumers. An `Arc<String>`, not `Arc<str>`: a thin pointer
    /// keeps the consumer in jemalloc's 128-byte class (not 160).
    pub gateway_name: Arc<String>,
    pub routing: Arc<CompiledRouting>,
    pub keys: Box<[CompiledKey]>,
    /// Attached policies, compiled (shared with every consumer that has them).
    pub policies: Box<[Arc<CompiledPolicy>]>,
    extras: Option<Box<Extras>>,
    pub active: bool,
    pub gateway_active: bool,
    pub kind: ConsumerType,
    pub routing_mode: RoutingMode,
    pub fail_mode: FailMode,
}

/// The parts of a consumer most consumers leave empty.
#[derive(Debug, Default)]
struct Extras {
    roles: Box<[(String, Arc<CompiledRouting>)]>,
    token_auths: Box<[Arc<TokenAuth>]>,
    headers: Box<[(http::HeaderName, http::HeaderValue)]>,
    toolkit: Box<[ToolkitEntry]>,
}

impl Extras {
    /// `None` when every part is empty.
    fn boxed(self) -> Option<Box<Extras>> {
        let empty = self.roles.is_empty()
            && self.token_auths.is_empty()
            && self.headers.is_empty()
            && self.toolkit.is_empty();
        (!empty).then(|| Box::new(self))
    }
}

impl CompiledConsumer {
    /// (role name, routing) in the consumer's `role_ids` order.
    pub fn roles(&self) -> &[(String, Arc<CompiledRouting>)] {
        self.extras.as_ref().map_or(&[], |e| &e.roles)
    }

    /// jwt and oauth2 auths attached, compiled.
    pub fn token_auths(&self) -> &[Arc<TokenAuth>] {
        self.extras.as_ref().map_or(&[], |e| &e.token_auths)
    }

    /// Headers added to each upstream request.
    pub fn headers(&self) -> &[(http::HeaderName, http::HeaderValue)] {
        self.extras.as_ref().map_or(&[], |e| &e.headers)
    }

    pub fn toolkit(&self) -> &[ToolkitEntry] {
        self.extras.as_ref().map_or(&[], |e| &e.toolkit)
    }
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
        peer: Default::default(),
        credential: Default::default(),
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
    let lb: Option<&LbConfig> = routing.lb_config.as_deref().filter(|l| l.enabled);
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
    let fallback = routing.fallback.as_deref().filter(|f| f.enabled).cloned();
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

/// From how many consumers a patch recompiles them in one ordered pass over sled rather than
/// one read each.
#[cfg(not(test))]
const SCAN_FROM: usize = 1000;
/// Tests: small stores take both paths.
#[cfg(test)]
const SCAN_FROM: usize = 3;

/// Every auth compiled, for a whole-snapshot compile: jwt and oauth2 auths by id, and API
/// keys by auth id, to be copied into the consumers they are attached to.
#[derive(Default)]
pub struct CompiledAuths {
    keys: Vec<CompiledKey>,
    tokens: HashMap<String, Arc<TokenAuth>>,
}

impl CompiledAuths {
    /// Every auth of the model, read from sled in one ordered pass.
    pub fn of(model: &Model) -> CompiledAuths {
        let mut auths = CompiledAuths::default();
        for a in model.auths.iter() {
            auths.add(&a, model.shared_id(Kind::Auth, &a.meta, &a.spec.name));
        }
        auths
    }

    /// `id` is the auth's id, shared with the model (see `Model::shared_id`).
    pub fn add(&mut self, a: &Record<AuthSpec>, id: Arc<str>) {
        if a.spec.key_hash.is_none() {
            if let Some(t) = compile_token_auth(a) {
                self.tokens.insert(a.meta.id.clone(), Arc::new(t));
            }
        } else if let Some(k) = compile_key(a, id) {
            self.keys.push(k);
        }
    }
}

/// API keys by auth id: sorted once every auth is added, then only looked up. A sorted
/// list, not a map: the id is in the key, and a list holds no spare room (a map of the
/// 100,000 keys of the scale bench held ~2 MiB more, while every consumer compiles).
struct KeysById(Vec<CompiledKey>);

impl KeysById {
    fn new(mut keys: Vec<CompiledKey>) -> KeysById {
        keys.sort_unstable_by(|a, b| a.auth_id.cmp(&b.auth_id));
        keys.shrink_to_fit();
        KeysById(keys)
    }

    fn get(&self, auth_id: &str) -> Option<CompiledKey> {
        let i = self
            .0
            .binary_search_by(|k| (*k.auth_id).cmp(auth_id))
            .ok()?;
        Some(self.0[i].clone())
    }
}

/// An API-key auth's key, as its consumers check it; `None` for other auths.
fn compile_key(a: &Record<AuthSpec>, id: Arc<str>) -> Option<CompiledKey> {
    Some(CompiledKey {
        auth_id: id,
        hash: parse_hash(a.spec.key_hash.as_deref()?)?,
        active: a.spec.active,
        expires_at: a.spec.expires_at_unix().unwrap_or(i64::MAX),
    })
}

fn parse_hash(hex_hash: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_hash).ok()?;
    bytes.try_into().ok()
}

/// Builds a whole snapshot: everything but the consumers from the model, then the consumers
/// one by one, as they are read (the model does not keep them, see `store::records`).
pub struct Compiler {
    snap: Snapshot,
    keys: KeysById,
    gateways: BTreeMap<String, Record<GatewaySpec>>,
    shared: Shared,
}

impl Compiler {
    /// `model` must hold every entity but the consumers; `auths` are all of them, compiled.
    pub fn new(model: &Model, defaults: &UpstreamDefaults, auths: CompiledAuths) -> Compiler {
        let CompiledAuths { keys, tokens } = auths;
        let keys = KeysById::new(keys);
        let mut snap = Snapshot {
            registries: model
                .registries
                .values()
                .map(|r| (r.meta.id.clone(), Arc::new(compile_registry(r, defaults))))
                .collect(),
            policies: model
                .policies
                .values()
                .filter_map(|p| Some((p.meta.id.clone(), Arc::new(CompiledPolicy::compile(p)?))))
                .collect(),
            token_auths: tokens,
            ..Snapshot::default()
        };
        snap.roles = model
            .roles
            .values()
            .map(|r| {
                let routing = Arc::new(compile_routing(&r.spec.routing, &snap.registries));
                (r.meta.id.clone(), (r.spec.name.clone(), routing))
            })
            .collect();
        Compiler {
            snap,
            keys,
            gateways: model.gateways.clone(),
            shared: Shared::default(),
        }
    }

    /// `id` is the consumer's id, shared with the model (see `Model::shared_id`).
    pub fn consumer(&mut self, c: &Record<ConsumerSpec>, id: Arc<str>) {
        let keys = &self.keys;
        let key = |id: &str| keys.get(id);
        self.snap
            .recompile(&self.gateways, c, id, &key, &mut self.shared);
    }

    pub fn finish(self) -> Snapshot {
        self.snap
    }
}

impl Snapshot {
    /// The snapshot of a whole model.
    pub fn compile(model: &Model, defaults: &UpstreamDefaults) -> Snapshot {
        let mut compiler = Compiler::new(model, defaults, CompiledAuths::of(model));
        for c in model.consumers.iter() {
            compiler.consumer(&c, model.shared_id(Kind::Consumer, &c.meta, &c.spec.name));
        }
        compiler.finish()
    }

    /// This snapshot with a write applied: `model` is the model after the write.
    pub fn patch(&self, model: &Model, touched: &Touched, defaults: &UpstreamDefaults) -> Snapshot {
        let mut snap = self.clone();
        let ids = |kind: Kind| -> HashSet<&str> {
            touched
                .entities
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, id)| id.as_str())
                .collect()
        };
        let registries = ids(Kind::Registry);
        for id in &registries {
            let compiled = model
                .registries
                .get(*id)
                .map(|r| Arc::new(compile_registry(r, defaults)));
            upsert(&mut snap.registries, id, compiled);
        }
        let mut roles = ids(Kind::Role);
        for r in model.roles.values() {
            if registries.iter().any(|id| r.spec.routing.references(id)) {
                roles.insert(r.meta.id.as_str());
            }
        }
        for id in &roles {
            let compiled = model.roles.get(*id).map(|r| {
                let routing = Arc::new(compile_routing(&r.spec.routing, &snap.registries));
                (r.spec.name.clone(), routing)
            });
            upsert(&mut snap.roles, id, compiled);
        }
        let policies = ids(Kind::Policy);
        for id in &policies {
            let compiled = model.policies.get(*id).and_then(CompiledPolicy::compile);
            upsert(&mut snap.policies, id, compiled.map(Arc::new));
        }
        let auths = ids(Kind::Auth);
        for id in &auths {
            let compiled = model
                .auths
                .get(id)
                .filter(|a| a.spec.key_hash.is_none())
                .and_then(|a| compile_token_auth(&a));
            upsert(&mut snap.token_auths, id, compiled.map(Arc::new));
        }
        let gateways = ids(Kind::Gateway);
        // The consumers to recompile: those written, and those using what was written.
        let mut consumers: HashSet<Arc<str>> =
            ids(Kind::Consumer).into_iter().map(Arc::from).collect();
        let used = [
            (Kind::Registry, &registries),
            (Kind::Role, &roles),
            (Kind::Policy, &policies),
            (Kind::Auth, &auths),
        ];
        for (kind, written) in used {
            for id in written.iter() {
                consumers.extend(model.consumers_using(kind, id));
            }
        }
        for slug in &touched.old_slugs {
            snap.consumers.remove(slug.as_str());
        }
        let mut shared = Shared::default();
        if gateways.is_empty() && consumers.len() < SCAN_FROM {
            let key = |id: &str| {
                let a = model.auths.get(id)?;
                compile_key(&a, model.shared_id(Kind::Auth, &a.meta, &a.spec.name))
            };
            for id in consumers {
                let Some(c) = model.consumers.get(&id) else {
                    continue;
                };
                let id = model.shared_id(Kind::Consumer, &c.meta, &c.spec.name);
                snap.recompile(&model.gateways, &c, id, &key, &mut shared);
            }
        } else {
            // Many consumers (a registry most of them use), or a gateway's (renamed or
            // switched off): one pass over the auths and one over the consumers read sled in
            // order, where a get per record would read a node apiece (seconds at 100,000
            // consumers).
            let keys = KeysById::new(CompiledAuths::of(model).keys);
            let key = |id: &str| keys.get(id);
            for c in model.consumers.iter() {
                if consumers.contains(c.meta.id.as_str()) || gateways.contains(c.meta.gateway_id())
                {
                    let id = model.shared_id(Kind::Consumer, &c.meta, &c.spec.name);
                    snap.recompile(&model.gateways, &c, id, &key, &mut shared);
                }
            }
        }
        snap
    }

    fn recompile(
        &mut self,
        gateways: &BTreeMap<String, Record<GatewaySpec>>,
        c: &Record<ConsumerSpec>,
        id: Arc<str>,
        key: &dyn Fn(&str) -> Option<CompiledKey>,
        shared: &mut Shared,
    ) {
        if let Some(compiled) = self.compile_consumer(gateways, c, id, key, shared) {
            self.consumers.insert(Arc::new(compiled));
        }
    }

    fn compile_consumer(
        &self,
        gateways: &BTreeMap<String, Record<GatewaySpec>>,
        c: &Record<ConsumerSpec>,
        id: Arc<str>,
        key: &dyn Fn(&str) -> Option<CompiledKey>,
        shared: &mut Shared,
    ) -> Option<CompiledConsumer> {
        let slug: Arc<str> = Arc::from(c.meta.slug.as_deref()?);
        let gateway = gateways.get(c.meta.gateway_id());
        let gateway_name = shared.gateway_name(gateway);
        let extras = Extras {
            roles: c
                .spec
                .role_ids
                .iter()
                .filter_map(|id| self.roles.get(id.as_str()).cloned())
                .collect(),
            token_auths: c
                .spec
                .auth_ids
                .iter()
                .filter_map(|id| self.token_auths.get(id.as_str()).cloned())
                .collect(),
            headers: c
                .spec
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                        http::HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            toolkit: c.spec.toolkit.iter().cloned().collect(),
        };
        Some(CompiledConsumer {
            id,
            name: c.spec.name.as_str().into(),
            slug,
            gateway_name,
            routing: shared.routing(&c.spec.routing, &self.registries),
            keys: c.spec.auth_ids.iter().filter_map(|id| key(id)).collect(),
            policies: c
                .spec
                .policy_ids
                .iter()
                .filter_map(|id| self.policies.get(id.as_str()).cloned())
                .collect(),
            extras: extras.boxed(),
            active: c.spec.active,
            gateway_active: gateway.is_some_and(|g| g.spec.active),
            kind: c.spec.kind,
            routing_mode: c.spec.routing_mode,
            fail_mode: c.spec.fail_mode,
        })
    }
}

/// What the consumers of one compile (or patch) have in common, compiled once and shared.
#[derive(Default)]
struct Shared {
    /// Compiled routings by a hash of the config's registries and model policies (its fields
    /// that can be hashed); equal configs are confirmed with `==`. Consumers whose routing
    /// config is the same resolve against the same registries, so they compile alike; a
    /// `CompiledRouting` with its model rules is ~1 KiB, most of a compiled consumer, and many
    /// consumers share a tier's config.
    routings: HashMap<u64, Vec<(Routing, Arc<CompiledRouting>)>>,
    /// Gateway names by gateway id (one copy, not one per consumer: ~60 bytes apiece).
    gateway_names: HashMap<String, Arc<String>>,
}

impl Shared {
    fn routing(
        &mut self,
        routing: &Routing,
        registries: &HashMap<String, Arc<CompiledRegistry>>,
    ) -> Arc<CompiledRouting> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        routing.registries.hash(&mut h);
        routing.model_policies.hash(&mut h);
        let bucket = self.routings.entry(h.finish()).or_default();
        if let Some((_, compiled)) = bucket.iter().find(|(r, _)| r == routing) {
            return compiled.clone();
        }
        let compiled = Arc::new(compile_routing(routing, registries));
        bucket.push((routing.clone(), compiled.clone()));
        compiled
    }

    /// The gateway's name ("" for a consumer whose gateway is gone).
    fn gateway_name(&mut self, gateway: Option<&Record<GatewaySpec>>) -> Arc<String> {
        let Some(g) = gateway else {
            return Arc::default();
        };
        if let Some(name) = self.gateway_names.get(&g.meta.id) {
            return name.clone();
        }
        let name = Arc::new(g.spec.name.clone());
        self.gateway_names.insert(g.meta.id.clone(), name.clone());
        name
    }
}

/// Puts the recompiled `id`, or removes it when it is gone (or compiles to nothing).
fn upsert<V>(map: &mut HashMap<String, V>, id: &str, compiled: Option<V>) {
    match compiled {
        Some(v) => drop(map.insert(id.to_string(), v)),
        None => drop(map.remove(id)),
    }
}

/// Everything the proxy reads of a snapshot, as sorted text (tests compare a patched snapshot
/// with a full compile).
#[cfg(test)]
pub(crate) fn fingerprint(s: &Snapshot) -> Vec<String> {
    fn routing(r: &CompiledRouting) -> String {
        let mut rules: Vec<String> = r.rules.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        rules.sort();
        let targets: Vec<String> = r
            .targets
            .iter()
            .map(|t| format!("{}:{}:{:?}", t.registry.id, t.weight, t.registry.endpoint))
            .collect();
        let chain: Vec<&str> = r.chain.iter().map(|c| c.id.as_str()).collect();
        format!("{targets:?} {rules:?} {:?} {chain:?}", r.algorithm)
    }
    let mut out: Vec<String> = s
        .consumers
        .values()
        .map(|c| {
            let slug = &c.slug;
            let roles: Vec<String> = c
                .roles()
                .iter()
                .map(|(n, r)| format!("{n}:{}", routing(r)))
                .collect();
            let tokens: Vec<&str> = c.token_auths().iter().map(|t| t.id.as_str()).collect();
            format!(
                "{slug} {} {} {} {} {} {} roles={roles:?} keys={:?} tokens={tokens:?} policies={:?} headers={:?} toolkit={:?}",
                c.id, c.name, c.gateway_name, c.active, c.gateway_active, routing(&c.routing),
                c.keys, c.policies, c.headers(), c.toolkit()
            )
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The snapshot holds one compiled consumer (in an `Arc`, two counts ahead of it) and
    /// one key apiece per consumer: at 100,000 consumers each 8 bytes more than a jemalloc
    /// size class is up to 3 MiB more (see `CompiledConsumer`).
    #[test]
    fn a_compiled_consumer_and_key_fit_their_size_classes() {
        assert!(std::mem::size_of::<CompiledConsumer>() + 16 <= 128);
        assert!(std::mem::size_of::<CompiledKey>() <= 64);
    }

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
