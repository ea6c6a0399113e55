//! The admin API (SPEC §2) against the real binary: every collection and sub-resource, the
//! exact response fields, and bad input that must leave the store unchanged.

mod support;

use serde_json::{json, Value};
use support::{id, keys, Gateway, ADMIN_TOKEN};

const CONSUMER_FIELDS: [&str; 20] = [
    "active",
    "auth_ids",
    "created_at",
    "fail_mode",
    "fallback",
    "gateway_id",
    "headers",
    "id",
    "lb_config",
    "model_policies",
    "name",
    "policy_ids",
    "registry_ids",
    "registry_weights",
    "role_ids",
    "routing_mode",
    "slug",
    "toolkit",
    "type",
    "updated_at",
];

fn sorted(fields: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Create, get, list, put, patch and delete one entity; returns nothing, asserts all.
fn crud(gw: &Gateway, coll: &str, create: Value, put: Value, patch: Value, fields: &[&str]) {
    let created = gw.create(coll, create.clone());
    assert_eq!(
        keys(&created),
        sorted(fields),
        "{coll} create fields: {created}"
    );
    let eid = id(&created);
    assert!(uuid_like(&eid), "{eid}");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let (s, got) = gw.admin("GET", &format!("{coll}/{eid}"), None);
    assert_eq!(s, 200);
    assert_eq!(
        keys(&got),
        sorted(fields)
            .into_iter()
            .filter(|k| k != "key")
            .collect::<Vec<_>>()
    );
    assert_eq!(got["name"], create["name"]);

    let (s, list) = gw.admin("GET", coll, None);
    assert_eq!(s, 200);
    let items = list["items"].as_array().unwrap();
    assert!(items.iter().any(|i| i["id"] == eid.as_str()), "{list}");

    let (s, replaced) = gw.admin("PUT", &format!("{coll}/{eid}"), Some(put.clone()));
    assert_eq!(s, 200, "PUT {coll}: {replaced}");
    assert_eq!(replaced["id"], eid.as_str());
    assert_eq!(replaced["name"], put["name"]);
    assert_eq!(replaced["created_at"], created["created_at"]);

    let (s, patched) = gw.admin("PATCH", &format!("{coll}/{eid}"), Some(patch.clone()));
    assert_eq!(s, 200, "PATCH {coll}: {patched}");
    for (k, v) in patch.as_object().unwrap() {
        assert_eq!(&patched[k], v, "PATCH {coll} field {k}");
    }
    // Fields not in the patch keep their replaced values.
    assert_eq!(
        patched["name"],
        if patch.get("name").is_some() {
            patch["name"].clone()
        } else {
            put["name"].clone()
        }
    );

    let (s, body) = gw.admin("DELETE", &format!("{coll}/{eid}"), None);
    assert_eq!((s, body), (204, Value::Null));
    let (s, body) = gw.admin("GET", &format!("{coll}/{eid}"), None);
    assert_eq!(s, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn crud_for_every_entity() {
    let gw = Gateway::start();
    crud(
        &gw,
        "/v1/gateways",
        json!({"name": "a"}),
        json!({"name": "b", "active": false}),
        json!({"active": true}),
        &["id", "name", "active", "created_at", "updated_at"],
    );
    let gid = id(&gw.create("/v1/gateways", json!({"name": "main"})));
    let g = |c: &str| format!("/v1/gateways/{gid}/{c}");
    let reg_fields = [
        "id",
        "gateway_id",
        "name",
        "provider",
        "base_url",
        "auth",
        "models",
        "headers",
        "timeouts",
        "pricing",
        "options",
        "created_at",
        "updated_at",
    ];
    crud(
        &gw,
        &g("registries"),
        json!({"name": "openai-main", "provider": "openai", "base_url": "https://api.openai.com/v1",
               "auth": {"api_key": "sk-test-abcdefghijklmnop"}, "models": ["gpt-4o"],
               "headers": {"x-team": "a"}, "timeouts": {"connect_ms": 100}, "pricing": {}, "options": {}}),
        json!({"name": "openai-2", "provider": "openai", "base_url": "https://api.openai.com/v1",
               "auth": {"api_key": "sk-test-abcdefghijklmnop"}, "models": [], "headers": {}, "timeouts": {},
               "pricing": {}, "options": {}}),
        json!({"models": ["gpt-4o-mini"]}),
        &reg_fields,
    );
    crud(
        &gw,
        &g("auths"),
        json!({"name": "k", "type": "api_key"}),
        json!({"name": "k2", "type": "api_key"}),
        json!({"active": false}),
        &[
            "id",
            "gateway_id",
            "name",
            "type",
            "active",
            "expires_at",
            "key",
            "key_prefix",
            "created_at",
            "updated_at",
        ],
    );
    crud(
        &gw,
        &g("policies"),
        json!({"name": "rl", "type": "rate_limit", "config": {"requests_per_minute": 10}}),
        json!({"name": "rl2", "type": "rate_limit", "config": {"requests_per_minute": 20}}),
        json!({"name": "rl3"}),
        &[
            "id",
            "gateway_id",
            "name",
            "type",
            "config",
            "created_at",
            "updated_at",
        ],
    );
    let reg = id(&gw.create(&g("registries"), json!({"name": "m", "provider": "mock"})));
    crud(
        &gw,
        &g("roles"),
        json!({"name": "eng", "registry_ids": [reg]}),
        json!({"name": "eng2", "registries": [{"id": reg, "weight": 5}]}),
        json!({"name": "eng3"}),
        &[
            "id",
            "gateway_id",
            "name",
            "registry_ids",
            "registry_weights",
            "lb_config",
            "fallback",
            "model_policies",
            "created_at",
            "updated_at",
        ],
    );
    crud(
        &gw,
        &g("consumers"),
        json!({"name": "app", "registries": [{"id": reg, "weight": 3}]}),
        json!({"name": "app2", "registries": [{"id": reg, "weight": 7}], "headers": {"x-app": "2"}}),
        json!({"active": false}),
        &CONSUMER_FIELDS,
    );
}

#[test]
fn consumer_json_matches_seed_001() {
    let gw = Gateway::start();
    let gid = id(&gw.create("/v1/gateways", json!({"name": "g"})));
    let g = |c: &str| format!("/v1/gateways/{gid}/{c}");
    let r1 = id(&gw.create(&g("registries"), json!({"name": "r1", "provider": "mock"})));
    let r2 = id(&gw.create(&g("registries"), json!({"name": "r2", "provider": "mock"})));
    let role = id(&gw.create(&g("roles"), json!({"name": "dev", "registry_ids": [r1]})));
    let c = gw.create(
        &g("consumers"),
        json!({
            "name": "full", "type": "llm", "active": true, "routing_mode": "inline",
            "registries": [{"id": r1, "weight": 80, "model_policies": {"allowed": ["a", "b"], "default": "a"}},
                           {"id": r2, "weight": 20}],
            "lb_config": {"enabled": true, "algorithm": "weighted", "pool_alias": "smart",
                          "members": [{"registry_id": r1, "models": ["a"]}, {"registry_id": r2, "models": ["x"]}]},
            "fallback": {"enabled": true, "chain": [r2, r1], "triggers": ["5xx", "429", "timeout"],
                         "budget": {"max_attempts": 3, "max_total_latency_ms": 5000}},
            "model_policies": [{"registry_id": r2, "allowed": [], "default": "x"}],
            "headers": {"x-team": "ml"}, "roles": [role], "fail_mode": "closed"
        }),
    );
    assert_eq!(keys(&c), sorted(&CONSUMER_FIELDS));
    assert_eq!(c["registry_ids"], json!([r1, r2]));
    assert_eq!(
        c["registry_weights"],
        json!([{"registry_id": r1, "weight": 80}, {"registry_id": r2, "weight": 20}])
    );
    assert_eq!(
        c["model_policies"],
        json!([{"registry_id": r1, "allowed": ["a", "b"], "default": "a"},
               {"registry_id": r2, "allowed": [], "default": "x"}])
    );
    assert_eq!(c["role_ids"], json!([role]));
    assert_eq!(c["lb_config"]["pool_alias"], "smart");
    assert_eq!(c["fallback"]["chain"], json!([r2, r1]));
    assert_eq!(c["fallback"]["retry_same"], 1);
    let slug = c["slug"].as_str().unwrap();
    assert!(
        slug.len() >= 8 && slug.chars().all(|ch| ch.is_ascii_alphanumeric()),
        "{slug}"
    );

    // The response form can be PUT back unchanged.
    let (s, back) = gw.admin(
        "PUT",
        &format!("{}/{}", g("consumers"), id(&c)),
        Some(c.clone()),
    );
    assert_eq!(s, 200, "{back}");
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("updated_at");
        v
    };
    assert_eq!(strip(back), strip(c.clone()));

    // PATCH of the registry set keeps policies of registries that stay.
    let (s, p) = gw.admin(
        "PATCH",
        &format!("{}/{}", g("consumers"), id(&c)),
        Some(json!({"registries": [{"id": r1}]})),
    );
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        p["registry_weights"],
        json!([{"registry_id": r1, "weight": 1}])
    );
    assert_eq!(
        p["model_policies"],
        json!([{"registry_id": r1, "allowed": ["a", "b"], "default": "a"}])
    );
}

#[test]
fn attach_and_detach_every_sub_resource() {
    let gw = Gateway::start();
    let s = gw.seed_basic();
    let g = |c: &str| format!("/v1/gateways/{}/{c}", s.gid);
    let cpath = format!("{}/{}", g("consumers"), s.consumer_id);
    let reg2 = id(&gw.create(&g("registries"), json!({"name": "r2", "provider": "mock"})));
    let role = id(&gw.create(&g("roles"), json!({"name": "dev"})));
    let auth2 = id(&gw.create(&g("auths"), json!({"name": "k2", "type": "api_key"})));
    let pol = id(&gw.create(
        &g("policies"),
        json!({"name": "p", "type": "limits", "config": {"max_messages": 5}}),
    ));

    // registries: weight from the body, default 1, re-attach changes weight, PUT and POST both attach
    let (st, c) = gw.admin(
        "PUT",
        &format!("{cpath}/registries/{reg2}"),
        Some(json!({"weight": 40})),
    );
    assert_eq!(st, 200, "{c}");
    assert_eq!(
        c["registry_weights"][1],
        json!({"registry_id": reg2, "weight": 40})
    );
    let (st, c) = gw.admin(
        "POST",
        &format!("{cpath}/registries/{reg2}"),
        Some(json!({"weight": 60})),
    );
    assert_eq!(st, 200);
    assert_eq!(c["registry_weights"][1]["weight"], 60);
    assert_eq!(c["registry_ids"].as_array().unwrap().len(), 2);
    let (st, c) = gw.admin("DELETE", &format!("{cpath}/registries/{reg2}"), None);
    assert_eq!(st, 200);
    assert_eq!(c["registry_ids"], json!([s.registry_id]));
    let (st, c2) = gw.admin("DELETE", &format!("{cpath}/registries/{reg2}"), None);
    assert_eq!(
        (st, &c2["registry_ids"]),
        (200, &c["registry_ids"]),
        "detach is idempotent"
    );
    let (st, c) = gw.admin("PUT", &format!("{cpath}/registries/{reg2}"), None);
    assert_eq!(st, 200);
    assert_eq!(c["registry_weights"][1]["weight"], 1, "default weight");

    for (sub, target, field) in [
        ("roles", &role, "role_ids"),
        ("auths", &auth2, "auth_ids"),
        ("policies", &pol, "policy_ids"),
    ] {
        let (st, c) = gw.admin("PUT", &format!("{cpath}/{sub}/{target}"), None);
        assert_eq!(st, 200, "{sub}: {c}");
        assert!(
            c[field].as_array().unwrap().contains(&json!(target)),
            "{sub}: {c}"
        );
        let (st, again) = gw.admin("POST", &format!("{cpath}/{sub}/{target}"), None);
        assert_eq!(st, 200);
        assert_eq!(again[field], c[field], "attach is idempotent for {sub}");
        let (st, c) = gw.admin("DELETE", &format!("{cpath}/{sub}/{target}"), None);
        assert_eq!(st, 200);
        assert!(!c[field].as_array().unwrap().contains(&json!(target)));
    }
    // Unknown targets and sub-resources.
    let (st, e) = gw.admin(
        "PUT",
        &format!("{cpath}/roles/00000000-0000-0000-0000-000000000000"),
        None,
    );
    assert_eq!((st, e["error"]["code"].as_str()), (404, Some("not_found")));
    let (st, _) = gw.admin("PUT", &format!("{cpath}/widgets/{role}"), None);
    assert_eq!(st, 404);
}

#[test]
fn secrets_are_redacted_and_keys_shown_once() {
    let gw = Gateway::start();
    let gid = id(&gw.create("/v1/gateways", json!({"name": "g"})));
    let g = |c: &str| format!("/v1/gateways/{gid}/{c}");
    let reg = gw.create(
        &g("registries"),
        json!({"name": "oa", "provider": "openai", "base_url": "https://api.openai.com/v1",
               "auth": {"api_key": "sk-live-SECRET-abcdefgh1234"}}),
    );
    assert_eq!(reg["auth"]["api_key"], "****1234");
    let (_, got) = gw.admin("GET", &format!("{}/{}", g("registries"), id(&reg)), None);
    assert_eq!(got["auth"]["api_key"], "****1234");
    // Sending the redacted value back keeps the secret; the export (a backup) has it whole.
    let (st, _) = gw.admin(
        "PATCH",
        &format!("{}/{}", g("registries"), id(&reg)),
        Some(json!({"name": "oa2", "auth": {"api_key": "****1234"}})),
    );
    assert_eq!(st, 200);
    let export = gw.export();
    assert_eq!(
        export["registries"][0]["auth"]["api_key"],
        "sk-live-SECRET-abcdefgh1234"
    );

    let auth = gw.create(
        &g("auths"),
        json!({"name": "k", "type": "api_key", "key": "my-own-key-0123456789"}),
    );
    assert_eq!(auth["key"], "my-own-key-0123456789");
    assert_eq!(auth["key_prefix"], "my-own-k");
    let (_, got) = gw.admin("GET", &format!("{}/{}", g("auths"), id(&auth)), None);
    assert!(got.get("key").is_none(), "{got}");
    assert!(got.get("key_hash").is_none(), "{got}");
    let (_, list) = gw.admin("GET", &g("auths"), None);
    assert!(!list.to_string().contains("my-own-key-0123456789"));
    let jwt = gw.create(
        &g("auths"),
        json!({"name": "j", "type": "jwt", "jwt": {"issuer": "https://idp", "algorithms": ["HS256"], "secret": "hmac-secret-value-xyz9"}}),
    );
    assert_eq!(jwt["jwt"]["secret"], "****xyz9");
    let o = gw.create(
        &g("auths"),
        json!({"name": "o", "type": "oauth2", "oauth2": {"introspection_url": "https://idp/introspect", "client_id": "c", "client_secret": "client-secret-value-7777"}}),
    );
    assert_eq!(o["oauth2"]["client_secret"], "****7777");
    // The same key twice is a conflict.
    let (st, e) = gw.admin(
        "POST",
        &g("auths"),
        Some(json!({"name": "k2", "type": "api_key", "key": "my-own-key-0123456789"})),
    );
    assert_eq!((st, e["error"]["code"].as_str()), (409, Some("conflict")));
    // Nothing secret was logged.
    let logs = gw.logs();
    for secret in [
        "sk-live-SECRET-abcdefgh1234",
        "my-own-key-0123456789",
        "hmac-secret-value-xyz9",
        "client-secret-value-7777",
        ADMIN_TOKEN,
    ] {
        assert!(!logs.contains(secret), "secret {secret} in logs");
    }
}

/// Each bad request gets the SPEC's error and leaves the store exactly as it was.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let gw = Gateway::start();
    let s = gw.seed_basic();
    let gid = &s.gid;
    let g = |c: &str| format!("/v1/gateways/{gid}/{c}");
    let other = id(&gw.create("/v1/gateways", json!({"name": "other"})));
    let foreign_reg = id(&gw.create(
        &format!("/v1/gateways/{other}/registries"),
        json!({"name": "fr", "provider": "mock"}),
    ));
    let foreign_auth = id(&gw.create(
        &format!("/v1/gateways/{other}/auths"),
        json!({"name": "fa", "type": "api_key"}),
    ));
    let cpath = format!("{}/{}", g("consumers"), s.consumer_id);
    let before = gw.export();

    // (method, path, body, status, error code, field)
    type Case<'a> = (&'a str, String, Value, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "POST",
            g("consumers"),
            json!({"name": 5}),
            400,
            "validation_error",
            Some("name"),
        ),
        (
            "POST",
            g("consumers"),
            json!({"name": "x", "registries": [{"id": s.registry_id, "weight": 0}]}),
            400,
            "validation_error",
            Some("registries[0].weight"),
        ),
        (
            "POST",
            g("consumers"),
            json!({"name": "x", "registries": [{"id": s.registry_id, "weight": 101}]}),
            400,
            "validation_error",
            Some("registries[0].weight"),
        ),
        (
            "POST",
            g("consumers"),
            json!({"name": "x", "registries": [{"id": s.registry_id, "weight": "heavy"}]}),
            400,
            "validation_error",
            Some("registries[0].weight"),
        ),
        (
            "POST",
            g("consumers"),
            json!({"name": "x", "registries": [{"id": s.registry_id, "model_policies": {"allowed": ["a"], "default": "b"}}]}),
            400,
            "validation_error",
            Some("registries[0].model_policies.default"),
        ),
        (
            "POST",
            g("consumers"),
            json!({"name": "x", "model_policies": [{"registry_id": s.registry_id, "allowed": ["a"], "default": "b"}]}),
            400,
            "validation_error",
            Some("model_policies[0].default"),
        ),
        (
            "POST",
            g("consumers"),
            json!({"name": "x", "registries": [{"id": foreign_reg}]}),
            400,
            "validation_error",
            Some("registries[0].id"),
        ),
        (
            "POST",
            g("consumers"),
            json!({"name": "x", "auth_ids": [foreign_auth]}),
            400,
            "validation_error",
            Some("auth_ids[0]"),
        ),
        (
            "POST",
            g("consumers"),
            json!({"name": "x", "fallback": {"chain": [foreign_reg]}}),
            400,
            "validation_error",
            Some("fallback.chain[0]"),
        ),
        (
            "POST",
            g("consumers"),
            json!({"name": "x", "colour": "blue"}),
            400,
            "validation_error",
            None,
        ),
        (
            "POST",
            g("consumers"),
            json!({"name": "x", "lb_config": {"algorithm": "fastest"}}),
            400,
            "validation_error",
            Some("lb_config.algorithm"),
        ),
        (
            "POST",
            g("consumers"),
            json!({"name": "app"}),
            409,
            "conflict",
            None,
        ),
        (
            "POST",
            g("registries"),
            json!({"name": "mock", "provider": "mock"}),
            409,
            "conflict",
            None,
        ),
        (
            "POST",
            g("registries"),
            json!({"name": "r", "provider": "openai"}),
            400,
            "validation_error",
            Some("base_url"),
        ),
        (
            "POST",
            g("registries"),
            json!({"name": "r", "provider": "nope", "base_url": "http://x"}),
            400,
            "validation_error",
            Some("provider"),
        ),
        (
            "POST",
            g("registries"),
            json!({"name": "r", "provider": "openai", "base_url": "ftp://x"}),
            400,
            "validation_error",
            Some("base_url"),
        ),
        (
            "POST",
            g("policies"),
            json!({"name": "p", "type": "guardrail", "config": {"deny_patterns": ["(unclosed"]}}),
            400,
            "validation_error",
            Some("config.deny_patterns[0]"),
        ),
        (
            "POST",
            g("auths"),
            json!({"name": "j", "type": "jwt", "jwt": {"issuer": "i", "algorithms": ["none"], "secret": "s"}}),
            400,
            "validation_error",
            Some("jwt.algorithms[0]"),
        ),
        (
            "PUT",
            format!("{cpath}/registries/{}", s.registry_id),
            json!({"weight": 0}),
            400,
            "validation_error",
            Some("weight"),
        ),
        (
            "PUT",
            format!("{cpath}/registries/{foreign_reg}"),
            json!({"weight": 5}),
            400,
            "validation_error",
            Some("registry_id"),
        ),
        (
            "PUT",
            format!("{cpath}/auths/{foreign_auth}"),
            Value::Null,
            400,
            "validation_error",
            Some("auth_id"),
        ),
        (
            "PATCH",
            cpath.clone(),
            json!({"registries": [{"id": s.registry_id, "weight": 0}]}),
            400,
            "validation_error",
            Some("registries[0].weight"),
        ),
        (
            "PATCH",
            cpath.clone(),
            json!([1, 2]),
            400,
            "validation_error",
            None,
        ),
        (
            "DELETE",
            format!("{}/{}", g("registries"), s.registry_id),
            Value::Null,
            409,
            "conflict",
            None,
        ),
        (
            "DELETE",
            format!("{}/{}", g("auths"), s.auth_id),
            Value::Null,
            409,
            "conflict",
            None,
        ),
        (
            "DELETE",
            format!("/v1/gateways/{gid}"),
            Value::Null,
            409,
            "conflict",
            None,
        ),
        (
            "GET",
            format!("/v1/gateways/{other}/consumers/{}", s.consumer_id),
            Value::Null,
            404,
            "not_found",
            None,
        ),
        (
            "GET",
            "/v1/gateways/nope/consumers".to_string(),
            Value::Null,
            404,
            "not_found",
            None,
        ),
    ];
    for (method, path, body, status, code, field) in cases {
        let body = if body.is_null() { None } else { Some(body) };
        let (st, e) = gw.admin(method, &path, body.clone());
        assert_eq!(st, status, "{method} {path} {body:?}: {e}");
        assert_eq!(e["error"]["code"], code, "{method} {path}: {e}");
        assert!(e["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        if let Some(f) = field {
            assert_eq!(e["error"]["field"], f, "{method} {path}: {e}");
        }
    }
    // 409 on a registry still in use names the consumer.
    let (_, e) = gw.admin(
        "DELETE",
        &format!("{}/{}", g("registries"), s.registry_id),
        None,
    );
    assert!(
        e["error"]["message"].as_str().unwrap().contains("app"),
        "{e}"
    );

    // Malformed and non-UTF-8 bodies.
    for raw in [
        b"{\"name\": ".to_vec(),
        b"{\"name\": \"\xff\xfe\"}".to_vec(),
        b"not json".to_vec(),
    ] {
        let (st, e) = gw.admin_raw("POST", &g("consumers"), raw);
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (400, Some("invalid_json")),
            "{e}"
        );
    }
    // Missing and wrong admin tokens.
    let r = gw.http.get(gw.admin_url("/v1/gateways")).send().unwrap();
    assert_eq!(r.status(), 401);
    let r = gw
        .http
        .post(gw.admin_url(&g("consumers")))
        .bearer_auth("wrong")
        .json(&json!({"name": "zz"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "unauthorized");
    // An 11 MiB body.
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(11 * 1024 * 1024));
    let (st, e) = gw.admin_raw("POST", &g("consumers"), huge.into_bytes());
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );

    assert_eq!(gw.export(), before, "a refused request changed the store");
    // And the health/metrics endpoints need no token.
    assert_eq!(
        gw.http
            .get(gw.admin_url("/healthz"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        gw.http
            .get(gw.admin_url("/metrics"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn deleting_in_use_entities_is_refused_until_detached() {
    let gw = Gateway::start();
    let s = gw.seed_basic();
    let g = |c: &str| format!("/v1/gateways/{}/{c}", s.gid);
    let role = id(&gw.create(
        &g("roles"),
        json!({"name": "r", "registry_ids": [s.registry_id]}),
    ));
    let pol = id(&gw.create(
        &g("policies"),
        json!({"name": "p", "type": "limits", "config": {"max_messages": 1}}),
    ));
    let cpath = format!("{}/{}", g("consumers"), s.consumer_id);
    gw.admin("PUT", &format!("{cpath}/roles/{role}"), None);
    gw.admin("PUT", &format!("{cpath}/policies/{pol}"), None);
    for (coll, eid) in [("roles", &role), ("policies", &pol), ("auths", &s.auth_id)] {
        let (st, e) = gw.admin("DELETE", &format!("{}/{eid}", g(coll)), None);
        assert_eq!(st, 409, "{coll}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("app"));
    }
    // The registry is used by the consumer and by the role.
    gw.admin("DELETE", &cpath, None);
    let (st, e) = gw.admin(
        "DELETE",
        &format!("{}/{}", g("registries"), s.registry_id),
        None,
    );
    assert_eq!(st, 409);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("roles: r"),
        "{e}"
    );
    for (coll, eid) in [
        ("roles", &role),
        ("policies", &pol),
        ("auths", &s.auth_id),
        ("registries", &s.registry_id),
    ] {
        let (st, e) = gw.admin("DELETE", &format!("{}/{eid}", g(coll)), None);
        assert_eq!(st, 204, "{coll}: {e}");
    }
    let (st, _) = gw.admin("DELETE", &format!("/v1/gateways/{}", s.gid), None);
    assert_eq!(st, 204);
}

#[test]
fn export_then_import_is_identical_and_idempotent() {
    let gw = Gateway::start();
    let s = gw.seed_basic();
    let doc = gw.export();
    // Import into a fresh gateway process with an empty store.
    let fresh = Gateway::start();
    let (st, out) = fresh.admin("POST", "/v1/import", Some(doc.clone()));
    assert_eq!(st, 200, "{out}");
    assert_eq!(fresh.export(), doc);
    let (st, _) = fresh.admin("POST", "/v1/import", Some(doc.clone()));
    assert_eq!(st, 200);
    assert_eq!(fresh.export(), doc, "import is idempotent");
    // A document with one bad entity is refused whole.
    let mut bad = doc.clone();
    bad["gateways"][0]["id"] = json!("another-gateway-id");
    bad["gateways"][0]["name"] = json!("g2");
    bad["registries"][0]["gateway_id"] = json!("another-gateway-id");
    bad["registries"][0]["id"] = json!("new-registry");
    bad["consumers"][0]["registry_ids"] = json!(["missing"]);
    bad["consumers"][0]["registry_weights"] = json!([]);
    bad["consumers"][0]["model_policies"] = json!([]);
    let (st, e) = fresh.admin("POST", "/v1/import", Some(bad));
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["field"], "consumers[0].registry_ids[0]");
    assert_eq!(fresh.export(), doc, "a refused import wrote nothing");
    drop(s);
}
