//! The in-memory mirror of the store: every entity by id, plus the indexes that writes check
//! (names per gateway, slugs, API-key hashes). Only the store's writer mutates it.

use crate::entities::{
    by_kind, AuthSpec, ConsumerSpec, Entity, EntitySpec, GatewaySpec, Kind, Meta, PolicySpec,
    Record, RegistrySpec, RoleSpec,
};
use std::collections::{BTreeMap, HashMap};

/// One mutation of the store.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Change {
    Put(Entity),
    Delete(Kind, String),
}

/// A secondary key an entity owns. Each maps to the entity's id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IndexKey {
    /// (kind, gateway id or "" for gateways, name)
    Name(Kind, String, String),
    Slug(String),
    KeyHash(String),
}

#[derive(Debug, Default, Clone)]
pub struct Model {
    pub gateways: BTreeMap<String, Record<GatewaySpec>>,
    pub registries: BTreeMap<String, Record<RegistrySpec>>,
    pub auths: BTreeMap<String, Record<AuthSpec>>,
    pub roles: BTreeMap<String, Record<RoleSpec>>,
    pub policies: BTreeMap<String, Record<PolicySpec>>,
    pub consumers: BTreeMap<String, Record<ConsumerSpec>>,
    index: HashMap<IndexKey, String>,
}

impl Model {
    /// The index keys an entity owns.
    pub fn index_keys(entity: &Entity) -> Vec<IndexKey> {
        let meta = entity.meta();
        let gid = match entity.kind() {
            Kind::Gateway => String::new(),
            _ => meta.gateway_id().to_string(),
        };
        let mut keys = vec![IndexKey::Name(
            entity.kind(),
            gid,
            entity.name().to_string(),
        )];
        if let Some(slug) = &meta.slug {
            keys.push(IndexKey::Slug(slug.clone()));
        }
        if let Entity::Auth(a) = entity {
            if let Some(h) = &a.spec.key_hash {
                keys.push(IndexKey::KeyHash(h.clone()));
            }
        }
        keys
    }

    /// The id that owns an index key, if any.
    pub fn owner(&self, key: &IndexKey) -> Option<&str> {
        self.index.get(key).map(String::as_str)
    }

    pub fn id_by_name(&self, kind: Kind, gateway_id: &str, name: &str) -> Option<&str> {
        let gid = if kind == Kind::Gateway {
            ""
        } else {
            gateway_id
        };
        self.owner(&IndexKey::Name(kind, gid.to_string(), name.to_string()))
    }

    pub fn get(&self, kind: Kind, id: &str) -> Option<Entity> {
        fn one<S: EntitySpec>(m: &Model, id: &str) -> Option<Entity> {
            S::records(m).get(id).cloned().map(S::wrap)
        }
        by_kind!(kind, one(self, id))
    }

    /// An entity's id, gateway and slug, without copying the entity.
    pub fn meta(&self, kind: Kind, id: &str) -> Option<&Meta> {
        fn one<'m, S: EntitySpec>(m: &'m Model, id: &str) -> Option<&'m Meta> {
            S::records(m).get(id).map(|r| &r.meta)
        }
        by_kind!(kind, one(self, id))
    }

    /// How many entities the model holds.
    pub fn count(&self) -> usize {
        self.gateways.len()
            + self.registries.len()
            + self.auths.len()
            + self.roles.len()
            + self.policies.len()
            + self.consumers.len()
    }

    pub fn contains(&self, kind: Kind, id: &str) -> bool {
        self.meta(kind, id).is_some()
    }

    /// Applies a change to the maps and the indexes.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Put(mut entity) => {
                if let Entity::Auth(a) = &mut entity {
                    // A new key is shown once, in the write's response; it is never kept.
                    a.spec.new_key = None;
                }
                let (kind, id) = (entity.kind(), entity.meta().id.clone());
                self.unindex(kind, &id);
                for k in Model::index_keys(&entity) {
                    self.index.insert(k, id.clone());
                }
                match entity {
                    Entity::Gateway(r) => drop(self.gateways.insert(id, r)),
                    Entity::Registry(r) => drop(self.registries.insert(id, r)),
                    Entity::Auth(r) => drop(self.auths.insert(id, r)),
                    Entity::Role(r) => drop(self.roles.insert(id, r)),
                    Entity::Policy(r) => drop(self.policies.insert(id, r)),
                    Entity::Consumer(r) => drop(self.consumers.insert(id, r)),
                }
            }
            Change::Delete(kind, id) => {
                self.unindex(kind, &id);
                match kind {
                    Kind::Gateway => drop(self.gateways.remove(&id)),
                    Kind::Registry => drop(self.registries.remove(&id)),
                    Kind::Auth => drop(self.auths.remove(&id)),
                    Kind::Role => drop(self.roles.remove(&id)),
                    Kind::Policy => drop(self.policies.remove(&id)),
                    Kind::Consumer => drop(self.consumers.remove(&id)),
                }
            }
        }
    }

    fn unindex(&mut self, kind: Kind, id: &str) {
        if let Some(old) = self.get(kind, id) {
            for k in Model::index_keys(&old) {
                if self.index.get(&k).is_some_and(|owner| owner == id) {
                    self.index.remove(&k);
                }
            }
        }
    }

    /// Whether the indexes are exactly those of the entities.
    pub fn verify_indexes(&self) -> Result<(), String> {
        let mut expected = HashMap::new();
        for e in self.entities() {
            for k in Model::index_keys(&e) {
                if let Some(other) = expected.insert(k.clone(), e.meta().id.clone()) {
                    return Err(format!("{k:?} owned by {other} and {}", e.meta().id));
                }
            }
        }
        if expected != self.index {
            return Err(format!(
                "index mismatch: {} expected, {} found",
                expected.len(),
                self.index.len()
            ));
        }
        Ok(())
    }

    /// Names of the consumers (of one gateway) that refer to an entity; for 409s.
    pub fn consumers_referencing(&self, kind: Kind, id: &str) -> Vec<String> {
        self.consumers
            .values()
            .filter(|c| c.spec.references(kind, id))
            .map(|c| c.spec.name.clone())
            .collect()
    }

    /// Every entity, in dependency order.
    pub fn entities(&self) -> impl Iterator<Item = Entity> + '_ {
        fn all<S: EntitySpec>(m: &Model) -> impl Iterator<Item = Entity> + '_ {
            S::records(m).values().cloned().map(S::wrap)
        }
        all::<GatewaySpec>(self)
            .chain(all::<RegistrySpec>(self))
            .chain(all::<AuthSpec>(self))
            .chain(all::<PolicySpec>(self))
            .chain(all::<RoleSpec>(self))
            .chain(all::<ConsumerSpec>(self))
    }
}
