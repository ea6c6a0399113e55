//! Identities (SPEC §2 auth and role, §3 steps 2 and 4): JWTs of every algorithm, bad tokens,
//! role selection, JWKS rotation, OAuth2 introspection and the API-key lifecycle.

mod support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::upstream::{chat_completion, FakeUpstream, Reply};
use support::{id, Gateway};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn jwk(name: &str) -> Value {
    let all: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    all[name].clone()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(iss: &str, extra: Value) -> Value {
    let mut c =
        json!({"iss": iss, "aud": "switchyard", "sub": "user-1", "exp": now() + 300, "iat": now()});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        c[k] = v;
    }
    c
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, key).unwrap()
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture(name)).unwrap()
}

struct Env {
    gid: String,
    slug: String,
}

fn consumer(
    gw: &Gateway,
    registries: &[&str],
    auths: Vec<Value>,
    extra: Value,
) -> (Env, Vec<String>) {
    let gid = id(&gw.create(
        "/v1/gateways",
        json!({"name": format!("g{}", support::free_port())}),
    ));
    let g = |c: &str| format!("/v1/gateways/{gid}/{c}");
    let regs: Vec<String> = registries
        .iter()
        .map(|n| {
            id(&gw.create(
                &g("registries"),
                json!({"name": n, "provider": "mock", "options": {"text": format!("from {n}")}}),
            ))
        })
        .collect();
    let auth_ids: Vec<String> = auths
        .into_iter()
        .map(|a| id(&gw.create(&g("auths"), a)))
        .collect();
    let mut body = json!({"name": "app", "auth_ids": auth_ids, "registries": regs.iter().map(|r| json!({"id": r})).collect::<Vec<_>>()});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        body[k] = v;
    }
    let c = gw.create(&g("consumers"), body);
    (
        Env {
            gid,
            slug: c["slug"].as_str().unwrap().to_string(),
        },
        regs,
    )
}

fn call(gw: &Gateway, e: &Env, token: &str) -> (u16, Value) {
    let r = gw
        .http
        .post(gw.proxy_url(&format!("/{}/v1/chat/completions", e.slug)))
        .bearer_auth(token)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn jwt_auth(name: &str, iss: &str, algs: &[&str], key: Value) -> Value {
    let mut jwt = json!({"issuer": iss, "audience": "switchyard", "algorithms": algs});
    for (k, v) in key.as_object().cloned().unwrap() {
        jwt[k] = v;
    }
    json!({"name": name, "type": "jwt", "jwt": jwt})
}

fn pem(name: &str) -> Value {
    json!({"public_key_pem": String::from_utf8(fixture(name)).unwrap()})
}

#[test]
fn valid_tokens_of_every_algorithm_are_accepted() {
    let gw = Gateway::start();
    let cases: Vec<(&str, Algorithm, EncodingKey, Value)> = vec![
        ("RS256", Algorithm::RS256, rsa("rsa1.key"), pem("rsa1.pub")),
        ("RS384", Algorithm::RS384, rsa("rsa1.key"), pem("rsa1.pub")),
        (
            "RS512",
            Algorithm::RS512,
            rsa("rsa1.key"),
            json!({"jwks": {"keys": [jwk("rsa1")]}}),
        ),
        ("PS256", Algorithm::PS256, rsa("rsa1.key"), pem("rsa1.pub")),
        (
            "ES256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&fixture("ec256.key")).unwrap(),
            pem("ec256.pub"),
        ),
        (
            "ES384",
            Algorithm::ES384,
            EncodingKey::from_ec_pem(&fixture("ec384.key")).unwrap(),
            json!({"jwks": {"keys": [jwk("ec384")]}}),
        ),
        (
            "EdDSA",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&fixture("ed.key")).unwrap(),
            pem("ed.pub"),
        ),
        (
            "HS256",
            Algorithm::HS256,
            EncodingKey::from_secret(b"an-hmac-secret-of-some-length"),
            json!({"secret": "an-hmac-secret-of-some-length"}),
        ),
    ];
    let auths = cases
        .iter()
        .map(|(n, _, _, key)| jwt_auth(n, &format!("https://idp/{n}"), &[n], key.clone()))
        .collect();
    let (e, _) = consumer(&gw, &["mock"], auths, json!({}));
    for (n, alg, key, _) in &cases {
        let kid = if matches!(n, &"RS512" | &"ES384") {
            jwk(if *n == "RS512" { "rsa1" } else { "ec384" })["kid"]
                .as_str()
                .map(str::to_string)
        } else {
            None
        };
        let token = sign(
            *alg,
            kid.as_deref(),
            key,
            &claims(&format!("https://idp/{n}"), json!({})),
        );
        let (st, body) = call(&gw, &e, &token);
        assert_eq!(st, 200, "{n}: {body}");
    }
    assert!(!gw.logs().contains("eyJ"), "no token in the logs");
}

#[test]
fn bad_tokens_are_refused_before_any_upstream_contact() {
    let fake = FakeUpstream::start(|_| Reply::Json(200, chat_completion("m", "ok")));
    let gw = Gateway::start();
    let gid = id(&gw.create("/v1/gateways", json!({"name": "g"})));
    let g = |c: &str| format!("/v1/gateways/{gid}/{c}");
    let reg = id(&gw.create(
        &g("registries"),
        json!({"name": "oa", "provider": "openai", "base_url": format!("{}/v1", fake.base_url())}),
    ));
    let auth = id(&gw.create(
        &g("auths"),
        jwt_auth("rs", "https://idp", &["RS256"], pem("rsa1.pub")),
    ));
    let c = gw.create(
        &g("consumers"),
        json!({"name": "app", "auth_ids": [auth], "registries": [{"id": reg}]}),
    );
    let e = Env {
        gid: gid.clone(),
        slug: c["slug"].as_str().unwrap().to_string(),
    };
    let good = sign(
        Algorithm::RS256,
        None,
        &rsa("rsa1.key"),
        &claims("https://idp", json!({})),
    );
    assert_eq!(call(&gw, &e, &good).0, 200);
    let b64 = |v: &Value| base64_url(v.to_string().as_bytes());
    let payload = claims("https://idp", json!({}));
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        format!(
            "{}.{}.{}",
            parts[0],
            b64(&claims("https://idp", json!({"sub": "admin"}))),
            parts[2]
        )
    };
    let bad: Vec<(&str, String)> = vec![
        (
            "expired",
            sign(
                Algorithm::RS256,
                None,
                &rsa("rsa1.key"),
                &claims("https://idp", json!({"exp": now() - 600})),
            ),
        ),
        (
            "not yet valid",
            sign(
                Algorithm::RS256,
                None,
                &rsa("rsa1.key"),
                &claims("https://idp", json!({"nbf": now() + 600})),
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                None,
                &rsa("rsa1.key"),
                &claims("https://evil", json!({})),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                None,
                &rsa("rsa1.key"),
                &claims("https://idp", json!({"aud": "other"})),
            ),
        ),
        (
            "no exp",
            sign(
                Algorithm::RS256,
                None,
                &rsa("rsa1.key"),
                &json!({"iss": "https://idp", "aud": "switchyard"}),
            ),
        ),
        (
            "wrong key",
            sign(Algorithm::RS256, None, &rsa("rsa2.key"), &payload),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&payload)
            ),
        ),
        (
            "HS256 with the RSA public key",
            sign(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(&fixture("rsa1.pub")),
                &payload,
            ),
        ),
        (
            "RS384 not listed",
            sign(Algorithm::RS384, None, &rsa("rsa1.key"), &payload),
        ),
        ("tampered payload", tampered),
        ("garbage", "not.a.token".to_string()),
        ("empty segments", "..".to_string()),
    ];
    for (what, token) in bad {
        let (st, body) = call(&gw, &e, &token);
        assert_eq!(st, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{what}");
    }
    assert_eq!(fake.count(), 1, "only the good token reached the upstream");
    let (_, metrics) = (
        0,
        gw.http
            .get(gw.admin_url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_auth_failures_total{")
                && l.contains("reason=\"expired\"")),
        "auth failures are counted"
    );
    let _ = e.gid;
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn role_based_consumers_route_by_the_first_matching_role() {
    let gw = Gateway::start();
    let gid = id(&gw.create("/v1/gateways", json!({"name": "g"})));
    let g = |c: &str| format!("/v1/gateways/{gid}/{c}");
    let basic = id(&gw.create(
        &g("registries"),
        json!({"name": "basic-reg", "provider": "mock", "options": {"text": "basic"}}),
    ));
    let premium = id(&gw.create(
        &g("registries"),
        json!({"name": "premium-reg", "provider": "mock", "options": {"text": "premium"}}),
    ));
    let r_basic = id(&gw.create(
        &g("roles"),
        json!({"name": "basic", "registry_ids": [basic]}),
    ));
    let r_premium = id(&gw.create(
        &g("roles"),
        json!({"name": "premium", "registry_ids": [premium]}),
    ));
    let secret = json!({"secret": "role-secret-value-123456"});
    let mut a = jwt_auth("idp", "https://idp", &["HS256"], secret);
    a["jwt"]["roles_claim"] = json!("realm_access.roles");
    let auth = id(&gw.create(&g("auths"), a));
    let key_auth = gw.create(&g("auths"), json!({"name": "static", "type": "api_key"}));
    let c = gw.create(
        &g("consumers"),
        json!({"name": "team", "routing_mode": "role_based",
        "roles": [r_premium, r_basic], "auth_ids": [auth, id(&key_auth)]}),
    );
    let e = Env {
        gid: gid.clone(),
        slug: c["slug"].as_str().unwrap().to_string(),
    };
    let key = EncodingKey::from_secret(b"role-secret-value-123456");
    let token = |roles: Value| {
        sign(
            Algorithm::HS256,
            None,
            &key,
            &claims("https://idp", json!({"realm_access": {"roles": roles}})),
        )
    };
    let answer = |t: &str| {
        let (st, v) = call(&gw, &e, t);
        (
            st,
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            v,
        )
    };
    assert_eq!(answer(&token(json!(["basic"]))).1, "basic");
    // The consumer's role order wins over the claim's order.
    assert_eq!(answer(&token(json!(["basic", "premium"]))).1, "premium");
    assert_eq!(
        answer(&token(json!("other premium"))).1,
        "premium",
        "a space-separated claim"
    );
    let (st, _, v) = answer(&token(json!(["guest"])));
    assert_eq!(st, 403);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("realm_access.roles"),
        "{v}"
    );
    let (st, _, _) = answer(&sign(
        Algorithm::HS256,
        None,
        &key,
        &claims("https://idp", json!({})),
    ));
    assert_eq!(st, 403, "no roles claim at all");
    // A role_based consumer takes IDP tokens, not API keys.
    assert_eq!(call(&gw, &e, key_auth["key"].as_str().unwrap()).0, 401);
}

#[test]
fn jwks_rotation_without_restart_and_an_idp_outage() {
    let jwks = Arc::new(Mutex::new(json!({"keys": [jwk("rsa1")]})));
    let down = Arc::new(AtomicBool::new(false));
    let (j, d) = (jwks.clone(), down.clone());
    let idp = FakeUpstream::start(move |_| {
        if d.load(Ordering::SeqCst) {
            Reply::Json(503, json!({"error": "down"}))
        } else {
            Reply::Json(200, j.lock().unwrap().clone())
        }
    });
    let gw = Gateway::start();
    let (e, _) = consumer(
        &gw,
        &["mock"],
        vec![jwt_auth(
            "idp",
            "https://idp",
            &["RS256"],
            json!({"jwks_url": format!("{}/jwks", idp.base_url())}),
        )],
        json!({}),
    );
    let t1 = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &rsa("rsa1.key"),
        &claims("https://idp", json!({})),
    );
    let t2 = sign(
        Algorithm::RS256,
        Some("rsa-2"),
        &rsa("rsa2.key"),
        &claims("https://idp", json!({})),
    );
    assert_eq!(call(&gw, &e, &t1).0, 200);
    assert_eq!(call(&gw, &e, &t1).0, 200);
    assert_eq!(idp.count(), 1, "the set is cached");
    assert_eq!(call(&gw, &e, &t2).0, 401, "kid rsa-2 is not published yet");
    // The IDP publishes the new key; after the refetch interval the new kid is accepted.
    jwks.lock().unwrap()["keys"] = json!([jwk("rsa1"), jwk("rsa2")]);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        call(&gw, &e, &t2).0,
        200,
        "the new kid is fetched without a restart"
    );
    // The IDP goes down: known keys keep working, unknown ones are refused.
    down.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1100));
    let t3 = sign(
        Algorithm::RS256,
        Some("rsa-3"),
        &rsa("rsa2.key"),
        &claims("https://idp", json!({})),
    );
    assert_eq!(call(&gw, &e, &t3).0, 401);
    assert_eq!(call(&gw, &e, &t1).0, 200);
    assert_eq!(call(&gw, &e, &t2).0, 200);
    let _ = e.gid;
}

#[test]
fn oauth2_introspection_active_inactive_cached_and_down() {
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    let endpoint = FakeUpstream::start(move |r| {
        if d.load(Ordering::SeqCst) {
            return Reply::Json(500, json!({"error": "down"}));
        }
        let authorized =
            r.header("authorization") == Some("Basic Y2xpZW50LTE6Y2xpZW50LXNlY3JldC1vbmU=");
        let body = String::from_utf8_lossy(&r.body).to_string();
        if !authorized {
            Reply::Json(401, json!({"error": "invalid_client"}))
        } else if body.starts_with("token=good-token") {
            Reply::Json(
                200,
                json!({"active": true, "sub": "svc-a", "exp": chrono::Utc::now().timestamp() + 60}),
            )
        } else {
            Reply::Json(200, json!({"active": false}))
        }
    });
    let gw = Gateway::start();
    let (e, _) = consumer(
        &gw,
        &["mock"],
        vec![
            json!({"name": "o", "type": "oauth2", "oauth2": {"introspection_url": format!("{}/introspect", endpoint.base_url()),
            "client_id": "client-1", "client_secret": "client-secret-one"}}),
        ],
        json!({}),
    );
    assert_eq!(call(&gw, &e, "good-token").0, 200);
    assert_eq!(call(&gw, &e, "good-token").0, 200);
    assert_eq!(endpoint.count(), 1, "an active token is cached");
    assert_eq!(call(&gw, &e, "revoked-token").0, 401);
    assert_eq!(call(&gw, &e, "revoked-token").0, 401);
    assert_eq!(
        endpoint.count(),
        2,
        "an inactive token is cached briefly too"
    );
    down.store(true, Ordering::SeqCst);
    let (st, body) = call(&gw, &e, "new-token");
    assert_eq!(st, 503, "{body}");
    assert_eq!(
        call(&gw, &e, "good-token").0,
        200,
        "the cached answer still stands"
    );
    let _ = e.gid;
}

#[test]
fn api_key_lifecycle_expiry_deactivation_rotation() {
    let gw = Gateway::start();
    let (e, _) = consumer(&gw, &["mock"], vec![], json!({}));
    let (_, list) = gw.admin("GET", &format!("/v1/gateways/{}/consumers", e.gid), None);
    let cid = id(&list["items"][0]);
    let g = |c: &str| format!("/v1/gateways/{}/{c}", e.gid);
    let old = gw.create(&g("auths"), json!({"name": "old", "type": "api_key"}));
    let cpath = format!("{}/{cid}", g("consumers"));
    gw.admin("PUT", &format!("{cpath}/auths/{}", id(&old)), None);
    let old_key = old["key"].as_str().unwrap();
    assert_eq!(call(&gw, &e, old_key).0, 200);
    // Rotation: attach a new key, detach the old; the old stops on the next request.
    let new = gw.create(&g("auths"), json!({"name": "new", "type": "api_key"}));
    gw.admin("PUT", &format!("{cpath}/auths/{}", id(&new)), None);
    gw.admin("DELETE", &format!("{cpath}/auths/{}", id(&old)), None);
    let new_key = new["key"].as_str().unwrap();
    assert_eq!(call(&gw, &e, old_key).0, 401);
    assert_eq!(call(&gw, &e, new_key).0, 200);
    // An inactive or expired key stops at once.
    let apath = format!("{}/{}", g("auths"), id(&new));
    gw.admin("PATCH", &apath, Some(json!({"active": false})));
    assert_eq!(call(&gw, &e, new_key).0, 401);
    gw.admin(
        "PATCH",
        &apath,
        Some(json!({"active": true, "expires_at": "2020-01-01T00:00:00Z"})),
    );
    assert_eq!(call(&gw, &e, new_key).0, 401);
    gw.admin(
        "PATCH",
        &apath,
        Some(json!({"expires_at": "2999-01-01T00:00:00Z"})),
    );
    assert_eq!(call(&gw, &e, new_key).0, 200);
    // An inactive consumer stops every credential.
    gw.admin("PATCH", &cpath, Some(json!({"active": false})));
    assert_eq!(call(&gw, &e, new_key).0, 403);
}
