//! registry — a provider backend (SPEC §2): where it is, how to authenticate to it, what it
//! serves, its timeouts, breaker and prices, and provider-specific options.

use super::{
    keep_secret, parse_input, redact_secret, validate_headers, validate_name, validate_url, Ctx,
    Entity, EntitySpec, FromInput, Kind, Record,
};
use crate::error::ApiError;
use crate::store::{Model, Stored};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Openai,
    OpenaiCompatible,
    AzureOpenai,
    Anthropic,
    Gemini,
    Bedrock,
    Mock,
    Mcp,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Openai => "openai",
            Provider::OpenaiCompatible => "openai_compatible",
            Provider::AzureOpenai => "azure_openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::Bedrock => "bedrock",
            Provider::Mock => "mock",
            Provider::Mcp => "mcp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ParamLocation {
    #[default]
    Header,
    Query,
}

/// How the gateway authenticates to the provider. Without overrides, `api_key` goes where the
/// provider expects it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProviderAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_location: Option<ParamLocation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    pub failure_threshold: u32,
    pub cooldown_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySpec {
    pub name: String,
    pub provider: Provider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default)]
    pub auth: ProviderAuth,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default)]
    pub pricing: BTreeMap<String, Pricing>,
    #[serde(default)]
    pub options: Map<String, Value>,
}

/// Provider options (the `options` object), typed per provider.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AzureOptions {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AnthropicOptions {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub default_max_tokens: Option<u32>,
}

/// Bedrock's region and SigV4 credentials; without access keys, `auth.api_key` is sent as a
/// Bedrock API key (a bearer token).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BedrockOptions {
    pub region: String,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MockOptions {
    /// Fixed answer; default: an echo of the last user message.
    #[serde(default)]
    pub text: Option<String>,
    /// Number of content chunks in a streamed answer.
    #[serde(default)]
    pub chunks: Option<u32>,
    #[serde(default)]
    pub chunk_delay_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NoOptions {}

/// Option keys whose values are secrets.
const SECRET_OPTIONS: [&str; 2] = ["secret_access_key", "session_token"];

impl RegistrySpec {
    pub fn azure_options(&self) -> AzureOptions {
        serde_json::from_value(Value::Object(self.options.clone())).unwrap_or_default()
    }
    pub fn anthropic_options(&self) -> AnthropicOptions {
        serde_json::from_value(Value::Object(self.options.clone())).unwrap_or_default()
    }
    pub fn mock_options(&self) -> MockOptions {
        serde_json::from_value(Value::Object(self.options.clone())).unwrap_or_default()
    }
    pub fn bedrock_options(&self) -> Option<BedrockOptions> {
        serde_json::from_value(Value::Object(self.options.clone())).ok()
    }

    fn validate(&self) -> Result<(), ApiError> {
        validate_name(&self.name, "name")?;
        if self.name.contains('/') {
            return Err(ApiError::validation(
                "name",
                "must not contain `/` (requests address a registry as `<name>/<model>`)",
            ));
        }
        match (&self.base_url, self.provider) {
            (None, Provider::Mock) => {}
            (None, _) => {
                return Err(ApiError::validation(
                    "base_url",
                    "is required for this provider",
                ))
            }
            (Some(url), _) => validate_url(url, "base_url")?,
        }
        let a = &self.auth;
        if a.header_name.is_some() != a.header_value.is_some() {
            return Err(ApiError::validation(
                "auth",
                "header_name and header_value go together",
            ));
        }
        if let Some(h) = &a.header_name {
            http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                ApiError::validation("auth.header_name", "is not a valid header name")
            })?;
        }
        if a.param_name.is_some() != a.param_value.is_some() {
            return Err(ApiError::validation(
                "auth",
                "param_name and param_value go together",
            ));
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.trim().is_empty() {
                return Err(ApiError::validation(
                    format!("models[{i}]"),
                    "must not be empty",
                ));
            }
        }
        validate_headers(&self.headers, "headers")?;
        let t = &self.timeouts;
        for (v, f) in [
            (t.connect_ms, "connect_ms"),
            (t.first_byte_ms, "first_byte_ms"),
            (t.stream_idle_ms, "stream_idle_ms"),
            (t.total_ms, "total_ms"),
        ] {
            if v == Some(0) {
                return Err(ApiError::validation(
                    format!("timeouts.{f}"),
                    "must be positive",
                ));
            }
        }
        if let Some(cb) = &self.circuit_breaker {
            if cb.failure_threshold == 0 {
                return Err(ApiError::validation(
                    "circuit_breaker.failure_threshold",
                    "must be at least 1",
                ));
            }
            if cb.cooldown_ms == 0 {
                return Err(ApiError::validation(
                    "circuit_breaker.cooldown_ms",
                    "must be positive",
                ));
            }
        }
        for (model, p) in &self.pricing {
            for (v, f) in [
                (p.input_per_mtok, "input_per_mtok"),
                (p.output_per_mtok, "output_per_mtok"),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(ApiError::validation(
                        format!("pricing.{model}.{f}"),
                        "must be a non-negative number",
                    ));
                }
            }
        }
        self.validate_options()
    }

    fn validate_options(&self) -> Result<(), ApiError> {
        let opts = Value::Object(self.options.clone());
        let within = |e: ApiError| e.within("options");
        match self.provider {
            Provider::AzureOpenai => {
                let o: AzureOptions = parse_input(opts).map_err(within)?;
                if o.api_version
                    .as_deref()
                    .is_some_and(|v| v.trim().is_empty())
                {
                    return Err(ApiError::validation(
                        "options.api_version",
                        "must not be empty",
                    ));
                }
            }
            Provider::Anthropic => {
                let o: AnthropicOptions = parse_input(opts).map_err(within)?;
                if o.default_max_tokens == Some(0) {
                    return Err(ApiError::validation(
                        "options.default_max_tokens",
                        "must be at least 1",
                    ));
                }
            }
            Provider::Bedrock => {
                let o: BedrockOptions = parse_input(opts).map_err(within)?;
                if o.access_key_id.is_some() != o.secret_access_key.is_some() {
                    return Err(ApiError::validation(
                        "options",
                        "access_key_id and secret_access_key go together",
                    ));
                }
                if o.access_key_id.is_none() && self.auth.api_key.is_none() {
                    return Err(ApiError::validation(
                        "options.access_key_id",
                        "is required unless auth.api_key holds a Bedrock API key",
                    ));
                }
            }
            Provider::Mock => {
                let o: MockOptions = parse_input(opts).map_err(within)?;
                if let Some(c) = o.chunks {
                    if !(1..=100_000).contains(&c) {
                        return Err(ApiError::validation("options.chunks", "must be 1..100000"));
                    }
                }
            }
            _ => {
                let _: NoOptions = parse_input(opts).map_err(within)?;
            }
        }
        Ok(())
    }
}

impl EntitySpec for RegistrySpec {
    const KIND: Kind = Kind::Registry;
    fn name(&self) -> &str {
        &self.name
    }
    fn public_fields(&self, redact: bool) -> Map<String, Value> {
        let mut shown = self.clone();
        if redact {
            let a = &mut shown.auth;
            for s in [&mut a.api_key, &mut a.header_value, &mut a.param_value] {
                if let Some(v) = s.as_mut() {
                    *v = redact_secret(v);
                }
            }
            for k in SECRET_OPTIONS {
                if let Some(Value::String(v)) = shown.options.get_mut(k) {
                    *v = redact_secret(v);
                }
            }
        }
        match serde_json::to_value(&shown) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }
    fn stored(model: &Model) -> Stored<'_, Self> {
        Stored::Memory(&model.registries)
    }
    fn wrap(record: Record<Self>) -> Entity {
        Entity::Registry(record)
    }
}

impl FromInput for RegistrySpec {
    fn from_input(input: Value, _ctx: &Ctx, previous: Option<&Self>) -> Result<Self, ApiError> {
        let mut spec: RegistrySpec = parse_input(input)?;
        if let Some(prev) = previous {
            let (a, p) = (&mut spec.auth, &prev.auth);
            a.api_key = a
                .api_key
                .take()
                .map(|v| keep_secret(v, p.api_key.as_deref()));
            a.header_value = a
                .header_value
                .take()
                .map(|v| keep_secret(v, p.header_value.as_deref()));
            a.param_value = a
                .param_value
                .take()
                .map(|v| keep_secret(v, p.param_value.as_deref()));
            for k in SECRET_OPTIONS {
                if let (Some(Value::String(new)), Some(Value::String(old))) =
                    (spec.options.get(k).cloned(), prev.options.get(k))
                {
                    spec.options
                        .insert(k.into(), Value::String(keep_secret(new, Some(old))));
                }
            }
        }
        spec.validate()?;
        Ok(spec)
    }
}
