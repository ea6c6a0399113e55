//! auth — a credential that can authenticate as the consumers it is attached to.
//!
//! API keys are stored as their SHA-256 hash; the key itself is shown once, in the response
//! that created (or re-keyed) it.

use super::{
    default_true, keep_secret, parse_input, redact_secret, validate_name, validate_url, Ctx,
    Entity, EntitySpec, FromInput, Kind, Record,
};
use crate::error::ApiError;
use crate::store::{Model, Stored};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthType {
    ApiKey,
    Jwt,
    Oauth2,
}

pub const JWT_ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    pub algorithms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
}

fn default_roles_claim() -> String {
    "roles".into()
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    pub introspection_url: String,
    pub client_id: String,
    pub client_secret: String,
}

/// The stored form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: AuthType,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// api_key: hex SHA-256 of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Boxed, with `oauth2`: most auths are API keys, and inline these two made every auth
    /// record 288 bytes larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Box<JwtConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<Box<OAuth2Config>>,
    /// The plain key, present only between creation and the response that shows it once.
    #[serde(skip)]
    pub new_key: Option<String>,
}

/// The operator's form. `key_hash`/`key_prefix` are accepted so that an export imports with
/// its keys still working.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthInput {
    name: String,
    #[serde(rename = "type")]
    kind: AuthType,
    #[serde(default = "default_true")]
    active: bool,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_hash: Option<String>,
    #[serde(default)]
    key_prefix: Option<String>,
    #[serde(default)]
    jwt: Option<JwtConfig>,
    #[serde(default)]
    oauth2: Option<OAuth2Config>,
}

/// The hex SHA-256 of an API key, as stored and as looked up.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A fresh API key: `sy-` and 40 random base62 characters (~238 bits).
pub fn generate_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let body: String = (0..40)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("sy-{body}")
}

/// What `key_prefix` shows: the first 8 characters, but never more than half of the key.
fn key_prefix(key: &str) -> String {
    let n = (key.chars().count() / 2).min(8);
    key.chars().take(n).collect()
}

impl AuthSpec {
    pub fn expires_at_unix(&self) -> Option<i64> {
        self.expires_at
            .as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp())
    }
}

impl EntitySpec for AuthSpec {
    const KIND: Kind = Kind::Auth;
    fn name(&self) -> &str {
        &self.name
    }
    fn public_fields(&self, redact: bool) -> Map<String, Value> {
        let mut shown = self.clone();
        if redact {
            shown.key_hash = None;
            if let Some(j) = shown.jwt.as_mut() {
                j.secret = j.secret.as_deref().map(redact_secret);
            }
            if let Some(o) = shown.oauth2.as_mut() {
                o.client_secret = redact_secret(&o.client_secret);
            }
        }
        let mut m = match serde_json::to_value(&shown) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        if let Some(k) = &self.new_key {
            m.insert("key".into(), Value::String(k.clone()));
        }
        if !m.contains_key("expires_at") {
            m.insert("expires_at".into(), Value::Null);
        }
        m
    }
    fn stored(model: &Model) -> Stored<'_, Self> {
        Stored::Disk(&model.auths)
    }
    fn wrap(record: Record<Self>) -> Entity {
        Entity::Auth(record)
    }
}

impl FromInput for AuthSpec {
    fn from_input(input: Value, _ctx: &Ctx, previous: Option<&Self>) -> Result<Self, ApiError> {
        let input: AuthInput = parse_input(input)?;
        validate_name(&input.name, "name")?;
        if let Some(exp) = &input.expires_at {
            chrono::DateTime::parse_from_rfc3339(exp)
                .map_err(|_| ApiError::validation("expires_at", "must be an RFC 3339 timestamp"))?;
        }
        if let Some(prev) = previous {
            if prev.kind != input.kind {
                return Err(ApiError::validation(
                    "type",
                    "cannot change the type of an auth",
                ));
            }
        }
        let mut spec = AuthSpec {
            name: input.name,
            kind: input.kind,
            active: input.active,
            expires_at: input.expires_at,
            key_hash: None,
            key_prefix: None,
            jwt: None,
            oauth2: None,
            new_key: None,
        };
        let only = |present: bool, field: &str| -> Result<(), ApiError> {
            if present {
                Err(ApiError::validation(
                    field,
                    "does not apply to this auth type",
                ))
            } else {
                Ok(())
            }
        };
        match input.kind {
            AuthType::ApiKey => {
                only(input.jwt.is_some(), "jwt")?;
                only(input.oauth2.is_some(), "oauth2")?;
                match (input.key, input.key_hash) {
                    (Some(_), Some(_)) => {
                        return Err(ApiError::validation("key", "give either key or key_hash"))
                    }
                    (Some(key), None) => {
                        if key.chars().count() < 8
                            || key.chars().any(|c| c.is_whitespace() || c.is_control())
                        {
                            return Err(ApiError::validation(
                                "key",
                                "must be at least 8 characters with no whitespace",
                            ));
                        }
                        spec.key_hash = Some(hash_key(&key));
                        spec.key_prefix = Some(key_prefix(&key));
                        spec.new_key = Some(key);
                    }
                    (None, Some(hash)) => {
                        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(ApiError::validation(
                                "key_hash",
                                "must be 64 hex characters",
                            ));
                        }
                        spec.key_hash = Some(hash.to_ascii_lowercase());
                        spec.key_prefix = input.key_prefix;
                    }
                    (None, None) => match previous {
                        // A replace or patch that does not re-key keeps the key.
                        Some(prev) => {
                            spec.key_hash = prev.key_hash.clone();
                            spec.key_prefix = prev.key_prefix.clone();
                        }
                        None => {
                            let key = generate_key();
                            spec.key_hash = Some(hash_key(&key));
                            spec.key_prefix = Some(key_prefix(&key));
                            spec.new_key = Some(key);
                        }
                    },
                }
            }
            AuthType::Jwt => {
                only(input.key.is_some() || input.key_hash.is_some(), "key")?;
                only(input.oauth2.is_some(), "oauth2")?;
                let mut jwt = input
                    .jwt
                    .ok_or_else(|| ApiError::validation("jwt", "is required for a jwt auth"))?;
                let prev_secret = previous
                    .and_then(|p| p.jwt.as_ref())
                    .and_then(|j| j.secret.as_deref());
                jwt.secret = jwt.secret.take().map(|s| keep_secret(s, prev_secret));
                validate_jwt(&jwt)?;
                spec.jwt = Some(Box::new(jwt));
            }
            AuthType::Oauth2 => {
                only(input.key.is_some() || input.key_hash.is_some(), "key")?;
                only(input.jwt.is_some(), "jwt")?;
                let mut o = input.oauth2.ok_or_else(|| {
                    ApiError::validation("oauth2", "is required for an oauth2 auth")
                })?;
                validate_url(&o.introspection_url, "oauth2.introspection_url")?;
                if o.client_id.is_empty() {
                    return Err(ApiError::validation(
                        "oauth2.client_id",
                        "must not be empty",
                    ));
                }
                let prev = previous
                    .and_then(|p| p.oauth2.as_ref())
                    .map(|o| o.client_secret.as_str());
                o.client_secret = keep_secret(o.client_secret, prev);
                spec.oauth2 = Some(Box::new(o));
            }
        }
        Ok(spec)
    }

    fn patch_base(&self, _patch: &Value) -> Map<String, Value> {
        let mut m = self.public_fields(false);
        // A patch re-keys only when it names a new key.
        m.remove("key_hash");
        m.remove("key_prefix");
        m
    }
}

fn validate_jwt(jwt: &JwtConfig) -> Result<(), ApiError> {
    if jwt.issuer.trim().is_empty() {
        return Err(ApiError::validation("jwt.issuer", "must not be empty"));
    }
    if jwt.algorithms.is_empty() {
        return Err(ApiError::validation(
            "jwt.algorithms",
            "must list at least one algorithm",
        ));
    }
    for (i, a) in jwt.algorithms.iter().enumerate() {
        if !JWT_ALGORITHMS.contains(&a.as_str()) {
            return Err(ApiError::validation(
                format!("jwt.algorithms[{i}]"),
                format!("`{a}` is not one of {}", JWT_ALGORITHMS.join(", ")),
            ));
        }
    }
    let sources = [
        jwt.jwks.is_some(),
        jwt.jwks_url.is_some(),
        jwt.public_key_pem.is_some(),
        jwt.secret.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(ApiError::validation(
            "jwt",
            "give exactly one key source: jwks, jwks_url, public_key_pem or secret",
        ));
    }
    let symmetric = jwt.algorithms.iter().any(|a| a.starts_with("HS"));
    let asymmetric = jwt.algorithms.iter().any(|a| !a.starts_with("HS"));
    if symmetric && asymmetric {
        return Err(ApiError::validation(
            "jwt.algorithms",
            "must not mix HMAC (HS*) with public-key algorithms",
        ));
    }
    if symmetric != jwt.secret.is_some() {
        return Err(ApiError::validation(
            "jwt",
            "HS* algorithms take a `secret`; public-key algorithms take jwks, jwks_url or public_key_pem",
        ));
    }
    if let Some(url) = &jwt.jwks_url {
        validate_url(url, "jwt.jwks_url")?;
    }
    if let Some(jwks) = &jwt.jwks {
        if !jwks.get("keys").is_some_and(Value::is_array) {
            return Err(ApiError::validation(
                "jwt.jwks",
                "must be a JWK set: {\"keys\": [...]}",
            ));
        }
    }
    if jwt.roles_claim.is_empty() {
        return Err(ApiError::validation("jwt.roles_claim", "must not be empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_prefixed() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert!(a.starts_with("sy-") && a.len() == 43);
        assert_eq!(hash_key(&a).len(), 64);
        assert_eq!(key_prefix(&a), &a[..8]);
    }

    #[test]
    fn prefix_never_shows_more_than_half() {
        assert_eq!(key_prefix("abcdefghij"), "abcde");
    }
}
