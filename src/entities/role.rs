//! role — a named routing config that role_based consumers select by IDP token claims.

use super::routing::{prepare_patch_base, split_routing, Routing};
use super::{parse_input, validate_name, Ctx, Entity, EntitySpec, FromInput, Kind, Record};
use crate::error::ApiError;
use crate::store::{Model, Stored};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleSpec {
    pub name: String,
    pub routing: Routing,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleInput {
    name: String,
}

impl EntitySpec for RoleSpec {
    const KIND: Kind = Kind::Role;
    fn name(&self) -> &str {
        &self.name
    }
    fn public_fields(&self, redact: bool) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("name".into(), Value::String(self.name.clone()));
        self.routing.public_fields(redact, &mut out);
        out
    }
    fn stored(model: &Model) -> Stored<'_, Self> {
        Stored::Memory(&model.roles)
    }
    fn wrap(record: Record<Self>) -> Entity {
        Entity::Role(record)
    }
}

impl FromInput for RoleSpec {
    fn from_input(input: Value, ctx: &Ctx, _previous: Option<&Self>) -> Result<Self, ApiError> {
        let Value::Object(mut body) = input else {
            return Err(ApiError::validation("", "a role is a JSON object"));
        };
        let routing = split_routing(&mut body);
        let input: RoleInput = parse_input(Value::Object(body))?;
        validate_name(&input.name, "name")?;
        Ok(RoleSpec {
            name: input.name,
            routing: Routing::from_input(routing, ctx)?,
        })
    }

    fn patch_base(&self, patch: &Value) -> Map<String, Value> {
        let mut base = self.public_fields(false);
        prepare_patch_base(&mut base, patch);
        base
    }
}
