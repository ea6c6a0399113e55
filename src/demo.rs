//! The demo seed: on an empty store with `demo: true` (or `switchyard run` without a config),
//! a gateway, a `mock` registry, an API key and a consumer, so the printed curl works at once.
//! The demo key is kept in `<data_dir>/demo.key` (0600) so the curl can be printed every start.

use crate::admin::token::write_private;
use crate::config::Config;
use crate::entities::{AuthSpec, ConsumerSpec, GatewaySpec, RegistrySpec};
use crate::error::ApiError;
use crate::store::{ops, Store};
use serde_json::{json, Value};

pub struct Demo {
    pub slug: String,
    pub key: String,
}

fn field(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Seeds the demo entities into an empty store; returns the demo consumer when there is one.
pub fn seed(store: &Store, config: &Config) -> Result<Option<Demo>, ApiError> {
    let key_path = config.data_dir.join("demo.key");
    let empty = store.read(|m| m.gateways.is_empty());
    if empty {
        let gw = ops::create::<GatewaySpec>(store, None, json!({"name": "demo"}))?;
        let gid = field(&gw, "id");
        let g = Some(gid.as_str());
        let reg = ops::create::<RegistrySpec>(
            store,
            g,
            json!({
            "name": "mock", "provider": "mock", "models": ["mock-1", "mock-embed"]}),
        )?;
        let auth =
            ops::create::<AuthSpec>(store, g, json!({"name": "demo-key", "type": "api_key"}))?;
        let consumer = ops::create::<ConsumerSpec>(
            store,
            g,
            json!({
            "name": "demo",
            "registries": [{"id": field(&reg, "id"), "weight": 1,
                            "model_policies": {"allowed": [], "default": "mock-1"}}],
            "auth_ids": [field(&auth, "id")]}),
        )?;
        let key = field(&auth, "key");
        write_private(&key_path, key.as_bytes())
            .map_err(|e| ApiError::internal(format!("cannot write {}: {e}", key_path.display())))?;
        return Ok(Some(Demo {
            slug: field(&consumer, "slug"),
            key,
        }));
    }
    let Ok(key) = std::fs::read_to_string(&key_path) else {
        return Ok(None);
    };
    let slug = store.read(|m| {
        m.gateways
            .values()
            .find(|g| g.spec.name == "demo")
            .and_then(|g| {
                let id = m.id_by_name(crate::entities::Kind::Consumer, &g.meta.id, "demo")?;
                m.consumers.get(id)?.meta.slug.clone()
            })
    });
    Ok(slug.map(|slug| Demo {
        slug,
        key: key.trim().to_string(),
    }))
}

/// The lines printed at start so a person can try the gateway at once.
pub fn banner(demo: &Demo, config: &Config) -> String {
    let proxy = config
        .proxy
        .listen
        .first()
        .map(|a| a.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]"))
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    format!(
        "switchyard demo consumer ready. Try:\n\n  curl -s http://{proxy}/{slug}/v1/chat/completions \\\n    -H 'Authorization: Bearer {key}' -H 'content-type: application/json' \\\n    -d '{{\"model\": \"mock-1\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello, switchyard\"}}]}}'\n",
        slug = demo.slug,
        key = demo.key,
    )
}
