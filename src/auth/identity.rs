//! Tokens at request time: JWTs (with cached JWKS) and OAuth2 introspection (cached), and the
//! role a token selects.
//!
//! JWKS: the first token for a `jwks_url` fetches the set; afterwards it is refreshed in the
//! background once older than `JWKS_TTL`, and fetched on the request path only for a `kid` it
//! does not have (at most once per `JWKS_MIN_REFETCH`). A failed refresh keeps the old set, so an
//! IDP that is down does not break tokens of known keys.
//!
//! Introspection (RFC 7662): positive answers cached until the token's `exp` (at most
//! `INTROSPECTION_MAX_TTL`), negative ones for `INTROSPECTION_NEGATIVE_TTL`; an endpoint that
//! cannot be reached is a 503, never a 401.

use super::jwt::{claim, claim_names, JwtAuth, JwtError, Key, Keys};
use crate::entities::auth::OAuth2Config;
use crate::proxy::error::ProxyError;
use crate::snapshot::{CompiledConsumer, CompiledRouting, TokenAuth, TokenKind};
use crate::telemetry::metrics::AUTH_FAILURES;
use crate::upstream::Upstream;
use arc_swap::ArcSwapOption;
use base64::Engine;
use dashmap::DashMap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const JWKS_TTL: Duration = Duration::from_secs(300);
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(1);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub const INTROSPECTION_MAX_TTL: Duration = Duration::from_secs(300);
pub const INTROSPECTION_NEGATIVE_TTL: Duration = Duration::from_secs(10);
const INTROSPECTION_CACHE_CAP: usize = 100_000;

fn now_ms() -> u64 {
    static START: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

#[derive(Default)]
struct JwksEntry {
    keys: ArcSwapOption<Vec<Key>>,
    fetched_ms: AtomicU64,
    attempted_ms: AtomicU64,
    refreshing: AtomicBool,
}

struct Introspected {
    active: bool,
    subject: Option<String>,
    until: Instant,
}

/// Who a token says the caller is.
pub struct Verified {
    pub auth_id: String,
    pub subject: Option<String>,
    pub claims: Value,
    /// The roles claim path of the auth that verified it (JWTs).
    pub roles_claim: Option<String>,
}

#[derive(Default)]
pub struct Identity {
    jwks: DashMap<String, Arc<JwksEntry>>,
    introspection: DashMap<[u8; 32], Introspected>,
}

fn live(a: &TokenAuth, now_unix: i64) -> bool {
    a.active && a.expires_at.is_none_or(|t| now_unix < t)
}

impl Identity {
    /// Verifies a bearer token against the consumer's jwt (and, unless `jwt_only`, oauth2)
    /// auths. 401 when no auth accepts it; 503 when an introspection endpoint fails.
    pub async fn verify(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        consumer: &CompiledConsumer,
        token: &str,
        jwt_only: bool,
    ) -> Result<Verified, ProxyError> {
        let now = chrono::Utc::now().timestamp();
        let mut reason = "invalid_token";
        let looks_like_jwt = token.bytes().filter(|b| *b == b'.').count() == 2;
        for auth in consumer.token_auths().iter().filter(|a| live(a, now)) {
            match &auth.kind {
                TokenKind::Jwt(jwt) if looks_like_jwt => {
                    match self.verify_jwt(upstream, jwt, token).await {
                        Ok(claims) => {
                            let subject = claim(&claims, &jwt.subject_claim)
                                .and_then(Value::as_str)
                                .map(str::to_string);
                            return Ok(Verified {
                                auth_id: auth.id.clone(),
                                subject,
                                claims,
                                roles_claim: Some(jwt.roles_claim.clone()),
                            });
                        }
                        Err(JwtError::UnknownKid) => reason = "unknown_kid",
                        Err(JwtError::Invalid(r)) => reason = r,
                    }
                }
                TokenKind::OAuth2(cfg) if !jwt_only => {
                    if let Some(v) = self.introspect(upstream, &auth.id, cfg, token).await? {
                        return Ok(v);
                    }
                    reason = "inactive_token";
                }
                _ => {}
            }
        }
        let label = reason.replace(' ', "_");
        AUTH_FAILURES
            .with_label_values(&[consumer.gateway_name.as_str(), &label])
            .inc();
        Err(ProxyError::InvalidApiKey)
    }

    async fn verify_jwt(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        jwt: &JwtAuth,
        token: &str,
    ) -> Result<Value, JwtError> {
        let header = jwt.header(token)?;
        match &jwt.keys {
            Keys::Static(keys) => jwt.verify(token, &header, keys),
            Keys::Remote(url) => {
                let entry = self.jwks.entry(url.clone()).or_default().clone();
                let keys = match entry.keys.load_full() {
                    Some(keys) => {
                        if now_ms().saturating_sub(entry.fetched_ms.load(Ordering::Relaxed))
                            > JWKS_TTL.as_millis() as u64
                        {
                            self.refresh_in_background(upstream, url, &entry);
                        }
                        keys
                    }
                    None => self
                        .fetch_jwks(upstream, url, &entry)
                        .await
                        .ok_or(JwtError::UnknownKid)?,
                };
                match jwt.verify(token, &header, &keys) {
                    Err(JwtError::UnknownKid) => {
                        // A key the cached set does not have: the IDP may have rotated.
                        let keys = self
                            .fetch_jwks(upstream, url, &entry)
                            .await
                            .ok_or(JwtError::UnknownKid)?;
                        jwt.verify(token, &header, &keys)
                    }
                    other => other,
                }
            }
        }
    }

    /// Fetches a JWKS now unless one was attempted within `JWKS_MIN_REFETCH`.
    async fn fetch_jwks(
        &self,
        upstream: &Upstream,
        url: &str,
        entry: &JwksEntry,
    ) -> Option<Arc<Vec<Key>>> {
        let last = entry.attempted_ms.load(Ordering::Relaxed);
        let now = now_ms();
        if last != 0 && now.saturating_sub(last) < JWKS_MIN_REFETCH.as_millis() as u64 {
            return entry.keys.load_full();
        }
        entry.attempted_ms.store(now, Ordering::Relaxed);
        match upstream
            .fetch("GET", url, &[], bytes::Bytes::new(), FETCH_TIMEOUT)
            .await
        {
            Ok(f) if f.status == 200 => {
                let keys = serde_json::from_slice::<Value>(&f.body)
                    .map(|v| super::jwt::keys_of_jwks(&v))
                    .unwrap_or_default();
                if keys.is_empty() {
                    tracing::warn!(
                        url,
                        "JWKS answer has no usable keys; keeping the cached set"
                    );
                    return entry.keys.load_full();
                }
                let keys = Arc::new(keys);
                entry.keys.store(Some(keys.clone()));
                entry.fetched_ms.store(now_ms(), Ordering::Relaxed);
                Some(keys)
            }
            Ok(f) => {
                tracing::warn!(
                    url,
                    status = f.status,
                    "JWKS fetch failed; keeping the cached set"
                );
                entry.keys.load_full()
            }
            Err(e) => {
                tracing::warn!(url, error = %e, "JWKS fetch failed; keeping the cached set");
                entry.keys.load_full()
            }
        }
    }

    fn refresh_in_background(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        url: &str,
        entry: &Arc<JwksEntry>,
    ) {
        if entry.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (this, upstream, url, entry) = (
            self.clone(),
            upstream.clone(),
            url.to_string(),
            entry.clone(),
        );
        tokio::spawn(async move {
            this.fetch_jwks(&upstream, &url, &entry).await;
            entry.refreshing.store(false, Ordering::Release);
        });
    }

    /// `Some` when the token is active, `None` when inactive, `Err(503)` when the endpoint
    /// cannot answer.
    async fn introspect(
        &self,
        upstream: &Upstream,
        auth_id: &str,
        cfg: &OAuth2Config,
        token: &str,
    ) -> Result<Option<Verified>, ProxyError> {
        let key: [u8; 32] = Sha256::digest(format!("{auth_id}\n{token}").as_bytes()).into();
        let found = |i: &Introspected| {
            i.active.then(|| Verified {
                auth_id: auth_id.to_string(),
                subject: i.subject.clone(),
                claims: Value::Null,
                roles_claim: None,
            })
        };
        if let Some(hit) = self.introspection.get(&key) {
            if hit.until > Instant::now() {
                return Ok(found(&hit));
            }
        }
        let secret = crate::providers::secret(&cfg.client_secret).map_err(|_| {
            ProxyError::Unavailable("token introspection is not configured correctly".into())
        })?;
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{secret}", cfg.client_id));
        let form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let headers = [
            ("authorization", format!("Basic {basic}")),
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
        ];
        let unavailable = || {
            ProxyError::Unavailable(
                "the token introspection endpoint is unavailable; try again".into(),
            )
        };
        let answer = upstream
            .fetch(
                "POST",
                &cfg.introspection_url,
                &headers,
                bytes::Bytes::from(form),
                FETCH_TIMEOUT,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "token introspection failed");
                unavailable()
            })?;
        if answer.status != 200 {
            tracing::warn!(status = answer.status, "token introspection failed");
            return Err(unavailable());
        }
        let v: Value = serde_json::from_slice(&answer.body).map_err(|_| unavailable())?;
        let active = v.get("active").and_then(Value::as_bool).unwrap_or(false);
        let now = chrono::Utc::now().timestamp();
        let exp_left = v
            .get("exp")
            .and_then(Value::as_i64)
            .map(|e| Duration::from_secs((e - now).max(0) as u64));
        if active && exp_left.is_some_and(|d| d.is_zero()) {
            return Ok(None);
        }
        let ttl = if active {
            exp_left
                .unwrap_or(INTROSPECTION_MAX_TTL)
                .min(INTROSPECTION_MAX_TTL)
        } else {
            INTROSPECTION_NEGATIVE_TTL
        };
        if self.introspection.len() >= INTROSPECTION_CACHE_CAP {
            self.introspection.clear();
        }
        let entry = Introspected {
            active,
            subject: v.get("sub").and_then(Value::as_str).map(str::to_string),
            until: Instant::now() + ttl,
        };
        let out = found(&entry);
        self.introspection.insert(key, entry);
        Ok(out)
    }
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A role_based consumer's routing: the first of its roles (in `role_ids` order) named in the
/// token's roles claim.
pub fn select_role(
    consumer: &CompiledConsumer,
    v: &Verified,
) -> Result<Arc<CompiledRouting>, ProxyError> {
    let path = v.roles_claim.as_deref().unwrap_or("roles");
    let names = claim_names(claim(&v.claims, path));
    consumer
        .roles()
        .iter()
        .find(|(name, _)| names.iter().any(|n| n == name))
        .map(|(_, routing)| routing.clone())
        .ok_or_else(|| {
            ProxyError::Forbidden(format!(
                "no role in the token's `{path}` claim is allowed for this consumer"
            ))
        })
}
