//! IDP tokens (JWT): keys from a secret, a PEM, an inline JWKS or a `jwks_url`; the signature,
//! `iss`, `aud`, `exp` and `nbf` checked with a small leeway.
//!
//! Only the algorithms the auth lists are accepted, and a key is only ever used with an
//! algorithm of its own family, so `alg: none`, unlisted algorithms and HS/RS confusion (an
//! HMAC token signed with an RSA public key) are all refused.

use crate::entities::auth::JwtConfig;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::Value;
use std::str::FromStr;
use std::sync::Arc;

/// A verification key, with the `kid` it is published under.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub key: Arc<DecodingKey>,
}

pub enum Keys {
    Static(Vec<Key>),
    /// Fetched from this URL and cached (see `identity`).
    Remote(String),
}

pub struct JwtAuth {
    pub issuer: String,
    pub audience: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: Keys,
    pub roles_claim: String,
    pub subject_claim: String,
    pub leeway_s: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum JwtError {
    /// No key with the token's `kid`.
    UnknownKid,
    Invalid(&'static str),
}

/// The keys of a JWK set (keys that cannot be used are left out).
pub fn keys_of_jwks(jwks: &Value) -> Vec<Key> {
    let Ok(set) = serde_json::from_value::<JwkSet>(jwks.clone()) else {
        return vec![];
    };
    set.keys
        .iter()
        .filter_map(|jwk| {
            Some(Key {
                kid: jwk.common.key_id.clone(),
                key: Arc::new(DecodingKey::from_jwk(jwk).ok()?),
            })
        })
        .collect()
}

impl JwtAuth {
    pub fn compile(cfg: &JwtConfig) -> Option<JwtAuth> {
        let algorithms: Vec<Algorithm> = cfg
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::from_str(a).ok())
            .collect();
        let first = *algorithms.first()?;
        let keys = if let Some(url) = &cfg.jwks_url {
            Keys::Remote(url.clone())
        } else if let Some(jwks) = &cfg.jwks {
            Keys::Static(keys_of_jwks(jwks))
        } else if let Some(secret) = &cfg.secret {
            let secret = crate::providers::secret(secret).ok()?;
            Keys::Static(vec![Key {
                kid: None,
                key: Arc::new(DecodingKey::from_secret(secret.as_bytes())),
            }])
        } else {
            let pem = cfg.public_key_pem.as_deref()?.as_bytes();
            let key = match first.family() {
                jsonwebtoken::AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
                jsonwebtoken::AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
                jsonwebtoken::AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
                jsonwebtoken::AlgorithmFamily::Hmac => return None,
            };
            Keys::Static(vec![Key {
                kid: None,
                key: Arc::new(key.ok()?),
            }])
        };
        Some(JwtAuth {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            algorithms,
            keys,
            roles_claim: cfg.roles_claim.clone(),
            subject_claim: cfg.subject_claim.clone(),
            leeway_s: cfg.leeway_s,
        })
    }

    /// The token's header, if its algorithm is one this auth accepts.
    pub fn header(&self, token: &str) -> Result<Header, JwtError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| JwtError::Invalid("malformed token"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtError::Invalid("algorithm not accepted"));
        }
        Ok(header)
    }

    /// Verifies `token` against `keys`; returns its claims.
    pub fn verify(&self, token: &str, header: &Header, keys: &[Key]) -> Result<Value, JwtError> {
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => keys.iter().collect(),
        };
        if candidates.is_empty() {
            return Err(if header.kid.is_some() {
                JwtError::UnknownKid
            } else {
                JwtError::Invalid("no key")
            });
        }
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway_s;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "iss"]);
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        let mut last = JwtError::Invalid("no key");
        for k in candidates {
            // A key of another family never verifies this algorithm (no HS/RS confusion).
            if k.key.family() != header.alg.family() {
                last = JwtError::Invalid("key of another family");
                continue;
            }
            match jsonwebtoken::decode::<Value>(token, &k.key, &v) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = JwtError::Invalid(match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => "expired",
                        jsonwebtoken::errors::ErrorKind::ImmatureSignature => "not yet valid",
                        jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong issuer",
                        jsonwebtoken::errors::ErrorKind::InvalidAudience => "wrong audience",
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => "bad signature",
                        _ => "invalid",
                    })
                }
            }
        }
        Err(last)
    }
}

/// A claim by dotted path (`realm_access.roles`).
pub fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, part| v.get(part))
}

/// A roles claim as names: a list of strings or one space-separated string.
pub fn claim_names(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_by_dotted_path_as_list_or_string() {
        let c = json!({"realm_access": {"roles": ["a", "b"]}, "scope": "x y", "roles": ["top"]});
        assert_eq!(claim_names(claim(&c, "realm_access.roles")), vec!["a", "b"]);
        assert_eq!(claim_names(claim(&c, "scope")), vec!["x", "y"]);
        assert_eq!(claim_names(claim(&c, "roles")), vec!["top"]);
        assert!(claim_names(claim(&c, "missing.path")).is_empty());
    }
}
