//! The entities of SPEC §2 and their validation, shared by the store, the admin API and import.
//!
//! Each entity is a `Record<Spec>`: server-owned metadata (`Meta`) plus the operator's `Spec`.
//! An operator's JSON becomes a `Spec` through one path only, `FromInput::from_input`, which
//! checks fields (with their paths) and references (against the current `Model`, within one
//! gateway). Create, replace, patch and import all go through it.

pub mod auth;
pub mod consumer;
pub mod gateway;
pub mod policy;
pub mod registry;
pub mod role;
pub mod routing;

pub use auth::AuthSpec;
pub use consumer::ConsumerSpec;
pub use gateway::GatewaySpec;
pub use policy::PolicySpec;
pub use registry::RegistrySpec;
pub use role::RoleSpec;

/// Calls a generic function with the spec type of a runtime `Kind`:
/// `by_kind!(kind, f(args))` is `f::<GatewaySpec>(args)` for gateways, and so on.
macro_rules! by_kind {
    ($kind:expr, $f:ident ( $($arg:expr),* )) => {
        match $kind {
            $crate::entities::Kind::Gateway => $f::<$crate::entities::GatewaySpec>($($arg),*),
            $crate::entities::Kind::Registry => $f::<$crate::entities::RegistrySpec>($($arg),*),
            $crate::entities::Kind::Auth => $f::<$crate::entities::AuthSpec>($($arg),*),
            $crate::entities::Kind::Role => $f::<$crate::entities::RoleSpec>($($arg),*),
            $crate::entities::Kind::Policy => $f::<$crate::entities::PolicySpec>($($arg),*),
            $crate::entities::Kind::Consumer => $f::<$crate::entities::ConsumerSpec>($($arg),*),
        }
    };
}
pub(crate) use by_kind;

use crate::error::ApiError;
use crate::store::{Model, Stored};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Gateway,
    Registry,
    Auth,
    Role,
    Policy,
    Consumer,
}

impl Kind {
    /// All kinds, in dependency order (a kind only refers to kinds before it).
    pub const ALL: [Kind; 6] = [
        Kind::Gateway,
        Kind::Registry,
        Kind::Auth,
        Kind::Policy,
        Kind::Role,
        Kind::Consumer,
    ];

    /// The collection name used in URLs and export documents.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Gateway => "gateways",
            Kind::Registry => "registries",
            Kind::Auth => "auths",
            Kind::Role => "roles",
            Kind::Policy => "policies",
            Kind::Consumer => "consumers",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Registry => "registry",
            Kind::Auth => "auth",
            Kind::Role => "role",
            Kind::Policy => "policy",
            Kind::Consumer => "consumer",
        }
    }

    pub fn from_collection(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.collection() == s)
    }
}

/// Server-owned fields of every entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    /// `None` for gateways themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_id: Option<String>,
    /// Consumers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl Meta {
    pub fn gateway_id(&self) -> &str {
        self.gateway_id.as_deref().unwrap_or(&self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<S> {
    pub meta: Meta,
    pub spec: S,
}

/// What the store and the admin API need of every entity spec.
pub trait EntitySpec: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    const KIND: Kind;
    fn name(&self) -> &str;
    /// The public JSON of the spec's own fields; secrets redacted when `redact`.
    fn public_fields(&self, redact: bool) -> Map<String, Value>;
    /// Where the model keeps this kind.
    fn stored(model: &Model) -> Stored<'_, Self>;
    fn wrap(record: Record<Self>) -> Entity;
}

/// Builds a spec from the operator's JSON (create, replace, patch, import).
pub trait FromInput: EntitySpec {
    /// `previous` is the entity being replaced, if any (to keep secrets sent back redacted,
    /// API key hashes, attachments not restated).
    fn from_input(input: Value, ctx: &Ctx, previous: Option<&Self>) -> Result<Self, ApiError>;

    /// The JSON a PATCH merges into: the entity's input form, secrets unredacted.
    fn patch_base(&self, _patch: &Value) -> Map<String, Value> {
        self.public_fields(false)
    }
}

impl<S: EntitySpec> Record<S> {
    /// The JSON the admin API returns (and, unredacted, what export writes).
    pub fn to_json(&self, redact: bool) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), Value::String(self.meta.id.clone()));
        if let Some(g) = &self.meta.gateway_id {
            out.insert("gateway_id".into(), Value::String(g.clone()));
        }
        if let Some(s) = &self.meta.slug {
            out.insert("slug".into(), Value::String(s.clone()));
        }
        out.extend(self.spec.public_fields(redact));
        out.insert(
            "created_at".into(),
            Value::String(self.meta.created_at.clone()),
        );
        out.insert(
            "updated_at".into(),
            Value::String(self.meta.updated_at.clone()),
        );
        Value::Object(out)
    }
}

/// Any entity record, for store changes and export.
#[derive(Debug, Clone, PartialEq)]
pub enum Entity {
    Gateway(Record<GatewaySpec>),
    Registry(Record<RegistrySpec>),
    Auth(Record<AuthSpec>),
    Role(Record<RoleSpec>),
    Policy(Record<PolicySpec>),
    Consumer(Record<ConsumerSpec>),
}

impl Entity {
    pub fn kind(&self) -> Kind {
        match self {
            Entity::Gateway(_) => Kind::Gateway,
            Entity::Registry(_) => Kind::Registry,
            Entity::Auth(_) => Kind::Auth,
            Entity::Role(_) => Kind::Role,
            Entity::Policy(_) => Kind::Policy,
            Entity::Consumer(_) => Kind::Consumer,
        }
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Entity::Gateway(r) => &r.meta,
            Entity::Registry(r) => &r.meta,
            Entity::Auth(r) => &r.meta,
            Entity::Role(r) => &r.meta,
            Entity::Policy(r) => &r.meta,
            Entity::Consumer(r) => &r.meta,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Entity::Gateway(r) => r.spec.name(),
            Entity::Registry(r) => r.spec.name(),
            Entity::Auth(r) => r.spec.name(),
            Entity::Role(r) => r.spec.name(),
            Entity::Policy(r) => r.spec.name(),
            Entity::Consumer(r) => r.spec.name(),
        }
    }

    /// The stored bytes (the internal record form, secrets included).
    pub fn to_bytes(&self) -> Vec<u8> {
        let v = match self {
            Entity::Gateway(r) => serde_json::to_vec(r),
            Entity::Registry(r) => serde_json::to_vec(r),
            Entity::Auth(r) => serde_json::to_vec(r),
            Entity::Role(r) => serde_json::to_vec(r),
            Entity::Policy(r) => serde_json::to_vec(r),
            Entity::Consumer(r) => serde_json::to_vec(r),
        };
        // Serialising our own plain data types to JSON cannot fail.
        v.unwrap_or_default()
    }

    pub fn from_bytes(kind: Kind, bytes: &[u8]) -> serde_json::Result<Entity> {
        Ok(match kind {
            Kind::Gateway => Entity::Gateway(serde_json::from_slice(bytes)?),
            Kind::Registry => Entity::Registry(serde_json::from_slice(bytes)?),
            Kind::Auth => Entity::Auth(serde_json::from_slice(bytes)?),
            Kind::Role => Entity::Role(serde_json::from_slice(bytes)?),
            Kind::Policy => Entity::Policy(serde_json::from_slice(bytes)?),
            Kind::Consumer => Entity::Consumer(serde_json::from_slice(bytes)?),
        })
    }

    pub fn to_json(&self, redact: bool) -> Value {
        match self {
            Entity::Gateway(r) => r.to_json(redact),
            Entity::Registry(r) => r.to_json(redact),
            Entity::Auth(r) => r.to_json(redact),
            Entity::Role(r) => r.to_json(redact),
            Entity::Policy(r) => r.to_json(redact),
            Entity::Consumer(r) => r.to_json(redact),
        }
    }
}

/// What validation may look at: the current model and the gateway being written to.
pub struct Ctx<'a> {
    pub model: &'a Model,
    pub gateway_id: &'a str,
}

impl<'a> Ctx<'a> {
    /// Resolves a reference to an entity of this gateway; anything else is a validation error
    /// on `field` (nothing crosses gateways).
    pub fn lookup<S: EntitySpec>(
        &self,
        id: &str,
        field: &str,
    ) -> Result<Cow<'a, Record<S>>, ApiError> {
        match S::stored(self.model).get(id) {
            Some(r) if r.meta.gateway_id() == self.gateway_id => Ok(r),
            Some(_) => Err(ApiError::validation(
                field,
                format!("{} `{id}` belongs to another gateway", S::KIND.singular()),
            )),
            None => Err(ApiError::validation(
                field,
                format!("{} `{id}` does not exist", S::KIND.singular()),
            )),
        }
    }
}

/// Deserialises operator JSON into an input struct; type errors and unknown fields become
/// validation errors naming the field path.
pub fn parse_input<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ApiError::validation(path, e.into_inner().to_string())
    })
}

/// Keys the server owns; accepted in bodies (so a GET result can be PUT back) and ignored.
pub const READ_ONLY_KEYS: [&str; 5] = ["id", "gateway_id", "slug", "created_at", "updated_at"];

pub fn strip_read_only(value: &mut Value) {
    if let Value::Object(map) = value {
        for k in READ_ONLY_KEYS {
            map.remove(k);
        }
    }
}

/// JSON merge patch (RFC 7396): objects merge recursively, `null` removes, anything else
/// replaces.
pub fn merge_patch(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge_patch(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Shown instead of a secret: `****` plus its last 4 characters, or only `****` for a secret
/// too short to show any of it. `env:NAME` references are not secrets and show as they are.
pub fn redact_secret(secret: &str) -> String {
    if secret.starts_with("env:") {
        return secret.to_string();
    }
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        "****".to_string()
    } else {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("****{tail}")
    }
}

/// A secret sent back as it was shown (redacted) keeps its stored value.
pub fn keep_secret(new: String, previous: Option<&str>) -> String {
    match previous {
        Some(prev) if redact_secret(prev) == new => prev.to_string(),
        _ => new,
    }
}

pub fn validate_name(name: &str, field: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if name.len() > 128 {
        return Err(ApiError::validation(field, "must be at most 128 bytes"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(ApiError::validation(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks a static header map: valid names and values, and none of the framing or
/// hop-by-hop headers the gateway owns.
pub fn validate_headers(headers: &BTreeMap<String, String>, field: &str) -> Result<(), ApiError> {
    const OWNED: [&str; 7] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "keep-alive",
    ];
    for (k, v) in headers {
        let path = format!("{field}.{k}");
        let name = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ApiError::validation(&path, "is not a valid header name"))?;
        if OWNED.contains(&name.as_str()) {
            return Err(ApiError::validation(
                &path,
                "is set by the gateway and cannot be configured",
            ));
        }
        http::HeaderValue::from_str(v)
            .map_err(|_| ApiError::validation(&path, "is not a valid header value"))?;
    }
    Ok(())
}

pub fn validate_url(url: &str, field: &str) -> Result<(), ApiError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| ApiError::validation(field, "is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(ApiError::validation(
                field,
                "must be an http:// or https:// URL",
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ApiError::validation(field, "must name a host"));
    }
    if uri.query().is_some() {
        return Err(ApiError::validation(field, "must not carry a query string"));
    }
    Ok(())
}

/// Now, as the RFC 3339 UTC timestamp every entity carries.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redaction_shows_last_four_only_for_long_secrets() {
        assert_eq!(redact_secret("sk-abcdefghijklmnop"), "****mnop");
        assert_eq!(redact_secret("short"), "****");
        assert_eq!(redact_secret("env:OPENAI_KEY"), "env:OPENAI_KEY");
    }

    #[test]
    fn redacted_secret_sent_back_keeps_the_stored_one() {
        let stored = "sk-abcdefghijklmnop";
        assert_eq!(keep_secret("****mnop".into(), Some(stored)), stored);
        assert_eq!(
            keep_secret("sk-new-secret-value".into(), Some(stored)),
            "sk-new-secret-value"
        );
    }

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut base = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut base, &json!({"a": null, "b": {"c": 9}, "e": [1]}));
        assert_eq!(base, json!({"b": {"c": 9, "d": 3}, "e": [1]}));
    }

    #[test]
    fn field_paths_nest() {
        let e = ApiError::validation("weight", "bad").within("registries[0]");
        assert_eq!(e.field.as_deref(), Some("registries[0].weight"));
        let e = ApiError::validation("[2]", "bad").within("chain");
        assert_eq!(e.field.as_deref(), Some("chain[2]"));
    }
}
