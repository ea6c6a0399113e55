//! Which consumers refer to an entity: the reverse of their references. Consumers live in
//! sled, so this is how a 409 and a write's recompile find them without reading them all.
//!
//! Keyed by a hash of (kind, id): a collision can only add a consumer that does not refer to
//! the entity, which a 409 rules out by reading it and a recompile merely repeats.

use crate::entities::{ConsumerSpec, Kind};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Who {
    /// Most references (an API key's) have one consumer.
    One(Arc<str>),
    /// Boxed: a set is three times the size of `One`, and most slots hold `One`.
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<Arc<str>>>),
}

#[derive(Debug, Default, Clone)]
pub struct Users {
    hasher: RandomState,
    by_ref: HashMap<u64, Who>,
}

impl Users {
    fn hash(&self, kind: Kind, id: &str) -> u64 {
        self.hasher.hash_one((kind, id))
    }

    /// `who` is the consumer's id as the model shares it (see `Model`'s index).
    pub fn add(&mut self, who: &Arc<str>, spec: &ConsumerSpec) {
        for (kind, id) in spec.referenced() {
            let h = self.hash(kind, id);
            match self.by_ref.get_mut(&h) {
                None => drop(self.by_ref.insert(h, Who::One(who.clone()))),
                Some(Who::Many(set)) => drop(set.insert(who.clone())),
                Some(Who::One(other)) if other == who => {}
                Some(Who::One(other)) => {
                    let set = Box::new(HashSet::from([other.clone(), who.clone()]));
                    self.by_ref.insert(h, Who::Many(set));
                }
            }
        }
    }

    pub fn remove(&mut self, consumer: &str, spec: &ConsumerSpec) {
        for (kind, id) in spec.referenced() {
            let h = self.hash(kind, id);
            let empty = match self.by_ref.get_mut(&h) {
                Some(Who::One(c)) => &**c == consumer,
                Some(Who::Many(set)) => {
                    set.remove(consumer);
                    set.is_empty()
                }
                None => false,
            };
            if empty {
                self.by_ref.remove(&h);
            }
        }
    }

    /// Every consumer that refers to `(kind, id)`, and on a hash collision perhaps others.
    pub fn of(&self, kind: Kind, id: &str) -> Vec<Arc<str>> {
        match self.by_ref.get(&self.hash(kind, id)) {
            None => vec![],
            Some(Who::One(c)) => vec![c.clone()],
            Some(Who::Many(set)) => set.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(registries: &[&str], auths: &[&str]) -> ConsumerSpec {
        let mut v = serde_json::json!({
            "name": "c", "type": "llm", "active": true, "routing_mode": "inline",
            "routing": {"registries": []}, "headers": {}, "role_ids": [],
            "auth_ids": auths, "policy_ids": [], "toolkit": [], "fail_mode": "closed"
        });
        for r in registries {
            let w = serde_json::json!({"registry_id": r, "weight": 1});
            v["routing"]["registries"].as_array_mut().unwrap().push(w);
        }
        serde_json::from_value(v).unwrap()
    }

    fn of(u: &Users, kind: Kind, id: &str) -> Vec<String> {
        let mut v: Vec<String> = u.of(kind, id).iter().map(|c| c.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn each_reference_lists_the_consumers_that_hold_it() {
        let mut u = Users::default();
        let (a, b) = (spec(&["r1", "r2"], &["k1"]), spec(&["r1"], &["k2"]));
        u.add(&"c1".into(), &a);
        u.add(&"c2".into(), &b);
        assert_eq!(of(&u, Kind::Registry, "r1"), ["c1", "c2"]);
        assert_eq!(of(&u, Kind::Registry, "r2"), ["c1"]);
        assert_eq!(of(&u, Kind::Auth, "k2"), ["c2"]);
        assert!(
            of(&u, Kind::Auth, "r1").is_empty(),
            "a reference is per kind"
        );
        // c1 re-routed: r2 dropped, r3 added; c2 untouched.
        let a2 = spec(&["r1", "r3"], &["k1"]);
        u.remove("c1", &a);
        u.add(&"c1".into(), &a2);
        assert_eq!(of(&u, Kind::Registry, "r1"), ["c1", "c2"]);
        assert!(of(&u, Kind::Registry, "r2").is_empty());
        assert_eq!(of(&u, Kind::Registry, "r3"), ["c1"]);
        u.remove("c2", &b);
        assert_eq!(of(&u, Kind::Registry, "r1"), ["c1"]);
        assert!(of(&u, Kind::Auth, "k2").is_empty());
        u.remove("c1", &a2);
        assert!(u.by_ref.is_empty(), "{:?}", u.by_ref);
    }
}
