//! What admin requests read and writes validate against: every entity by id (API-key auths
//! through sled, see `records`), plus the indexes that writes check (names per gateway,
//! slugs, API-key hashes). Only the store's writer mutates it.

use super::journal::Op;
use super::records::Disk;
use super::users::Users;
use crate::entities::{
    by_kind, AuthSpec, ConsumerSpec, Entity, EntitySpec, GatewaySpec, Kind, Meta, PolicySpec,
    Record, RegistrySpec, RoleSpec,
};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

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

impl IndexKey {
    /// The name key of an entity of `kind` in gateway `gateway_id` (gateways' names are global).
    pub fn name(kind: Kind, gateway_id: &str, name: &str) -> IndexKey {
        let gid = match kind {
            Kind::Gateway => "",
            _ => gateway_id,
        };
        IndexKey::Name(kind, gid.to_string(), name.to_string())
    }
}

#[derive(Debug, Default, Clone)]
pub struct Model {
    pub gateways: BTreeMap<String, Record<GatewaySpec>>,
    pub registries: BTreeMap<String, Record<RegistrySpec>>,
    pub auths: Disk<AuthSpec>,
    pub roles: BTreeMap<String, Record<RoleSpec>>,
    pub policies: BTreeMap<String, Record<PolicySpec>>,
    pub consumers: Disk<ConsumerSpec>,
    index: Index,
    users: Users,
}

/// The index keys' owners, by a keyed 64-bit hash of the key: a key's strings are not kept
/// (at 100,000 consumers and as many API keys, keeping them cost ~65 MiB). A hit is confirmed
/// against the owner's record, so two keys with one hash cannot be confused: the second one
/// goes to `collided`, whole.
#[derive(Debug, Default, Clone)]
struct Index {
    hasher: RandomState,
    /// Owners are shared: one `Arc` per entity, for all its keys and the reverse index.
    by_hash: HashMap<u64, Arc<str>>,
    collided: HashMap<IndexKey, Arc<str>>,
    /// Tests: every key hashes alike, so that every key after the first collides.
    #[cfg(test)]
    collide_all: bool,
}

impl Index {
    fn len(&self) -> usize {
        self.by_hash.len() + self.collided.len()
    }

    fn hash(&self, key: &IndexKey) -> u64 {
        #[cfg(test)]
        if self.collide_all {
            return 0;
        }
        self.hasher.hash_one(key)
    }
}

impl Model {
    /// An empty model whose auths live in `tree`.
    pub fn on(tree: sled::Tree) -> Model {
        Model {
            auths: Disk::on(tree.clone()),
            consumers: Disk::on(tree),
            ..Model::default()
        }
    }

    /// A copy to try writes on: what it is given stays in memory, never reaching sled.
    pub fn scratch(&self) -> Model {
        Model {
            auths: self.auths.scratch(),
            consumers: self.consumers.scratch(),
            ..self.clone()
        }
    }

    /// Forgets what the last commit (`written`) put in memory only until sled had it.
    pub fn settle(&mut self, written: &[Op]) {
        self.auths.settle(written);
        self.consumers.settle(written);
    }

    /// The index keys an entity owns.
    pub fn index_keys(entity: &Entity) -> Vec<IndexKey> {
        let meta = entity.meta();
        let mut keys = vec![IndexKey::name(
            entity.kind(),
            meta.gateway_id(),
            entity.name(),
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
        let h = self.index.hash(key);
        match self.index.by_hash.get(&h) {
            Some(id) if self.owns(id, key) => Some(id),
            _ => self.index.collided.get(key).map(|id| &**id),
        }
    }

    /// The id of the entity of `kind` named `name` in `meta`'s gateway, as the shared `Arc`
    /// its index keys hold, so that what is compiled from the record holds no copy of its own
    /// (at 100,000 consumers and as many keys, copies cost ~11 MiB). A new `Arc` if the
    /// model does not hold the entity (yet).
    pub fn shared_id(&self, kind: Kind, meta: &Meta, name: &str) -> Arc<str> {
        let key = IndexKey::name(kind, meta.gateway_id(), name);
        self.index
            .by_hash
            .get(&self.index.hash(&key))
            .into_iter()
            .chain(self.index.collided.get(&key))
            .find(|owner| ***owner == *meta.id)
            .cloned()
            .unwrap_or_else(|| Arc::from(meta.id.as_str()))
    }

    /// Whether the entity `id` has the index key `key` (in the maps as they are now).
    fn owns(&self, id: &str, key: &IndexKey) -> bool {
        fn named<S: EntitySpec>(m: &Model, id: &str, gid: &str, name: &str) -> bool {
            S::stored(m).get(id).is_some_and(|r| {
                r.spec.name() == name && (S::KIND == Kind::Gateway || r.meta.gateway_id() == gid)
            })
        }
        match key {
            IndexKey::Name(kind, gid, name) => by_kind!(*kind, named(self, id, gid, name)),
            IndexKey::Slug(slug) => self
                .consumers
                .get(id)
                .is_some_and(|c| c.meta.slug.as_deref() == Some(slug)),
            IndexKey::KeyHash(hash) => self
                .auths
                .get(id)
                .is_some_and(|a| a.spec.key_hash.as_deref() == Some(hash)),
        }
    }

    /// Makes `id` the owner of `key`. Called before the entity's record is in the maps.
    fn index_insert(&mut self, key: IndexKey, id: &Arc<str>) {
        let h = self.index.hash(&key);
        match self.index.by_hash.get(&h) {
            Some(other) if other != id && !self.owns(other, &key) => {
                self.index.collided.insert(key, id.clone());
            }
            _ => drop(self.index.by_hash.insert(h, id.clone())),
        }
    }

    fn index_remove(&mut self, key: &IndexKey, id: &str) {
        if self.index.collided.get(key).is_some_and(|o| &**o == id) {
            self.index.collided.remove(key);
            return;
        }
        let h = self.index.hash(key);
        if self.index.by_hash.get(&h).is_some_and(|o| &**o == id) {
            self.index.by_hash.remove(&h);
        }
    }

    pub fn id_by_name(&self, kind: Kind, gateway_id: &str, name: &str) -> Option<&str> {
        self.owner(&IndexKey::name(kind, gateway_id, name))
    }

    pub fn get(&self, kind: Kind, id: &str) -> Option<Entity> {
        fn one<S: EntitySpec>(m: &Model, id: &str) -> Option<Entity> {
            S::stored(m).get(id).map(|r| S::wrap(r.into_owned()))
        }
        by_kind!(kind, one(self, id))
    }

    /// An entity's id, gateway and slug, without copying an in-memory entity.
    pub fn meta(&self, kind: Kind, id: &str) -> Option<Cow<'_, Meta>> {
        fn one<'m, S: EntitySpec>(m: &'m Model, id: &str) -> Option<Cow<'m, Meta>> {
            S::stored(m).get(id).map(|r| match r {
                Cow::Borrowed(r) => Cow::Borrowed(&r.meta),
                Cow::Owned(r) => Cow::Owned(r.meta),
            })
        }
        by_kind!(kind, one(self, id))
    }

    pub fn contains(&self, kind: Kind, id: &str) -> bool {
        self.meta(kind, id).is_some()
    }

    /// Applies a change to the maps and the indexes; returns the entity it replaced or
    /// deleted, if any.
    pub fn apply(&mut self, change: Change) -> Option<Entity> {
        let (kind, id) = match &change {
            Change::Put(e) => (e.kind(), e.meta().id.clone()),
            Change::Delete(kind, id) => (*kind, id.clone()),
        };
        let old = self.get(kind, &id);
        if let Some(old) = &old {
            self.forget(old, &id);
        }
        match change {
            Change::Put(mut entity) => {
                Model::prepare(&mut entity);
                let owner: Arc<str> = Arc::from(id.as_str());
                for k in Model::index_keys(&entity) {
                    self.index_insert(k, &owner);
                }
                if let Entity::Consumer(c) = &entity {
                    self.users.add(&owner, &c.spec);
                }
                self.insert_record(id, entity);
            }
            Change::Delete(kind, id) => match kind {
                Kind::Gateway => drop(self.gateways.remove(&id)),
                Kind::Registry => drop(self.registries.remove(&id)),
                Kind::Auth => self.auths.delete(&id),
                Kind::Role => drop(self.roles.remove(&id)),
                Kind::Policy => drop(self.policies.remove(&id)),
                Kind::Consumer => self.consumers.delete(&id),
            },
        }
        old
    }

    /// Drops what the indexes hold of an entity being replaced or deleted.
    fn forget(&mut self, old: &Entity, id: &str) {
        for k in Model::index_keys(old) {
            self.index_remove(&k, id);
        }
        if let Entity::Consumer(c) = old {
            self.users.remove(id, &c.spec);
        }
    }

    /// Adds entities read from the store at open, none of which the model holds yet.
    ///
    /// Each batch is merged into the maps with `BTreeMap::append`, which rebuilds a map with
    /// full nodes. Inserting records one by one in key order, as they come from sled, leaves
    /// every node a third empty: ~55 MiB of a model with 100,000 consumers and keys.
    /// `owner` is the entity's id, shared with what the load compiles from it (see `shared_id`).
    pub fn load(&mut self, entities: Vec<(Arc<str>, Entity)>) {
        let mut batch = Model::default();
        let mut keys = Vec::with_capacity(entities.len());
        for (owner, mut entity) in entities {
            Model::prepare(&mut entity);
            let id = entity.meta().id.clone();
            keys.push((Model::index_keys(&entity), owner.clone()));
            match entity {
                Entity::Auth(a) => self.auths.loaded(id, a),
                Entity::Consumer(c) => {
                    self.users.add(&owner, &c.spec);
                    self.consumers.loaded(id, c);
                }
                other => batch.insert_record(id, other),
            }
        }
        self.gateways.append(&mut batch.gateways);
        self.registries.append(&mut batch.registries);
        self.roles.append(&mut batch.roles);
        self.policies.append(&mut batch.policies);
        for (entity_keys, owner) in keys {
            for k in entity_keys {
                self.index_insert(k, &owner);
            }
        }
    }

    /// What an entity sheds before the model keeps it.
    fn prepare(entity: &mut Entity) {
        match entity {
            // A new key is shown once, in the write's response; it is never kept.
            Entity::Auth(a) => a.spec.new_key = None,
            Entity::Consumer(c) => c.spec.shrink_to_fit(),
            _ => {}
        }
    }

    fn insert_record(&mut self, id: String, entity: Entity) {
        match entity {
            Entity::Gateway(r) => drop(self.gateways.insert(id, r)),
            Entity::Registry(r) => drop(self.registries.insert(id, r)),
            Entity::Auth(r) => self.auths.put(id, r),
            Entity::Role(r) => drop(self.roles.insert(id, r)),
            Entity::Policy(r) => drop(self.policies.insert(id, r)),
            Entity::Consumer(r) => self.consumers.put(id, r),
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
        if let Some((k, id)) = expected
            .iter()
            .find(|(k, id)| self.owner(k) != Some(id.as_str()))
        {
            return Err(format!(
                "{k:?} should be owned by {id}, not {:?}",
                self.owner(k)
            ));
        }
        if expected.len() != self.index.len() {
            return Err(format!(
                "index mismatch: {} expected, {} found",
                expected.len(),
                self.index.len()
            ));
        }
        Ok(())
    }

    /// Names of the consumers that refer to an entity, sorted; for 409s.
    pub fn consumers_referencing(&self, kind: Kind, id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .users
            .of(kind, id)
            .iter()
            .filter_map(|c| self.consumers.get(c))
            .filter(|c| c.spec.references(kind, id))
            .map(|c| c.spec.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Ids of the consumers that refer to an entity (and, rarely, a few that do not: see
    /// `users`); for recompiling what a write affects.
    pub fn consumers_using(&self, kind: Kind, id: &str) -> Vec<Arc<str>> {
        self.users.of(kind, id)
    }

    /// Every entity, in dependency order.
    pub fn entities(&self) -> impl Iterator<Item = Entity> + '_ {
        fn all<S: EntitySpec>(m: &Model) -> impl Iterator<Item = Entity> + '_ {
            S::stored(m).iter().map(|r| S::wrap(r.into_owned()))
        }
        all::<GatewaySpec>(self)
            .chain(all::<RegistrySpec>(self))
            .chain(all::<AuthSpec>(self))
            .chain(all::<PolicySpec>(self))
            .chain(all::<RoleSpec>(self))
            .chain(all::<ConsumerSpec>(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::auth::AuthType;
    use crate::entities::consumer::{ConsumerType, FailMode, RoutingMode};
    use crate::entities::Meta;

    fn meta(id: &str, gateway: Option<&str>, slug: Option<&str>) -> Meta {
        Meta {
            id: id.into(),
            gateway_id: gateway.map(str::to_string),
            slug: slug.map(str::to_string),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn consumer(id: &str, name: &str, slug: &str) -> Entity {
        let spec = ConsumerSpec {
            name: name.into(),
            kind: ConsumerType::default(),
            active: true,
            routing_mode: RoutingMode::default(),
            routing: Default::default(),
            headers: Default::default(),
            role_ids: vec![],
            auth_ids: vec![],
            policy_ids: vec![],
            toolkit: vec![],
            fail_mode: FailMode::default(),
        };
        Entity::Consumer(Record {
            meta: meta(id, Some("g"), Some(slug)),
            spec,
        })
    }
    fn key(id: &str, name: &str, hash: &str) -> Entity {
        let spec = AuthSpec {
            name: name.into(),
            kind: AuthType::ApiKey,
            active: true,
            expires_at: None,
            key_hash: Some(hash.into()),
            key_prefix: None,
            jwt: None,
            oauth2: None,
            new_key: None,
        };
        Entity::Auth(Record {
            meta: meta(id, Some("g"), None),
            spec,
        })
    }

    /// Every index key shares one hash: each lookup must still find its own owner, and no
    /// removal may drop another key's entry.
    #[test]
    fn keys_with_one_hash_keep_their_own_owners() {
        let mut m = Model::default();
        m.index.collide_all = true;
        let gateway = GatewaySpec {
            name: "g".into(),
            active: true,
        };
        m.apply(Change::Put(Entity::Gateway(Record {
            meta: meta("g", None, None),
            spec: gateway,
        })));
        m.apply(Change::Put(consumer("c1", "alice", "s1")));
        m.apply(Change::Put(consumer("c2", "bob", "s2")));
        m.apply(Change::Put(key("a1", "k1", "h1")));
        m.verify_indexes().unwrap();
        let name = |n: &str| IndexKey::Name(Kind::Consumer, "g".into(), n.into());
        assert_eq!(m.owner(&name("alice")), Some("c1"));
        assert_eq!(m.owner(&name("bob")), Some("c2"));
        assert_eq!(m.owner(&IndexKey::Slug("s2".into())), Some("c2"));
        assert_eq!(m.owner(&IndexKey::KeyHash("h1".into())), Some("a1"));
        assert_eq!(m.owner(&name("carol")), None);
        assert_eq!(m.owner(&IndexKey::Slug("s3".into())), None);
        assert_eq!(
            m.owner(&IndexKey::Name(Kind::Auth, "g".into(), "alice".into())),
            None,
            "a name is per kind"
        );
        // Renaming the consumer that holds the hash's own slot must not lose the others.
        m.apply(Change::Put(consumer("c1", "alice2", "s1")));
        m.verify_indexes().unwrap();
        assert_eq!(m.owner(&name("alice")), None);
        assert_eq!(m.owner(&name("alice2")), Some("c1"));
        assert_eq!(m.owner(&name("bob")), Some("c2"));
        m.apply(Change::Delete(Kind::Consumer, "c2".into()));
        m.verify_indexes().unwrap();
        assert_eq!(m.owner(&name("bob")), None);
        assert_eq!(m.owner(&IndexKey::Slug("s2".into())), None);
        assert_eq!(m.owner(&IndexKey::Slug("s1".into())), Some("c1"));
        assert_eq!(m.owner(&IndexKey::KeyHash("h1".into())), Some("a1"));
        m.apply(Change::Delete(Kind::Auth, "a1".into()));
        m.apply(Change::Delete(Kind::Consumer, "c1".into()));
        m.verify_indexes().unwrap();
        assert_eq!(m.index.len(), 1, "only the gateway's name is left");
    }
}
