//! The sled store: durable entities, their indexes, and the compiled snapshot the proxy reads.
//!
//! Layout (one sled tree, `switchyard`, in `<data_dir>/store`):
//! - `meta/schema` → the layout's version
//! - `e/{kind}/{id}` → the entity record: JSON, zstd-compressed since schema 3 (`codec`)
//!
//! plus `<data_dir>/store/journal`, the commits since sled last persisted (see `journal`).
//!
//! The indexes (names per gateway, slugs, API-key hashes) live in the in-memory `Model` only,
//! rebuilt from the records at open. Schema 1 also kept them in sled, which tripled the keys
//! (and the log to replay at start) for data that was never read back; opening a schema-1
//! store removes them.
//!
//! Writes are serialised by one writer lock. Under it a write validates against the `Model`,
//! writes every record it touches to the `journal` as one commit, applies the change to the
//! model (which reads what it replaces, in sled for auths and consumers), applies the same
//! keys to sled and publishes a patched `Snapshot`; then,
//! outside the lock, it waits until the journal has the commit on disk (one sync serves every
//! writer waiting). So a write is durable and visible to the proxy before its response is
//! sent, concurrent writers end in a serial order, and the snapshot is always that of the last
//! commit.

mod codec;
mod journal;
mod model;
pub mod ops;
mod records;
mod users;

pub use model::{Change, IndexKey, Model};
pub use records::Stored;

use journal::{Journal, Op};

use crate::config::UpstreamDefaults;
use crate::entities::{Entity, Kind};
use crate::error::ApiError;
use crate::snapshot::{CompiledAuths, Compiler, Snapshot, Touched};
use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// 3: records are compressed (schema 2's plain ones still read; an older build refuses the
/// store by its version instead of failing on the first compressed record).
const SCHEMA_VERSION: &[u8] = b"3";
/// sled's page cache (its default is 1 GiB). Nothing on the request path reads sled: `load`
/// scans it once and writes touch a few leaves, so a small cache costs no speed (importing
/// 100,000 consumers took as long with 2 MiB as with 8), and at 100,000 consumers the
/// default one held ~150 MiB for nothing. sled counts a node's serialized size, about half
/// of what it takes in memory.
const SLED_CACHE_BYTES: u64 = 2 << 20;
/// How often sled's own flusher thread wakes (its default is 500 ms). Durability does not
/// depend on it: a write is durable through the journal, and a checkpoint flushes sled
/// itself. The thread also cleans sled's segments, and on a large store sled 0.34 keeps
/// rewriting pages there without end: an idle gateway with 100,000 consumers wrote ~1.1 MB/s
/// (95 GB a day) through that thread at the default, ~45 KB/s at 10 s. 2,000 admin writes
/// left the store the same size either way (2.8 MiB against 2.9).
const SLED_FLUSH_EVERY_MS: u64 = 10_000;
/// Key prefixes of schema 1's sled-side indexes.
const V1_INDEX_PREFIXES: [&str; 3] = ["n/", "s/", "k/"];

pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    state: Mutex<State>,
    /// Waits for a commit's journal sync, outside the writer lock.
    sync: Arc<journal::GroupSync>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    defaults: UpstreamDefaults,
}

/// What the writer lock guards.
struct State {
    model: Model,
    journal: Journal,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the store in {dir}: {source}")]
    Sled { dir: String, source: sled::Error },
    #[error("the store in {dir} is corrupt: {message}")]
    Corrupt { dir: String, message: String },
    #[error("cannot use the store journal in {dir}: {source}")]
    Journal { dir: String, source: std::io::Error },
}

/// Applies one commit to sled, key by key. Not as a `sled::Batch`: sled 0.34 rolls its IO
/// buffer around every batch, handing two writes to its threadpool. Atomicity does not need
/// it: nothing reads sled but `load`, and `load` runs after the journal has replayed every
/// commit since the last checkpoint, whole.
fn apply_ops(tree: &sled::Tree, ops: &[Op]) -> Result<(), sled::Error> {
    for op in ops {
        match op {
            Op::Insert(k, v) => drop(tree.insert(k.as_slice(), v.as_slice())?),
            Op::Remove(k) => drop(tree.remove(k.as_slice())?),
        }
    }
    Ok(())
}

/// Where a kind's records start: `e/{collection}/`.
fn collection_prefix(kind: Kind) -> String {
    format!("e/{}/", kind.collection())
}

fn entity_key(kind: Kind, id: &str) -> Vec<u8> {
    (collection_prefix(kind) + id).into_bytes()
}

enum LoadError {
    Sled(sled::Error),
    Corrupt(String),
}

/// Records per hand-off between the loading stages.
const LOAD_CHUNK: usize = 256;

/// A prefix scan that keeps sled's cache to its bound. sled 0.34 queues page accesses per
/// shard (256 shards, 64 accesses each) and evicts only when a queue fills. A scan counts one
/// access per leaf, too few to fill them, so every leaf it read stayed in memory whatever the
/// cache's size: ~27 MiB at 100,000 consumers after the open, and again after each write that
/// reads every consumer. A point read of each key (its leaf is in memory) counts ~16 more
/// accesses per leaf, and the bound holds.
fn scan<'t>(
    tree: &'t sled::Tree,
    prefix: &[u8],
) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + 't {
    tree.scan_prefix(prefix).map(move |item| {
        let (k, v) = item?;
        tree.contains_key(&k)?;
        Ok((k, v))
    })
}

// `load` compiles consumers as they pass, against everything scanned before them.
const _: () = assert!(matches!(Kind::ALL[Kind::ALL.len() - 1], Kind::Consumer));

/// Reads every record into a model and compiles the snapshot: one thread scans sled, one
/// parses JSON, this one applies and compiles, chunk by chunk, so the three overlap (at
/// 100,000 consumers each takes ~0.6 s alone). Records come in scan order: kinds in
/// dependency order (`Kind::ALL`), then by id. The model keeps neither auths nor consumers
/// (sled does), so both are compiled as they pass: consumers are scanned last, once
/// everything they refer to is in.
///
/// Returns the model, how many records there are, and the snapshot.
fn load(
    tree: &sled::Tree,
    defaults: &UpstreamDefaults,
) -> Result<(Model, usize, Snapshot), LoadError> {
    type Raw = Vec<(Kind, sled::IVec, sled::IVec)>;
    std::thread::scope(|s| {
        let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<Raw>(1);
        let (parsed_tx, parsed_rx) = std::sync::mpsc::sync_channel(1);
        let scanner = s.spawn(move || -> Result<(), sled::Error> {
            let mut chunk = Vec::with_capacity(LOAD_CHUNK);
            for kind in Kind::ALL {
                let prefix = collection_prefix(kind);
                for item in scan(tree, prefix.as_bytes()) {
                    let (k, v) = item?;
                    chunk.push((kind, k, v));
                    if chunk.len() == LOAD_CHUNK {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(LOAD_CHUNK));
                        if raw_tx.send(full).is_err() {
                            return Ok(()); // the parser stopped on a corrupt record
                        }
                    }
                }
            }
            let _ = raw_tx.send(chunk);
            Ok(())
        });
        s.spawn(move || {
            for chunk in raw_rx {
                let parsed = chunk
                    .iter()
                    .map(|(kind, k, v)| {
                        codec::decode(v)
                            .and_then(|json| {
                                Entity::from_bytes(*kind, &json).map_err(|e| e.to_string())
                            })
                            .map_err(|e| format!("{}: {e}", String::from_utf8_lossy(k)))
                    })
                    .collect::<Result<Vec<_>, String>>();
                let failed = parsed.is_err();
                if parsed_tx.send(parsed).is_err() || failed {
                    return;
                }
            }
        });
        let mut model = Model::on(tree.clone());
        let mut count = 0;
        let mut auths = CompiledAuths::default();
        let mut compiler: Option<Compiler> = None;
        for parsed in parsed_rx {
            let parsed = parsed.map_err(LoadError::Corrupt)?;
            count += parsed.len();
            // One id per entity, shared by the model's indexes and the snapshot.
            let (consumers, others): (Vec<_>, Vec<_>) = parsed
                .into_iter()
                .map(|e| (Arc::<str>::from(e.meta().id.as_str()), e))
                .partition(|(_, e)| e.kind() == Kind::Consumer);
            if !others.is_empty() {
                for (id, entity) in &others {
                    if let Entity::Auth(a) = entity {
                        auths.add(a, id.clone());
                    }
                }
                model.load(others);
            }
            if !consumers.is_empty() {
                let compiler = compiler.get_or_insert_with(|| {
                    Compiler::new(&model, defaults, std::mem::take(&mut auths))
                });
                for (id, entity) in &consumers {
                    if let Entity::Consumer(c) = entity {
                        compiler.consumer(c, id.clone());
                    }
                }
                model.load(consumers);
            }
        }
        scanner
            .join()
            .map_err(|_| LoadError::Corrupt("the store scanner panicked".into()))?
            .map_err(LoadError::Sled)?;
        let snapshot = compiler
            .unwrap_or_else(|| Compiler::new(&model, defaults, auths))
            .finish();
        Ok((model, count, snapshot))
    })
}

/// Removes schema 1's index records in one batch and marks the store with the current schema.
fn migrate_v1(tree: &sled::Tree) -> Result<(), sled::Error> {
    let mut batch = sled::Batch::default();
    for prefix in V1_INDEX_PREFIXES {
        for key in tree.scan_prefix(prefix).keys() {
            batch.remove(key?);
        }
    }
    batch.insert("meta/schema", SCHEMA_VERSION);
    tree.apply_batch(batch)?;
    tree.flush()?;
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in `dir`, loads every entity and compiles the snapshot.
    pub fn open(dir: &Path, defaults: UpstreamDefaults) -> Result<Store, OpenError> {
        Store::open_into(
            dir,
            defaults,
            Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            Duration::ZERO,
        )
    }

    /// Like `open`, publishing the snapshot into an existing handle (the one the proxy holds),
    /// with journal syncs at least `commit_interval` apart (see `journal::GroupSync`).
    pub fn open_into(
        dir: &Path,
        defaults: UpstreamDefaults,
        snapshot: Arc<ArcSwap<Snapshot>>,
        commit_interval: Duration,
    ) -> Result<Store, OpenError> {
        let d = dir.display().to_string();
        let sled_err = |source| OpenError::Sled {
            dir: d.clone(),
            source,
        };
        let started = std::time::Instant::now();
        let db = sled::Config::new()
            .path(dir.join("store"))
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS))
            .open()
            .map_err(sled_err)?;
        let tree = db.open_tree("switchyard").map_err(sled_err)?;
        let journal_err = |source| OpenError::Journal {
            dir: d.clone(),
            source,
        };
        let (mut journal, commits) =
            Journal::open(&dir.join("store").join("journal"), commit_interval)
                .map_err(journal_err)?;
        if !commits.is_empty() {
            for ops in &commits {
                apply_ops(&tree, ops).map_err(sled_err)?;
            }
            db.flush().map_err(sled_err)?;
            tracing::info!(commits = commits.len(), "replayed the store journal");
        }
        journal.clear().map_err(journal_err)?;
        match tree.get("meta/schema").map_err(sled_err)? {
            None => {
                tree.insert("meta/schema", SCHEMA_VERSION)
                    .map_err(sled_err)?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION => {}
            Some(v) if v.as_ref() == b"2" => {
                tree.insert("meta/schema", SCHEMA_VERSION)
                    .map_err(sled_err)?;
            }
            Some(v) if v.as_ref() == b"1" => migrate_v1(&tree).map_err(sled_err)?,
            Some(v) => {
                return Err(OpenError::Corrupt {
                    dir: d,
                    message: format!("unknown schema version {:?}", String::from_utf8_lossy(&v)),
                })
            }
        }
        let opened = started.elapsed();
        let (model, count, compiled) = load(&tree, &defaults).map_err(|e| match e {
            LoadError::Sled(source) => sled_err(source),
            LoadError::Corrupt(message) => OpenError::Corrupt {
                dir: d.clone(),
                message,
            },
        })?;
        snapshot.store(Arc::new(compiled));
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        tracing::info!(
            entities = count,
            sled_open_ms = ms(opened),
            load_and_compile_ms = ms(started.elapsed() - opened),
            "store opened"
        );
        Ok(Store {
            db,
            tree,
            sync: journal.group_sync(),
            state: Mutex::new(State { model, journal }),
            snapshot,
            defaults,
        })
    }

    /// The snapshot handle the proxy reads (lock-free loads).
    pub fn snapshot(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the store half-written (a commit is one
        // journal entry, which the next open replays whole), so the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the model (admin GETs, export).
    pub fn read<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        f(&self.lock().model)
    }

    /// Runs one write: `f` validates against the model and returns the changes to make. They
    /// are written to the journal, applied to the model, committed to sled and published in
    /// the snapshot under the writer lock; then this waits, outside the lock, until the
    /// journal holds them on disk. If the journal cannot take them, nothing changes.
    pub fn write<R>(
        &self,
        f: impl FnOnce(&Model) -> Result<(Vec<Change>, R), ApiError>,
    ) -> Result<R, ApiError> {
        let (out, end) = {
            let mut state = self.lock();
            let (changes, out) = f(&state.model)?;
            if changes.is_empty() {
                return Ok(out);
            }
            let mut ops = Vec::with_capacity(changes.len());
            let mut touched = Touched::default();
            for change in &changes {
                let (kind, id) = match change {
                    Change::Put(e) => (e.kind(), e.meta().id.as_str()),
                    Change::Delete(k, id) => (*k, id.as_str()),
                };
                touched.entities.push((kind, id.to_string()));
                ops.push(match change {
                    Change::Put(e) => {
                        Op::Insert(entity_key(kind, id), codec::encode(&e.to_bytes()))
                    }
                    Change::Delete(..) => Op::Remove(entity_key(kind, id)),
                });
            }
            let end = state
                .journal
                .write(&ops)
                .map_err(|e| ApiError::internal(format!("store journal write failed: {e}")))?;
            // From here the commit stands: sled, the model and the snapshot follow it even if
            // sled reports an error (the journal replays it at the next open).
            // The model first: it reads what a change replaces, which for auths is in sled.
            for change in changes {
                if let Some(old) = state.model.apply(change) {
                    touched.old_slugs.extend(old.meta().slug.clone());
                }
            }
            let applied = apply_ops(&self.tree, &ops);
            // The patch reads the changed records before `settle` drops them from the
            // model's pending writes: from memory, not inflated and parsed back from sled.
            let next = self
                .snapshot
                .load()
                .patch(&state.model, &touched, &self.defaults);
            if applied.is_ok() {
                state.model.settle(&ops);
            }
            self.snapshot.store(Arc::new(next));
            applied.map_err(|e| ApiError::internal(format!("store commit failed: {e}")))?;
            if state.journal.len() >= journal::CHECKPOINT_BYTES {
                // The write stands either way; a failed checkpoint is retried by the next one.
                if let Err(e) = self.checkpoint(&mut state.journal) {
                    tracing::warn!(error = %e, "store checkpoint failed");
                }
            }
            (out, end)
        };
        self.sync
            .wait(end)
            .map_err(|e| ApiError::internal(format!("store {e}")))?;
        Ok(out)
    }

    /// Makes sled durable and empties the journal.
    fn checkpoint(&self, journal: &mut Journal) -> Result<(), String> {
        self.db.flush().map_err(|e| e.to_string())?;
        journal.clear().map_err(|e| e.to_string())
    }

    /// Flushes everything to disk (before the store is released).
    pub fn flush(&self) -> Result<(), String> {
        self.checkpoint(&mut self.lock().journal)
    }

    /// Whether an open failed only because another process holds the store.
    pub fn is_locked(e: &OpenError) -> bool {
        matches!(e, OpenError::Sled { source: sled::Error::Io(io), .. } if io.kind() == std::io::ErrorKind::WouldBlock)
            || e.to_string().contains("could not acquire lock")
    }

    /// Checks that the model's indexes are exactly those of its entities, and that sled holds
    /// nothing but records (used by tests).
    pub fn verify_indexes(&self) -> Result<(), String> {
        self.lock().model.verify_indexes()?;
        for prefix in V1_INDEX_PREFIXES {
            if let Some(item) = self.tree.scan_prefix(prefix).next() {
                let (k, _) = item.map_err(|e| e.to_string())?;
                return Err(format!(
                    "stray index record {}",
                    String::from_utf8_lossy(&k)
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Store {
    /// A store closed by any path leaves sled persisted and the journal empty.
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "flushing the store on close failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::{AuthSpec, ConsumerSpec, GatewaySpec, RegistrySpec};
    use serde_json::json;

    fn id(v: &serde_json::Value) -> String {
        v["id"].as_str().unwrap().to_string()
    }

    /// Creates a gateway named `g`; its id.
    fn gateway(store: &Store) -> String {
        id(&ops::create::<GatewaySpec>(store, None, json!({"name": "g"})).unwrap())
    }

    /// The commits a fresh open of `dir`'s journal would replay.
    fn journaled(dir: &tempfile::TempDir) -> Vec<Vec<Op>> {
        Journal::open(&dir.path().join("store/journal"), Duration::ZERO)
            .unwrap()
            .1
    }

    /// Opens the store in `dir`, waiting (like the server does) while the previous `Store`'s
    /// last sled IO task lets go of the file lock.
    fn open(dir: &tempfile::TempDir) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Store::open(dir.path(), UpstreamDefaults::default()) {
                Err(e) if Store::is_locked(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other.unwrap(),
            }
        }
    }

    /// After every kind of write, the patched snapshot equals a full compile of the model.
    #[test]
    fn patched_snapshots_equal_a_full_compile() {
        use crate::entities::{PolicySpec, RoleSpec};
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let same = |step: &str| {
            let full = store.read(|m| Snapshot::compile(m, &UpstreamDefaults::default()));
            assert_eq!(
                crate::snapshot::fingerprint(&store.snapshot().load()),
                crate::snapshot::fingerprint(&full),
                "after {step}"
            );
        };
        let gid = gateway(&store);
        let g = Some(gid.as_str());
        let reg =
            |name: &str| json!({"name": name, "provider": "openai", "base_url": "http://a:1/v1"});
        let r1 = id(&ops::create::<RegistrySpec>(&store, g, reg("r1")).unwrap());
        let r2 = id(&ops::create::<RegistrySpec>(&store, g, reg("r2")).unwrap());
        let role = id(&ops::create::<RoleSpec>(
            &store,
            g,
            json!({"name": "admins", "registries": [{"id": r2}]}),
        )
        .unwrap());
        let pol = id(&ops::create::<PolicySpec>(
            &store,
            g,
            json!({"name": "rpm", "type": "rate_limit", "config": {"requests_per_minute": 5}}),
        )
        .unwrap());
        let key = id(
            &ops::create::<AuthSpec>(&store, g, json!({"name": "k", "type": "api_key"})).unwrap(),
        );
        let jwt = id(&ops::create::<AuthSpec>(&store, g, json!({"name": "j", "type": "jwt", "jwt": {"issuer": "i", "algorithms": ["HS256"], "secret": "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t!"}})).unwrap());
        let mut consumers = Vec::new();
        for i in 0..5 {
            let c = ops::create::<ConsumerSpec>(&store, g, json!({"name": format!("c{i}"),
                "registries": [{"id": r1, "weight": 3}], "role_ids": if i % 2 == 0 { json!([role]) } else { json!([]) },
                "auth_ids": [key, jwt], "policy_ids": [pol]})).unwrap();
            consumers.push(id(&c));
        }
        same("creates");
        ops::update::<RegistrySpec>(&store, g, &r1, json!({"base_url": "http://b:2/v1"}), true)
            .unwrap();
        same("a registry moved");
        ops::update::<RegistrySpec>(&store, g, &r2, json!({"base_url": "http://c:3/v1"}), true)
            .unwrap();
        same("a role's registry moved");
        ops::update::<RoleSpec>(&store, g, &role, json!({"name": "ops"}), true).unwrap();
        same("a role renamed");
        ops::update::<PolicySpec>(
            &store,
            g,
            &pol,
            json!({"config": {"requests_per_minute": 9}}),
            true,
        )
        .unwrap();
        same("a policy changed");
        ops::update::<AuthSpec>(&store, g, &key, json!({"active": false}), true).unwrap();
        same("a key deactivated");
        ops::update::<AuthSpec>(&store, g, &jwt, json!({"active": false}), true).unwrap();
        same("a jwt auth deactivated");
        ops::update::<GatewaySpec>(
            &store,
            None,
            &gid,
            json!({"name": "g2", "active": false}),
            true,
        )
        .unwrap();
        same("the gateway renamed");
        ops::update::<ConsumerSpec>(
            &store,
            g,
            &consumers[0],
            json!({"registries": [{"id": r2, "weight": 7}], "headers": {"x-a": "1"}}),
            true,
        )
        .unwrap();
        same("a consumer re-routed");
        ops::delete::<ConsumerSpec>(&store, g, &consumers[1]).unwrap();
        same("a consumer deleted");
        ops::import(&store, ops::export(&store)).unwrap();
        same("an import");
    }

    /// A compiled consumer and its key hold the model's own id `Arc`s, not copies: after the
    /// open's load, and after patches that recompile one consumer or many.
    #[test]
    fn compiled_consumers_share_the_models_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let gid = gateway(&store);
        let g = Some(gid.as_str());
        let body = json!({"name": "r", "provider": "openai", "base_url": "http://a:1/v1"});
        let reg = id(&ops::create::<RegistrySpec>(&store, g, body).unwrap());
        let key = id(
            &ops::create::<AuthSpec>(&store, g, json!({"name": "k", "type": "api_key"})).unwrap(),
        );
        let mut slugs = Vec::new();
        for i in 0..4 {
            let body =
                json!({"name": format!("c{i}"), "registries": [{"id": reg}], "auth_ids": [key]});
            let c = ops::create::<ConsumerSpec>(&store, g, body).unwrap();
            slugs.push((id(&c), c["slug"].as_str().unwrap().to_string()));
        }
        let check = |store: &Store, step: &str| {
            let snap = store.snapshot().load_full();
            store.read(|m| {
                let a = m.auths.get(&key).unwrap();
                let auth_id = m.shared_id(Kind::Auth, &a.meta, &a.spec.name);
                for (cid, slug) in &slugs {
                    let c = m.consumers.get(cid).unwrap();
                    let compiled = snap.consumers.get(slug).unwrap();
                    let own = m.shared_id(Kind::Consumer, &c.meta, &c.spec.name);
                    assert!(Arc::ptr_eq(&compiled.id, &own), "consumer id, {step}");
                    assert!(
                        Arc::ptr_eq(&compiled.keys[0].auth_id, &auth_id),
                        "key id, {step}"
                    );
                }
            });
        };
        // One consumer changed: the small patch path.
        ops::update::<ConsumerSpec>(&store, g, &slugs[0].0, json!({"name": "c0b"}), true).unwrap();
        check(&store, "after a consumer's write");
        // A registry all of them use: the one-pass path (SCAN_FROM is 3 in tests).
        ops::update::<RegistrySpec>(&store, g, &reg, json!({"base_url": "http://b:2/v1"}), true)
            .unwrap();
        check(&store, "after a registry's write");
        drop(store);
        check(&open(&dir), "after the open's load");
    }

    /// Consumers with the same routing config share one compiled routing, in a full compile
    /// and in a patch that recompiles them; a different config gets its own.
    #[test]
    fn consumers_with_one_routing_config_share_its_compiled_form() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let gid = gateway(&store);
        let g = Some(gid.as_str());
        let reg = |name: &str| {
            let body = json!({"name": name, "provider": "openai", "base_url": "http://a:1/v1"});
            id(&ops::create::<RegistrySpec>(&store, g, body).unwrap())
        };
        let (r1, r2) = (reg("r1"), reg("r2"));
        let consumer = |name: &str, weight: u32| {
            let body =
                json!({"name": name, "registries": [{"id": r1, "weight": weight}, {"id": r2}]});
            ops::create::<ConsumerSpec>(&store, g, body).unwrap()["slug"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let (a, b, c) = (consumer("a", 3), consumer("b", 3), consumer("c", 4));
        let shared = |snap: &Snapshot, x: &str, y: &str| {
            let routing = |s: &str| snap.consumers.get(s).unwrap().routing.clone();
            Arc::ptr_eq(&routing(x), &routing(y))
        };
        let full = store.read(|m| Snapshot::compile(m, &UpstreamDefaults::default()));
        assert!(shared(&full, &a, &b));
        assert!(!shared(&full, &a, &c));
        // A registry change recompiles all three in one patch.
        ops::update::<RegistrySpec>(&store, g, &r2, json!({"base_url": "http://b:2/v1"}), true)
            .unwrap();
        let patched = store.snapshot().load_full();
        assert!(shared(&patched, &a, &b));
        assert!(!shared(&patched, &a, &c));
        let target = &patched.consumers.get(&a).unwrap().routing.targets[1];
        assert_eq!(
            target.registry.spec.base_url.as_deref(),
            Some("http://b:2/v1")
        );
    }

    /// Concurrent writers through the store leave the indexes equal to the entities, and a
    /// reopened store holds exactly what was committed.
    #[test]
    fn indexes_stay_consistent_under_concurrent_writes_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = open(&dir);
            let gid = gateway(&store);
            let reg = id(&ops::create::<RegistrySpec>(
                &store,
                Some(&gid),
                json!({"name": "m", "provider": "mock"}),
            )
            .unwrap());
            std::thread::scope(|s| {
                for t in 0..8 {
                    let (store, gid, reg) = (&store, &gid, &reg);
                    s.spawn(move || {
                        for i in 0..25 {
                            let auth = ops::create::<AuthSpec>(
                                store,
                                Some(gid),
                                json!({"name": format!("k{t}-{i}"), "type": "api_key"}),
                            )
                            .unwrap();
                            let c = ops::create::<ConsumerSpec>(
                                store,
                                Some(gid),
                                json!({"name": format!("c{t}-{i}"),
                                "registries": [{"id": reg}], "auth_ids": [id(&auth)]}),
                            )
                            .unwrap();
                            if i % 3 == 0 {
                                ops::update::<ConsumerSpec>(
                                    store,
                                    Some(gid),
                                    &id(&c),
                                    json!({"name": format!("renamed{t}-{i}")}),
                                    true,
                                )
                                .unwrap();
                            }
                            if i % 5 == 0 {
                                ops::delete::<ConsumerSpec>(store, Some(gid), &id(&c)).unwrap();
                            }
                        }
                    });
                }
            });
            store.verify_indexes().unwrap();
            assert_eq!(store.snapshot().load().consumers.len(), 8 * 20);
            ops::export(&store)
        };
        let reopened = open(&dir);
        reopened.verify_indexes().unwrap();
        let mut after = ops::export(&reopened);
        let mut before = before;
        before.as_object_mut().unwrap().remove("exported_at");
        after.as_object_mut().unwrap().remove("exported_at");
        assert_eq!(before, after);
    }

    /// Commits left in the journal (a crash before sled persisted them) are replayed at open,
    /// whole, in order; a torn last entry (never acknowledged) is dropped; the journal is
    /// emptied once sled holds them.
    #[test]
    fn journaled_commits_are_replayed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (gid, record) = {
            let store = open(&dir);
            let g = ops::create::<GatewaySpec>(&store, None, json!({"name": "g"})).unwrap();
            let gid = id(&g);
            let record = store.read(|m| m.get(Kind::Gateway, &gid)).unwrap();
            store.flush().unwrap();
            (gid, record)
        };
        let renamed = |name: &str| {
            let mut e = record.clone();
            if let Entity::Gateway(r) = &mut e {
                r.spec.name = name.into();
            }
            Op::Insert(
                entity_key(Kind::Gateway, &gid),
                codec::encode(&e.to_bytes()),
            )
        };
        let journal_path = dir.path().join("store/journal");
        {
            let (mut j, _) = Journal::open(&journal_path, Duration::ZERO).unwrap();
            j.append(&[renamed("g2")]).unwrap();
            j.append(&[renamed("g3"), Op::Remove(b"e/gateways/none".to_vec())])
                .unwrap();
            j.append(&[renamed("torn")]).unwrap();
        }
        let whole = std::fs::read(&journal_path).unwrap();
        std::fs::write(&journal_path, &whole[..whole.len() - 3]).unwrap();
        let store = open(&dir);
        let name = store.read(|m| m.gateways[&gid].spec.name.clone());
        assert_eq!(name, "g3");
        assert_eq!(std::fs::metadata(&journal_path).unwrap().len(), 0);
        store.verify_indexes().unwrap();
        assert!(
            ops::create::<GatewaySpec>(&store, None, json!({"name": "g3"})).is_err(),
            "the replayed name is indexed"
        );
    }

    /// A write is in the journal when it returns, until a checkpoint empties it.
    #[test]
    fn a_write_is_journaled_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let g = ops::create::<GatewaySpec>(&store, None, json!({"name": "g"})).unwrap();
        let commits = journaled(&dir);
        let key = entity_key(Kind::Gateway, &id(&g));
        assert!(
            matches!(commits.as_slice(), [ops] if matches!(ops.as_slice(), [Op::Insert(k, _)] if *k == key)),
            "{commits:?}"
        );
        store.flush().unwrap();
        let commits = journaled(&dir);
        assert!(commits.is_empty());
    }

    /// Auths and consumers are read from sled: the model holds none of them once a write
    /// commits, yet reads, uniqueness, 409s, imports and the compiled keys all see them.
    #[test]
    fn auths_and_consumers_are_read_from_sled_not_held_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (gid, slug) = {
            let store = open(&dir);
            let gid = gateway(&store);
            let g = Some(gid.as_str());
            let key = |name: &str| json!({"name": name, "type": "api_key"});
            let a1 = id(&ops::create::<AuthSpec>(&store, g, key("k1")).unwrap());
            let c = ops::create::<ConsumerSpec>(&store, g, json!({"name": "c", "auth_ids": [a1]}))
                .unwrap();
            assert_eq!(store.read(|m| m.auths.held() + m.consumers.held()), 0);
            assert_eq!(ops::get::<AuthSpec>(&store, g, &a1).unwrap()["name"], "k1");
            let cid = id(&c);
            assert_eq!(
                ops::get::<ConsumerSpec>(&store, g, &cid).unwrap()["name"],
                "c"
            );
            let taken = ops::create::<ConsumerSpec>(&store, g, json!({"name": "c"})).unwrap_err();
            assert_eq!(taken.status, 409, "{taken:?}");
            // A registry in use is refused by name, found through the reverse index.
            let reg = json!({"name": "r", "provider": "mock"});
            let r = id(&ops::create::<RegistrySpec>(&store, g, reg).unwrap());
            let d = json!({"name": "d", "registries": [{"id": r}]});
            let d = id(&ops::create::<ConsumerSpec>(&store, g, d).unwrap());
            let used = ops::delete::<RegistrySpec>(&store, g, &r).unwrap_err();
            assert!(used.message.contains("consumers: d"), "{used:?}");
            ops::delete::<ConsumerSpec>(&store, g, &d).unwrap();
            ops::delete::<RegistrySpec>(&store, g, &r).unwrap();
            let listed = ops::list::<AuthSpec>(&store, g).unwrap();
            assert_eq!(listed["items"].as_array().unwrap().len(), 1);
            let dup = ops::create::<AuthSpec>(&store, g, key("k1")).unwrap_err();
            assert_eq!(dup.status, 409, "{dup:?}");
            let used = ops::delete::<AuthSpec>(&store, g, &a1).unwrap_err();
            assert_eq!(used.status, 409, "{used:?}");
            ops::update::<AuthSpec>(&store, g, &a1, json!({"name": "k1b"}), true).unwrap();
            ops::create::<AuthSpec>(&store, g, key("k1")).unwrap();
            let slug = c["slug"].as_str().unwrap().to_string();
            let keys = |store: &Store| {
                store
                    .snapshot()
                    .load()
                    .consumers
                    .get(&slug)
                    .unwrap()
                    .keys
                    .len()
            };
            assert_eq!(keys(&store), 1);
            // An import checks a consumer against an auth earlier in the same document.
            let mut doc = ops::export(&store);
            let mut auth = doc["auths"][0].clone();
            auth["id"] = json!("a-imported");
            auth["name"] = json!("k-imported");
            auth["key_hash"] = json!("ab".repeat(32));
            doc["auths"].as_array_mut().unwrap().push(auth);
            doc["consumers"][0]["auth_ids"] = json!([a1, "a-imported"]);
            ops::import(&store, doc).unwrap();
            assert_eq!(store.read(|m| m.auths.held() + m.consumers.held()), 0);
            assert_eq!(keys(&store), 2);
            store.verify_indexes().unwrap();
            (gid, slug)
        };
        let store = open(&dir);
        assert_eq!(store.read(|m| m.auths.held() + m.consumers.held()), 0);
        store.verify_indexes().unwrap();
        let c = store
            .snapshot()
            .load()
            .consumers
            .get(&slug)
            .unwrap()
            .clone();
        assert_eq!(c.keys.len(), 2);
        let listed = ops::list::<AuthSpec>(&store, Some(&gid)).unwrap();
        assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    }

    /// A schema-1 store (indexes kept in sled too) opens as schema 2 with the index records
    /// gone and every entity kept.
    #[test]
    fn a_schema_1_store_loses_its_sled_indexes_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let gid = {
            let store = open(&dir);
            let gid = gateway(&store);
            store.flush().unwrap();
            gid
        };
        {
            let db = sled::open(dir.path().join("store")).unwrap();
            let tree = db.open_tree("switchyard").unwrap();
            tree.insert("meta/schema", "1").unwrap();
            tree.insert("n/gateways/-/g", gid.as_bytes()).unwrap();
            tree.insert("s/some-slug", "c1").unwrap();
            tree.insert("k/abcdef", "a1").unwrap();
            db.flush().unwrap();
        }
        let store = open(&dir);
        store.verify_indexes().unwrap();
        assert_eq!(
            store.tree.get("meta/schema").unwrap().unwrap().as_ref(),
            SCHEMA_VERSION
        );
        assert_eq!(store.read(|m| m.gateways.len()), 1);
        let dup = ops::create::<GatewaySpec>(&store, None, json!({"name": "g"}));
        assert!(
            dup.is_err(),
            "names stay unique through the in-memory index"
        );
    }

    #[test]
    fn records_are_stored_compressed_and_schema_2_plain_ones_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = |gid: &str| entity_key(Kind::Gateway, gid);
        let gid = {
            let store = open(&dir);
            let gid = gateway(&store);
            store.flush().unwrap();
            let raw = store.tree.get(key(&gid)).unwrap().unwrap();
            assert!(raw.starts_with(&codec::MAGIC), "not zstd: {raw:?}");
            let json: serde_json::Value =
                serde_json::from_slice(&codec::decode(&raw).unwrap()).unwrap();
            assert_eq!(json["spec"]["name"], "g");
            gid
        };
        {
            // What schema 2 wrote: plain JSON.
            let db = sled::open(dir.path().join("store")).unwrap();
            let tree = db.open_tree("switchyard").unwrap();
            let raw = tree.get(key(&gid)).unwrap().unwrap();
            let mut json: serde_json::Value =
                serde_json::from_slice(&codec::decode(&raw).unwrap()).unwrap();
            json["spec"]["name"] = json!("plain");
            tree.insert(key(&gid), serde_json::to_vec(&json).unwrap())
                .unwrap();
            tree.insert("meta/schema", "2").unwrap();
            db.flush().unwrap();
        }
        let store = open(&dir);
        assert_eq!(store.read(|m| m.gateways[&gid].spec.name.clone()), "plain");
        assert_eq!(
            store.tree.get("meta/schema").unwrap().unwrap().as_ref(),
            SCHEMA_VERSION
        );
    }
}
