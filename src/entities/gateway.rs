//! gateway — `/v1/gateways`: `{ "name", "active" }`. Everything else belongs to one.

use super::{
    default_true, parse_input, validate_name, Ctx, Entity, EntitySpec, FromInput, Kind, Record,
};
use crate::error::ApiError;
use crate::store::{Model, Stored};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    pub name: String,
    #[serde(default = "default_true")]
    pub active: bool,
}

impl EntitySpec for GatewaySpec {
    const KIND: Kind = Kind::Gateway;
    fn name(&self) -> &str {
        &self.name
    }
    fn public_fields(&self, _redact: bool) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }
    fn stored(model: &Model) -> Stored<'_, Self> {
        Stored::Memory(&model.gateways)
    }
    fn wrap(record: Record<Self>) -> Entity {
        Entity::Gateway(record)
    }
}

impl FromInput for GatewaySpec {
    fn from_input(input: Value, _ctx: &Ctx, _previous: Option<&Self>) -> Result<Self, ApiError> {
        let spec: GatewaySpec = parse_input(input)?;
        validate_name(&spec.name, "name")?;
        Ok(spec)
    }
}
