//! policy — `rate_limit`, `guardrail` or `limits`, attached to consumers.

use super::{parse_input, validate_name, Ctx, Entity, EntitySpec, FromInput, Kind, Record};
use crate::error::ApiError;
use crate::store::{Model, Stored};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyType {
    RateLimit,
    Guardrail,
    Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    #[default]
    Consumer,
    Credential,
    Subject,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub key: RateLimitKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailAction {
    #[default]
    Block,
    Redact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AppliesTo {
    Request,
    Response,
    #[default]
    Both,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailConfig {
    #[serde(default)]
    pub deny_patterns: Vec<String>,
    #[serde(default)]
    pub deny_words: Vec<String>,
    #[serde(default)]
    pub action: GuardrailAction,
    #[serde(default)]
    pub applies_to: AppliesTo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default)]
    pub max_input_tokens: Option<u64>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub max_messages: Option<u64>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: PolicyType,
    #[serde(default)]
    pub config: Value,
}

impl PolicySpec {
    pub fn rate_limit(&self) -> Option<RateLimitConfig> {
        (self.kind == PolicyType::RateLimit)
            .then(|| serde_json::from_value(self.config.clone()).ok())
            .flatten()
    }
    pub fn guardrail(&self) -> Option<GuardrailConfig> {
        (self.kind == PolicyType::Guardrail)
            .then(|| serde_json::from_value(self.config.clone()).ok())
            .flatten()
    }
    pub fn limits(&self) -> Option<LimitsConfig> {
        (self.kind == PolicyType::Limits)
            .then(|| serde_json::from_value(self.config.clone()).ok())
            .flatten()
    }
}

fn positive(v: Option<u64>, field: &str) -> Result<(), ApiError> {
    if v == Some(0) {
        return Err(ApiError::validation(field, "must be at least 1"));
    }
    Ok(())
}

impl EntitySpec for PolicySpec {
    const KIND: Kind = Kind::Policy;
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
        Stored::Memory(&model.policies)
    }
    fn wrap(record: Record<Self>) -> Entity {
        Entity::Policy(record)
    }
}

impl FromInput for PolicySpec {
    fn from_input(input: Value, _ctx: &Ctx, _previous: Option<&Self>) -> Result<Self, ApiError> {
        let mut spec: PolicySpec = parse_input(input)?;
        validate_name(&spec.name, "name")?;
        if spec.config.is_null() {
            spec.config = Value::Object(Map::new());
        }
        let within = |e: ApiError| e.within("config");
        // Normalise the config through its typed form, so defaults are stored explicitly.
        spec.config = match spec.kind {
            PolicyType::RateLimit => {
                let c: RateLimitConfig = parse_input(spec.config.clone()).map_err(within)?;
                positive(c.requests_per_minute, "config.requests_per_minute")?;
                positive(c.tokens_per_minute, "config.tokens_per_minute")?;
                positive(c.burst, "config.burst")?;
                if c.requests_per_minute.is_none() && c.tokens_per_minute.is_none() {
                    return Err(ApiError::validation(
                        "config",
                        "set requests_per_minute, tokens_per_minute or both",
                    ));
                }
                serde_json::to_value(c)
            }
            PolicyType::Guardrail => {
                let c: GuardrailConfig = parse_input(spec.config.clone()).map_err(within)?;
                for (i, p) in c.deny_patterns.iter().enumerate() {
                    regex::RegexBuilder::new(p)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| {
                            ApiError::validation(
                                format!("config.deny_patterns[{i}]"),
                                e.to_string(),
                            )
                        })?;
                }
                for (i, w) in c.deny_words.iter().enumerate() {
                    if w.trim().is_empty() {
                        return Err(ApiError::validation(
                            format!("config.deny_words[{i}]"),
                            "must not be empty",
                        ));
                    }
                }
                if c.deny_patterns.is_empty() && c.deny_words.is_empty() {
                    return Err(ApiError::validation(
                        "config",
                        "set deny_patterns, deny_words or both",
                    ));
                }
                serde_json::to_value(c)
            }
            PolicyType::Limits => {
                let c: LimitsConfig = parse_input(spec.config.clone()).map_err(within)?;
                positive(c.max_input_tokens, "config.max_input_tokens")?;
                positive(c.max_output_tokens, "config.max_output_tokens")?;
                positive(c.max_messages, "config.max_messages")?;
                positive(c.max_body_bytes, "config.max_body_bytes")?;
                serde_json::to_value(c)
            }
        }
        .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(spec)
    }
}
