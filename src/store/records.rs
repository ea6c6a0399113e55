//! Where the model keeps a kind's records: in memory, or in sled and read on demand.
//!
//! API-key auths live in sled only. A gateway may hold as many of them as it has consumers,
//! and nothing on the request path reads them (the snapshot compiles each key into its
//! consumer); at 100,000 keys their parsed records held ~65 MiB for admin requests alone.
//! The model still indexes them (names, key hashes), so uniqueness checks need no scan.

use super::journal::Op;
use crate::entities::{EntitySpec, Record};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;

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
    recent: Recent<S>,
}

impl<S: EntitySpec> Default for Disk<S> {
    fn default() -> Self {
        Disk {
            tree: None,
            prefix: super::collection_prefix(S::KIND),
            pending: BTreeMap::new(),
            scratch: false,
            recent: Recent::default(),
        }
    }
}

/// How many decoded records `Recent` keeps.
const RECENT: usize = 8;

/// The last records `Disk::get` decoded, each with the stored bytes it came from.
///
/// One admin write reads the record it changes several times (to find it, to check that its
/// name and slug are its own, to replace it) and the records it refers to once each, and
/// every read inflated and parsed the same bytes again: ~50k instructions a read, half of a
/// consumer PATCH's work. A hit needs its bytes to equal what sled holds now, so whoever
/// wrote sled, a hit is what parsing those bytes would give; the memo holds a few records,
/// however large the store.
struct Recent<S>(Mutex<Slots<S>>);

struct Slots<S> {
    slots: Vec<(sled::IVec, Record<S>)>,
    next: usize,
}

impl<S> Default for Recent<S> {
    fn default() -> Self {
        Recent(Mutex::new(Slots {
            slots: Vec::new(),
            next: 0,
        }))
    }
}

/// A copy starts empty (a scratch model has its own).
impl<S> Clone for Recent<S> {
    fn clone(&self) -> Self {
        Recent::default()
    }
}

impl<S: EntitySpec> Recent<S> {
    /// The record stored as `bytes`, decoded once for as long as it stays among the recent.
    fn parse(&self, id: &[u8], bytes: sled::IVec) -> Option<Record<S>> {
        // Only the store's lock holder reads; a busy memo is passed by, never waited for.
        let Ok(mut memo) = self.0.try_lock() else {
            return Disk::parse(id, &bytes);
        };
        if let Some((_, r)) = memo.slots.iter().find(|(b, _)| *b == bytes) {
            return Some(r.clone());
        }
        let record = Disk::<S>::parse(id, &bytes)?;
        memo.keep(bytes, record.clone());
        Some(record)
    }
}

impl<S> Slots<S> {
    /// Keeps `record` as what `bytes` decode to, in place of the oldest kept.
    fn keep(&mut self, bytes: sled::IVec, record: Record<S>) {
        if self.slots.len() < RECENT {
            self.slots.push((bytes, record));
        } else {
            self.slots[self.next] = (bytes, record);
            self.next = (self.next + 1) % RECENT;
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
            Ok(v) => v.and_then(|v| self.recent.parse(id.as_bytes(), v).map(Cow::Owned)),
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

    /// Forgets the pending writes of a commit that sled now holds. `written` is that commit:
    /// its last records are kept decoded, as the bytes sled will return for them, so the
    /// next read of a record just written (the next write to a consumer starts with one) is
    /// not decoded back. One pass over the commit, however large (an import is one commit).
    pub fn settle(&mut self, written: &[Op]) {
        if self.keeps_records() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        let memo = self.recent.0.get_mut().unwrap_or_else(|e| e.into_inner());
        let mut kept = 0;
        for op in written.iter().rev() {
            let Op::Insert(key, bytes) = op else { continue };
            let id = key.strip_prefix(self.prefix.as_bytes());
            let Some(id) = id.and_then(|id| std::str::from_utf8(id).ok()) else {
                continue;
            };
            if let Some(Some(record)) = pending.remove(id) {
                memo.keep(sled::IVec::from(bytes.as_slice()), record);
                kept += 1;
                if kept == RECENT {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::gateway::GatewaySpec;
    use crate::entities::Meta;

    fn gateway(id: &str, name: &str) -> Record<GatewaySpec> {
        Record {
            meta: Meta {
                id: id.into(),
                gateway_id: None,
                slug: None,
                created_at: String::new(),
                updated_at: String::new(),
            },
            spec: GatewaySpec {
                name: name.into(),
                active: true,
            },
        }
    }

    fn store(tree: &sled::Tree, disk: &Disk<GatewaySpec>, r: &Record<GatewaySpec>) {
        let json = serde_json::to_vec(r).unwrap();
        let key = format!("{}{}", disk.prefix, r.meta.id);
        tree.insert(key, super::super::codec::encode(&json))
            .unwrap();
    }

    fn memo_len(disk: &Disk<GatewaySpec>) -> usize {
        disk.recent.0.lock().unwrap().slots.len()
    }

    #[test]
    fn a_record_read_again_is_not_decoded_again_and_a_changed_one_is() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let disk = Disk::<GatewaySpec>::on(tree.clone());
        store(&tree, &disk, &gateway("g1", "one"));
        store(&tree, &disk, &gateway("g2", "two"));

        assert_eq!(disk.get("g1").unwrap().spec.name, "one");
        assert_eq!(memo_len(&disk), 1);
        assert_eq!(disk.get("g1").unwrap().spec.name, "one");
        assert_eq!(
            memo_len(&disk),
            1,
            "the second read is served from the memo"
        );
        assert_eq!(disk.get("g2").unwrap().spec.name, "two");
        assert_eq!(memo_len(&disk), 2);

        // Written to sled behind the model's back: the memo must not answer with the old.
        store(&tree, &disk, &gateway("g1", "renamed"));
        assert_eq!(disk.get("g1").unwrap().spec.name, "renamed");
        tree.remove(format!("{}g2", disk.prefix)).unwrap();
        assert!(disk.get("g2").is_none());
        assert!(disk.get("nope").is_none());

        // However many records pass through, the memo keeps RECENT.
        for i in 0..3 * RECENT {
            let id = format!("x{i}");
            store(&tree, &disk, &gateway(&id, &id));
            assert_eq!(disk.get(&id).unwrap().spec.name, id);
        }
        assert_eq!(memo_len(&disk), RECENT);
        assert_eq!(memo_len(&disk.scratch()), 0, "a copy starts empty");
    }

    #[test]
    fn a_settled_write_is_read_back_without_decoding() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let mut disk = Disk::<GatewaySpec>::on(tree.clone());
        let r = gateway("g1", "one");
        disk.put("g1".into(), r.clone());
        // What the store's commit does: the same bytes go to sled and to `settle`.
        let key = format!("{}g1", disk.prefix).into_bytes();
        let bytes = super::super::codec::encode(&serde_json::to_vec(&r).unwrap());
        tree.insert(&key, bytes.clone()).unwrap();
        disk.settle(&[Op::Insert(key, bytes)]);
        assert_eq!(disk.held(), 0);
        assert_eq!(memo_len(&disk), 1, "the settled record is kept decoded");
        assert_eq!(disk.get("g1").unwrap().into_owned(), r);
        assert_eq!(memo_len(&disk), 1, "and read back from the memo");
    }

    /// An import is one commit of every record: `settle` keeps its last few, in one pass.
    #[test]
    fn a_large_commit_leaves_its_last_records_decoded() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let mut disk = Disk::<GatewaySpec>::on(tree.clone());
        let mut ops = Vec::new();
        for i in 0..3 * RECENT {
            let r = gateway(&format!("g{i}"), "n");
            disk.put(r.meta.id.clone(), r.clone());
            let key = format!("{}{}", disk.prefix, r.meta.id).into_bytes();
            let bytes = super::super::codec::encode(&serde_json::to_vec(&r).unwrap());
            tree.insert(&key, bytes.clone()).unwrap();
            ops.push(Op::Insert(key, bytes));
        }
        ops.push(Op::Remove(b"e/other/x".to_vec()));
        disk.settle(&ops);
        assert_eq!(disk.held(), 0);
        assert_eq!(memo_len(&disk), RECENT);
        let last = format!("g{}", 3 * RECENT - 1);
        assert!(disk.get(&last).is_some());
        assert_eq!(memo_len(&disk), RECENT, "the last record written is a hit");
        let memo = disk.recent.0.lock().unwrap();
        let first_kept = format!("g{}", 2 * RECENT);
        assert!(memo.slots.iter().any(|(_, r)| r.meta.id == first_kept));
        assert!(!memo.slots.iter().any(|(_, r)| r.meta.id == "g0"));
    }
}
