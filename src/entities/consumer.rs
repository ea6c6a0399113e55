//! consumer — the runtime identity of a calling application (seed 001's schema exactly, plus
//! `policy_ids`). Its `slug` lives in `Meta`; everything operator-set lives here.

use super::routing::{prepare_patch_base, split_routing, Routing};
use super::{
    default_true, parse_input, validate_headers, validate_name, AuthSpec, Ctx, Entity, EntitySpec,
    FromInput, Kind, PolicySpec, Record, RegistrySpec, RoleSpec,
};
use crate::entities::registry::Provider;
use crate::error::ApiError;
use crate::store::{Model, Stored};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerType {
    #[default]
    Llm,
    Mcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoutingMode {
    #[default]
    Inline,
    RoleBased,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    Open,
    #[default]
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolkitEntry {
    pub registry_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_as: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

impl ToolkitEntry {
    /// (category, upstream name, name shown to the caller).
    pub fn exposed(&self) -> Option<(&'static str, &str, &str)> {
        let (cat, name) = match (&self.tool, &self.prompt, &self.resource) {
            (Some(t), None, None) => ("tool", t),
            (None, Some(p), None) => ("prompt", p),
            (None, None, Some(r)) => ("resource", r),
            _ => return None,
        };
        Some((cat, name, self.expose_as.as_deref().unwrap_or(name)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ConsumerType,
    pub active: bool,
    pub routing_mode: RoutingMode,
    pub routing: Routing,
    pub headers: BTreeMap<String, String>,
    pub role_ids: Vec<String>,
    pub auth_ids: Vec<String>,
    pub policy_ids: Vec<String>,
    pub toolkit: Vec<ToolkitEntry>,
    pub fail_mode: FailMode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerInput {
    name: String,
    #[serde(default, rename = "type")]
    kind: ConsumerType,
    #[serde(default = "default_true")]
    active: bool,
    #[serde(default)]
    routing_mode: RoutingMode,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    role_ids: Option<Vec<String>>,
    #[serde(default)]
    auth_ids: Option<Vec<String>>,
    #[serde(default)]
    policy_ids: Option<Vec<String>>,
    #[serde(default)]
    toolkit: Vec<ToolkitEntry>,
    #[serde(default)]
    fail_mode: Option<FailMode>,
}

/// A fresh consumer slug: 12 lowercase letters and digits.
pub fn generate_slug() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..12)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn unique_ids(ids: &[String], field: &str) -> Result<(), ApiError> {
    let mut seen = HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        if !seen.insert(id) {
            return Err(ApiError::validation(
                format!("{field}[{i}]"),
                format!("`{id}` is listed twice"),
            ));
        }
    }
    Ok(())
}

impl ConsumerSpec {
    /// Drops the spare capacity of its lists. Deserialising grows a list to four places for a
    /// first element, and the model keeps every consumer: at 100,000 consumers the spare room
    /// was ~35 MiB.
    pub fn shrink_to_fit(&mut self) {
        self.routing.shrink_to_fit();
        self.role_ids.shrink_to_fit();
        self.auth_ids.shrink_to_fit();
        self.policy_ids.shrink_to_fit();
        self.toolkit.shrink_to_fit();
    }

    /// Everything this consumer refers to, once each: the entities for which `references`
    /// holds.
    pub fn referenced(&self) -> Vec<(Kind, &str)> {
        let mut out: Vec<(Kind, &str)> = self
            .routing
            .registry_ids()
            .into_iter()
            .chain(self.toolkit.iter().map(|t| t.registry_id.as_str()))
            .map(|id| (Kind::Registry, id))
            .collect();
        out.extend(self.role_ids.iter().map(|id| (Kind::Role, id.as_str())));
        out.extend(self.auth_ids.iter().map(|id| (Kind::Auth, id.as_str())));
        out.extend(self.policy_ids.iter().map(|id| (Kind::Policy, id.as_str())));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether this consumer refers to the entity `id` of `kind`.
    pub fn references(&self, kind: Kind, id: &str) -> bool {
        match kind {
            Kind::Registry => {
                self.routing.references(id) || self.toolkit.iter().any(|t| t.registry_id == id)
            }
            Kind::Auth => self.auth_ids.iter().any(|a| a == id),
            Kind::Role => self.role_ids.iter().any(|a| a == id),
            Kind::Policy => self.policy_ids.iter().any(|a| a == id),
            Kind::Gateway | Kind::Consumer => false,
        }
    }

    fn validate_toolkit(&self, ctx: &Ctx) -> Result<(), ApiError> {
        let mut exposed = HashSet::new();
        for (i, t) in self.toolkit.iter().enumerate() {
            let field = format!("toolkit[{i}]");
            let r = ctx.lookup::<RegistrySpec>(&t.registry_id, &format!("{field}.registry_id"))?;
            if r.spec.provider != Provider::Mcp {
                return Err(ApiError::validation(
                    format!("{field}.registry_id"),
                    "a toolkit entry must name an mcp registry",
                ));
            }
            let Some((cat, _, shown)) = t.exposed() else {
                return Err(ApiError::validation(
                    field,
                    "give exactly one of tool, prompt or resource",
                ));
            };
            if shown.is_empty() {
                return Err(ApiError::validation(field, "names must not be empty"));
            }
            if !exposed.insert((cat, shown.to_string())) {
                return Err(ApiError::validation(
                    format!("{field}.expose_as"),
                    format!("{cat} name `{shown}` is exposed twice"),
                ));
            }
        }
        Ok(())
    }
}

impl EntitySpec for ConsumerSpec {
    const KIND: Kind = Kind::Consumer;
    fn name(&self) -> &str {
        &self.name
    }
    fn public_fields(&self, redact: bool) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("name".into(), json!(self.name));
        out.insert("type".into(), json!(self.kind));
        out.insert("active".into(), json!(self.active));
        out.insert("routing_mode".into(), json!(self.routing_mode));
        self.routing.public_fields(redact, &mut out);
        out.insert("headers".into(), json!(self.headers));
        out.insert("role_ids".into(), json!(self.role_ids));
        out.insert("auth_ids".into(), json!(self.auth_ids));
        out.insert("policy_ids".into(), json!(self.policy_ids));
        out.insert("toolkit".into(), json!(self.toolkit));
        out.insert("fail_mode".into(), json!(self.fail_mode));
        out
    }
    fn stored(model: &Model) -> Stored<'_, Self> {
        Stored::Disk(&model.consumers)
    }
    fn wrap(record: Record<Self>) -> Entity {
        Entity::Consumer(record)
    }
}

impl FromInput for ConsumerSpec {
    fn from_input(input: Value, ctx: &Ctx, previous: Option<&Self>) -> Result<Self, ApiError> {
        let Value::Object(mut body) = input else {
            return Err(ApiError::validation("", "a consumer is a JSON object"));
        };
        let routing = split_routing(&mut body);
        let input: ConsumerInput = parse_input(Value::Object(body))?;
        validate_name(&input.name, "name")?;
        validate_headers(&input.headers, "headers")?;
        let routing = Routing::from_input(routing, ctx)?;
        let (role_ids, roles_field) = match (input.roles, input.role_ids) {
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "role_ids",
                    "give either roles or role_ids, not both",
                ))
            }
            (Some(r), None) => (r, "roles"),
            (None, r) => (r.unwrap_or_default(), "role_ids"),
        };
        // Attachments made through sub-resources are kept when a replace does not restate them.
        let auth_ids = input
            .auth_ids
            .unwrap_or_else(|| previous.map(|p| p.auth_ids.clone()).unwrap_or_default());
        let policy_ids = input
            .policy_ids
            .unwrap_or_else(|| previous.map(|p| p.policy_ids.clone()).unwrap_or_default());
        for (ids, field) in [
            (&role_ids, roles_field),
            (&auth_ids, "auth_ids"),
            (&policy_ids, "policy_ids"),
        ] {
            unique_ids(ids, field)?;
        }
        for (i, id) in role_ids.iter().enumerate() {
            ctx.lookup::<RoleSpec>(id, &format!("{roles_field}[{i}]"))?;
        }
        for (i, id) in auth_ids.iter().enumerate() {
            ctx.lookup::<AuthSpec>(id, &format!("auth_ids[{i}]"))?;
        }
        for (i, id) in policy_ids.iter().enumerate() {
            ctx.lookup::<PolicySpec>(id, &format!("policy_ids[{i}]"))?;
        }
        let spec = ConsumerSpec {
            name: input.name,
            kind: input.kind,
            active: input.active,
            routing_mode: input.routing_mode,
            routing,
            headers: input.headers,
            role_ids,
            auth_ids,
            policy_ids,
            toolkit: input.toolkit,
            fail_mode: input.fail_mode.unwrap_or_default(),
        };
        spec.validate_toolkit(ctx)?;
        Ok(spec)
    }

    fn patch_base(&self, patch: &Value) -> Map<String, Value> {
        let mut base = self.public_fields(false);
        prepare_patch_base(&mut base, patch);
        if patch.get("roles").is_some() {
            base.remove("role_ids");
        }
        base
    }
}
