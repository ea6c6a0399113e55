//! Where the model keeps a kind's records: in memory, or in sled and read on demand.
//!
//! API-key auths live in sled only. A gateway may hold as many of them as it has consumers,
//! and nothing on the request path reads them (the snapshot compiles each key into its
//! consumer); at 100,000 keys their parsed records held ~65 MiB for admin requests alone.
//! The model still indexes them (names, key hashes), so uniqueness checks need no scan.

use crate::entities::{EntitySpec, Record};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A kind's records, as the model's readers see them.
pub enum Stored<'m, S> {
    Memory(&'m BTreeMap<String, Record<S>>),
    Disk(&'m Disk<S>),
}

impl<'m, S: EntitySpec> Stored<'m, S> {
    pub fn get(&self, id: &str) -> Option<Cow<'m, Record<S>>> {
        match *self {
            Stored::Memory(map) => map.get(id).map(Cow::Borrowed),
            Stored::Disk(disk) => disk.get(id),
        }
    }

    /// Every record, by id.
    pub fn iter(&self) -> Box<dyn Iterator<Item = Cow<'m, Record<S>>> + 'm> {
        match *self {
            Stored::Memory(map) => Box::new(map.values().map(Cow::Borrowed)),
            Stored::Disk(disk) => Box::new(disk.iter()),
        }
    }
}

/// Records kept in sled (under `e/{collection}/{id}`, the store's own layout).
///
/// `pending` holds what this model has put (`Some`) or deleted (`None`) that sled may not
/// have: during a commit, until `settle` once sled has it; in a scratch model, which never
/// writes sled (an import's dry run); and in a model with no tree (unit tests).
#[derive(Clone)]
pub struct Disk<S> {
    tree: Option<sled::Tree>,
    prefix: String,
    pending: BTreeMap<String, Option<Record<S>>>,
    scratch: bool,
}

impl<S: EntitySpec> Default for Disk<S> {
    fn default() -> Self {
        Disk {
            tree: None,
            prefix: super::collection_prefix(S::KIND),
            pending: BTreeMap::new(),
            scratch: false,
        }
    }
}

impl<S> std::fmt::Debug for Disk<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("prefix", &self.prefix)
            .field("pending", &self.pending.len())
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

impl<S: EntitySpec> Disk<S> {
    pub fn on(tree: sled::Tree) -> Self {
        Disk {
            tree: Some(tree),
            ..Disk::default()
        }
    }

    /// A copy whose writes stay in memory.
    pub fn scratch(&self) -> Self {
        Disk {
            scratch: true,
            ..self.clone()
        }
    }

    fn parse(id: &[u8], bytes: &[u8]) -> Option<Record<S>> {
        let parsed = super::codec::decode(bytes)
            .and_then(|json| serde_json::from_slice(&json).map_err(|e| e.to_string()));
        match parsed {
            Ok(r) => Some(r),
            Err(e) => {
                // Every record was parsed when the store opened; this is a disk gone bad.
                let id = String::from_utf8_lossy(id);
                tracing::error!(kind = S::KIND.singular(), %id, error = %e, "unreadable record in the store");
                None
            }
        }
    }

    fn read_error(e: sled::Error) {
        tracing::error!(kind = S::KIND.singular(), error = %e, "cannot read the store");
    }

    pub fn get(&self, id: &str) -> Option<Cow<'_, Record<S>>> {
        if let Some(r) = self.pending.get(id) {
            return r.as_ref().map(Cow::Borrowed);
        }
        let key = format!("{}{id}", self.prefix);
        match self.tree.as_ref()?.get(key.as_bytes()) {
            Ok(v) => v.and_then(|v| Self::parse(id.as_bytes(), &v).map(Cow::Owned)),
            Err(e) => {
                Self::read_error(e);
                None
            }
        }
    }

    /// Every record: sled's (in id order) overlaid with the pending ones.
    pub fn iter(&self) -> impl Iterator<Item = Cow<'_, Record<S>>> + '_ {
        let stored = self
            .tree
            .iter()
            .flat_map(|t| super::scan(t, self.prefix.as_bytes()))
            .filter_map(|item| item.map_err(Self::read_error).ok())
            .filter_map(|(k, v)| {
                let id = &k[self.prefix.len()..];
                let shadowed =
                    std::str::from_utf8(id).is_ok_and(|id| self.pending.contains_key(id));
                (!shadowed).then(|| Self::parse(id, &v)).flatten()
            })
            .map(Cow::Owned);
        let pending = self
            .pending
            .values()
            .filter_map(|r| r.as_ref().map(Cow::Borrowed));
        stored.chain(pending)
    }

    pub fn put(&mut self, id: String, record: Record<S>) {
        self.pending.insert(id, Some(record));
    }

    pub fn delete(&mut self, id: &str) {
        if self.tree.is_some() {
            self.pending.insert(id.to_string(), None);
        } else {
            self.pending.remove(id);
        }
    }

    /// A record read from sled at open: kept only by a model with no sled to read it back from.
    pub fn loaded(&mut self, id: String, record: Record<S>) {
        if self.keeps_records() {
            self.put(id, record);
        }
    }

    /// Whether a put record is kept here (no tree to hold it) rather than only until the
    /// commit reaches sled.
    fn keeps_records(&self) -> bool {
        self.tree.is_none() || self.scratch
    }

    /// How many records this model holds in memory.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Forgets the pending writes of a commit that sled now holds.
    pub fn settle(&mut self) {
        if !self.keeps_records() {
            self.pending.clear();
        }
    }
}
