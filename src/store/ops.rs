//! The operations of the admin API, over any entity kind: create, get, list, replace, patch,
//! delete, consumer attach/detach, export and import. Each write is one `Store::write`.

use super::{Change, IndexKey, Model, Store};
use crate::entities::consumer::generate_slug;
use crate::entities::registry::Provider;
use crate::entities::routing::check_weight;
use crate::entities::{
    merge_patch, new_id, now_rfc3339, strip_read_only, AuthSpec, ConsumerSpec, Ctx, Entity,
    EntitySpec, FromInput, GatewaySpec, Kind, Meta, PolicySpec, Record, RegistrySpec, RoleSpec,
};
use crate::error::ApiError;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// Resolves the gateway a request is scoped to: `None` for the gateway collection itself.
fn gateway_scope<'a>(m: &Model, gid: Option<&'a str>) -> Result<&'a str, ApiError> {
    match gid {
        None => Ok(""),
        Some(g) if m.gateways.contains_key(g) => Ok(g),
        Some(g) => Err(ApiError::not_found(format!("gateway `{g}` not found"))),
    }
}

fn find<'m, S: EntitySpec>(
    m: &'m Model,
    gid: Option<&str>,
    id: &str,
) -> Result<Cow<'m, Record<S>>, ApiError> {
    gateway_scope(m, gid)?;
    S::stored(m)
        .get(id)
        .filter(|r| gid.is_none() || r.meta.gateway_id.as_deref() == gid)
        .ok_or_else(|| ApiError::not_found(format!("{} `{id}` not found", S::KIND.singular())))
}

/// 409 if another entity owns one of this entity's index keys.
fn check_unique(m: &Model, entity: &Entity) -> Result<(), ApiError> {
    let id = &entity.meta().id;
    for key in Model::index_keys(entity) {
        if m.owner(&key).is_some_and(|owner| owner != id) {
            return Err(ApiError::conflict(match key {
                IndexKey::Name(kind, _, name) => match kind {
                    Kind::Gateway => format!("a gateway named `{name}` already exists"),
                    _ => format!(
                        "a {} named `{name}` already exists in this gateway",
                        kind.singular()
                    ),
                },
                IndexKey::Slug(s) => format!("slug `{s}` is already in use"),
                IndexKey::KeyHash(_) => "this API key is already in use".to_string(),
            }));
        }
    }
    Ok(())
}

fn unique_slug(m: &Model) -> String {
    loop {
        let slug = generate_slug();
        if m.owner(&IndexKey::Slug(slug.clone())).is_none() {
            return slug;
        }
    }
}

pub fn get<S: EntitySpec>(store: &Store, gid: Option<&str>, id: &str) -> Result<Value, ApiError> {
    store.read(|m| find::<S>(m, gid, id).map(|r| r.to_json(true)))
}

pub fn list<S: EntitySpec>(store: &Store, gid: Option<&str>) -> Result<Value, ApiError> {
    store.read(|m| {
        gateway_scope(m, gid)?;
        let items: Vec<Value> = S::stored(m)
            .iter()
            .filter(|r| gid.is_none() || r.meta.gateway_id.as_deref() == gid)
            .map(|r| r.to_json(true))
            .collect();
        Ok(json!({ "items": items }))
    })
}

pub fn create<S: FromInput>(
    store: &Store,
    gid: Option<&str>,
    mut body: Value,
) -> Result<Value, ApiError> {
    strip_read_only(&mut body);
    store.write(|m| {
        let scope = gateway_scope(m, gid)?;
        let spec = S::from_input(
            body,
            &Ctx {
                model: m,
                gateway_id: scope,
            },
            None,
        )?;
        let now = now_rfc3339();
        let meta = Meta {
            id: new_id(),
            gateway_id: gid.map(str::to_string),
            slug: (S::KIND == Kind::Consumer).then(|| unique_slug(m)),
            created_at: now.clone(),
            updated_at: now,
        };
        let record = Record { meta, spec };
        let out = record.to_json(true);
        let entity = S::wrap(record);
        check_unique(m, &entity)?;
        Ok((vec![Change::Put(entity)], out))
    })
}

/// PUT (`patch == false`: `body` is the whole entity) or PATCH (`body` merges into it).
pub fn update<S: FromInput>(
    store: &Store,
    gid: Option<&str>,
    id: &str,
    mut body: Value,
    patch: bool,
) -> Result<Value, ApiError> {
    strip_read_only(&mut body);
    if patch && !body.is_object() {
        return Err(ApiError::validation(
            "",
            "a PATCH body is a JSON object of the fields to change",
        ));
    }
    store.write(|m| {
        let previous = find::<S>(m, gid, id)?;
        let scope = gateway_scope(m, gid)?;
        let input = if patch {
            let mut base = Value::Object(previous.spec.patch_base(&body));
            merge_patch(&mut base, &body);
            base
        } else {
            body
        };
        let spec = S::from_input(
            input,
            &Ctx {
                model: m,
                gateway_id: scope,
            },
            Some(&previous.spec),
        )?;
        let mut meta = previous.meta.clone();
        meta.updated_at = now_rfc3339();
        let record = Record { meta, spec };
        let out = record.to_json(true);
        let entity = S::wrap(record);
        check_unique(m, &entity)?;
        Ok((vec![Change::Put(entity)], out))
    })
}

pub fn delete<S: EntitySpec>(store: &Store, gid: Option<&str>, id: &str) -> Result<(), ApiError> {
    store.write(|m| {
        find::<S>(m, gid, id)?;
        match S::KIND {
            Kind::Gateway => {
                fn children<S: EntitySpec>(m: &Model, gid: &str) -> usize {
                    S::stored(m)
                        .iter()
                        .filter(|r| r.meta.gateway_id() == gid)
                        .count()
                }
                let children = children::<RegistrySpec>(m, id)
                    + children::<AuthSpec>(m, id)
                    + children::<RoleSpec>(m, id)
                    + children::<PolicySpec>(m, id)
                    + children::<ConsumerSpec>(m, id);
                if children > 0 {
                    return Err(ApiError::conflict(format!(
                        "gateway still holds {children} entities; delete them first"
                    )));
                }
            }
            Kind::Consumer => {}
            kind => {
                let users = m.consumers_referencing(kind, id);
                if !users.is_empty() {
                    return Err(ApiError::conflict(format!(
                        "{} is still used by consumers: {}",
                        kind.singular(),
                        users.join(", ")
                    )));
                }
                if kind == Kind::Registry {
                    let roles: Vec<String> = m
                        .roles
                        .values()
                        .filter(|r| r.spec.routing.references(id))
                        .map(|r| r.spec.name.clone())
                        .collect();
                    if !roles.is_empty() {
                        return Err(ApiError::conflict(format!(
                            "registry is still used by roles: {}",
                            roles.join(", ")
                        )));
                    }
                }
            }
        }
        Ok((vec![Change::Delete(S::KIND, id.to_string())], ()))
    })
}

/// Attach (`attach == true`) or detach an entity to/from a consumer; both idempotent.
pub fn attachment(
    store: &Store,
    gid: &str,
    consumer_id: &str,
    kind: Kind,
    target_id: &str,
    attach: bool,
    body: Value,
) -> Result<Value, ApiError> {
    let weight = if kind == Kind::Registry && attach {
        match &body {
            Value::Null => 1,
            Value::Object(o) => {
                if let Some(k) = o.keys().find(|k| k.as_str() != "weight") {
                    return Err(ApiError::validation(
                        k.as_str(),
                        "unknown field; expected `weight`",
                    ));
                }
                match o.get("weight") {
                    None => 1,
                    Some(w) => match w.as_i64() {
                        Some(w) => check_weight(w, "weight")?,
                        None => {
                            return Err(ApiError::validation("weight", "must be an integer 1..100"))
                        }
                    },
                }
            }
            _ => {
                return Err(ApiError::validation(
                    "",
                    "the body is `{\"weight\": 1..100}`",
                ))
            }
        }
    } else {
        1
    };
    store.write(|m| {
        let consumer = find::<ConsumerSpec>(m, Some(gid), consumer_id)?;
        if attach {
            if !m.contains(kind, target_id) {
                return Err(ApiError::not_found(format!(
                    "{} `{target_id}` not found",
                    kind.singular()
                )));
            }
            let ctx = Ctx {
                model: m,
                gateway_id: gid,
            };
            match kind {
                Kind::Registry => {
                    let r = ctx.lookup::<RegistrySpec>(target_id, "registry_id")?;
                    if r.spec.provider == Provider::Mcp {
                        return Err(ApiError::validation(
                            "registry_id",
                            "an mcp registry serves a consumer's toolkit, not model routing",
                        ));
                    }
                }
                Kind::Role => drop(ctx.lookup::<RoleSpec>(target_id, "role_id")?),
                Kind::Auth => drop(ctx.lookup::<AuthSpec>(target_id, "auth_id")?),
                Kind::Policy => drop(ctx.lookup::<PolicySpec>(target_id, "policy_id")?),
                _ => return Err(ApiError::not_found("no such sub-resource")),
            }
        }
        let mut record = consumer.clone().into_owned();
        let spec = &mut record.spec;
        let list = match kind {
            Kind::Registry => {
                if attach {
                    spec.routing.attach(target_id, weight);
                } else {
                    spec.routing.detach(target_id);
                }
                None
            }
            Kind::Role => Some(&mut spec.role_ids),
            Kind::Auth => Some(&mut spec.auth_ids),
            Kind::Policy => Some(&mut spec.policy_ids),
            _ => return Err(ApiError::not_found("no such sub-resource")),
        };
        if let Some(list) = list {
            let present = list.iter().any(|x| x == target_id);
            if attach && !present {
                list.push(target_id.to_string());
            } else if !attach {
                list.retain(|x| x != target_id);
            }
        }
        if record == *consumer {
            return Ok((vec![], record.to_json(true)));
        }
        record.meta.updated_at = now_rfc3339();
        let out = record.to_json(true);
        Ok((vec![Change::Put(Entity::Consumer(record))], out))
    })
}

/// Every entity as one JSON document, secrets included (it is a backup).
pub fn export(store: &Store) -> Value {
    store.read(|m| {
        let mut doc = Map::new();
        doc.insert("version".into(), json!(1));
        doc.insert("exported_at".into(), json!(now_rfc3339()));
        for kind in Kind::ALL {
            doc.insert(kind.collection().into(), Value::Array(vec![]));
        }
        for e in m.entities() {
            if let Some(Value::Array(items)) = doc.get_mut(e.kind().collection()) {
                items.push(e.to_json(false));
            }
        }
        Value::Object(doc)
    })
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn import_meta(item: &Map<String, Value>, kind: Kind) -> Result<Meta, ApiError> {
    let text = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_string);
    let id = text("id").filter(|s| valid_token(s)).ok_or_else(|| {
        ApiError::validation(
            "id",
            "must be a string of letters, digits, `-` or `_` (at most 64)",
        )
    })?;
    let stamp = |k: &str| -> Result<String, ApiError> {
        match text(k) {
            None => Ok(now_rfc3339()),
            Some(t) => chrono::DateTime::parse_from_rfc3339(&t)
                .map(|_| t)
                .map_err(|_| ApiError::validation(k, "must be an RFC 3339 timestamp")),
        }
    };
    let gateway_id = match kind {
        Kind::Gateway => None,
        _ => Some(
            text("gateway_id").ok_or_else(|| ApiError::validation("gateway_id", "is required"))?,
        ),
    };
    let slug = match kind {
        Kind::Consumer => Some(match text("slug") {
            Some(s) if valid_token(&s) => s,
            Some(_) => {
                return Err(ApiError::validation(
                    "slug",
                    "must be letters, digits, `-` or `_`",
                ))
            }
            None => return Err(ApiError::validation("slug", "is required")),
        }),
        _ => None,
    };
    Ok(Meta {
        id,
        gateway_id,
        slug,
        created_at: stamp("created_at")?,
        updated_at: stamp("updated_at")?,
    })
}

fn import_one<S: FromInput>(m: &Model, item: Value) -> Result<Entity, ApiError> {
    let Value::Object(map) = item else {
        return Err(ApiError::validation("", "each entity is a JSON object"));
    };
    let meta = import_meta(&map, S::KIND)?;
    if S::KIND != Kind::Gateway && !m.gateways.contains_key(meta.gateway_id()) {
        return Err(ApiError::validation(
            "gateway_id",
            "names no gateway in the store or the document",
        ));
    }
    if let Some(other) = m.get(S::KIND, &meta.id) {
        if other.meta().gateway_id != meta.gateway_id {
            return Err(ApiError::validation(
                "gateway_id",
                "an entity cannot move to another gateway",
            ));
        }
    }
    let previous = S::stored(m).get(&meta.id);
    let previous = previous.as_ref().map(|r| &r.spec);
    let is_api_key = map.get("type").and_then(Value::as_str) == Some("api_key");
    if is_api_key && previous.is_none() && !map.contains_key("key_hash") && !map.contains_key("key")
    {
        // Import carries key hashes: a key generated here would be shown to no one.
        return Err(ApiError::validation(
            "key_hash",
            "an imported api_key auth needs its key_hash",
        ));
    }
    let mut body = Value::Object(map);
    strip_read_only(&mut body);
    let scope = if S::KIND == Kind::Gateway {
        ""
    } else {
        meta.gateway_id()
    };
    let spec = S::from_input(
        body,
        &Ctx {
            model: m,
            gateway_id: scope,
        },
        previous,
    )?;
    let entity = S::wrap(Record { meta, spec });
    check_unique(m, &entity)?;
    Ok(entity)
}

/// Upserts every entity of an export document, keeping ids, slugs and key hashes. Checked whole
/// before anything is written; the first invalid entity refuses the import.
pub fn import(store: &Store, doc: Value) -> Result<Value, ApiError> {
    let Value::Object(mut doc) = doc else {
        return Err(ApiError::validation(
            "",
            "an import is a JSON object of entity lists",
        ));
    };
    if let Some(k) = doc.keys().find(|k| {
        !matches!(k.as_str(), "version" | "exported_at") && Kind::from_collection(k).is_none()
    }) {
        return Err(ApiError::validation(k.as_str(), "unknown collection"));
    }
    store.write(|m| {
        let mut scratch = m.scratch();
        let mut changes = Vec::new();
        let mut counts = Map::new();
        for kind in Kind::ALL {
            let items = match doc.remove(kind.collection()) {
                None | Some(Value::Null) => vec![],
                Some(Value::Array(a)) => a,
                Some(_) => return Err(ApiError::validation(kind.collection(), "must be a list")),
            };
            counts.insert(kind.collection().into(), json!(items.len()));
            let mut seen = std::collections::HashSet::new();
            for (i, item) in items.into_iter().enumerate() {
                let at = format!("{}[{i}]", kind.collection());
                let entity = match kind {
                    Kind::Gateway => import_one::<GatewaySpec>(&scratch, item),
                    Kind::Registry => import_one::<RegistrySpec>(&scratch, item),
                    Kind::Auth => import_one::<AuthSpec>(&scratch, item),
                    Kind::Policy => import_one::<PolicySpec>(&scratch, item),
                    Kind::Role => import_one::<RoleSpec>(&scratch, item),
                    Kind::Consumer => import_one::<ConsumerSpec>(&scratch, item),
                }
                .map_err(|e| e.within(&at))?;
                if !seen.insert(entity.meta().id.clone()) {
                    return Err(ApiError::validation(
                        format!("{at}.id"),
                        "appears twice in the document",
                    ));
                }
                scratch.apply(Change::Put(entity.clone()));
                changes.push(Change::Put(entity));
            }
        }
        Ok((changes, json!({ "imported": counts })))
    })
}
