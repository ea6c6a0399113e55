//! The store's commit journal (`<data_dir>/store/journal`): what makes a write durable before
//! it is answered.
//!
//! sled 0.34 makes data durable only through its IO threadpool: `flush`, and every
//! `apply_batch` too, hands writes to that pool and wakes all seven of its idle threads (a
//! condvar `notify_all`), ~240 µs of kernel time per admin write taken from the proxy's cores.
//! So a write appends its commit here and waits for an `fdatasync` of this file (done by a
//! writer's own thread, one sync for every commit written before it starts: group commit),
//! and applies the same keys to sled, which persists them in the background (every 500 ms).
//! When the journal grows past a bound, or the store closes, sled is flushed and the journal
//! emptied (a checkpoint).
//!
//! Opening replays the journal into sled before anything is read. Entries hold whole values
//! (inserts and removes of keys) in commit order, and every key written since the last
//! checkpoint is in them, so replaying them all ends in the state of the last commit, whatever
//! part of it sled had persisted.
//!
//! Entry: `len: u32 LE | crc32(payload): u32 LE | payload`; payload: per operation
//! `0 | klen: u32 | key` (remove) or `1 | klen: u32 | key | vlen: u32 | value` (insert). A torn
//! or corrupt tail (a crash mid-append, never acknowledged) ends the replay.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One key change of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// Journal size past which a write checkpoints (flushes sled, empties the journal).
pub const CHECKPOINT_BYTES: u64 = 4 << 20;

const HEADER: usize = 8;

/// The writing side, owned under the store's writer lock.
pub struct Journal {
    file: File,
    /// Bytes in the file (since the last checkpoint).
    len: u64,
    sync: Arc<GroupSync>,
}

/// The syncing side, used outside the writer lock: writers wait here until their commit is on
/// disk, and one `fdatasync` covers every commit written before it started (group commit).
/// Syncs start at least `interval` apart, so a stream of writes costs at most one sync per
/// interval however fast it comes; a write after a quiet spell is synced at once.
pub struct GroupSync {
    file: File,
    interval: Duration,
    /// Bytes ever written (a position that checkpoints do not reset).
    written: AtomicU64,
    /// `fdatasync`s done (read by tests).
    syncs: AtomicU64,
    state: Mutex<SyncState>,
    synced: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Every commit ending at or before this position is on disk.
    durable: u64,
    syncing: bool,
    last_sync: Option<Instant>,
    /// Set by a failed sync: what is in memory may no longer be on disk, so every later write
    /// fails too (a restart replays what reached the disk).
    failed: Option<String>,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and returns the commits it holds, oldest first.
    pub fn open(path: &Path, interval: Duration) -> io::Result<(Journal, Vec<Vec<Op>>)> {
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        if !existed {
            sync_parent(path)?;
        }
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        let commits = decode_all(&raw);
        let sync = Arc::new(GroupSync {
            file: file.try_clone()?,
            interval,
            written: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            state: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
        });
        let len = raw.len() as u64;
        Ok((Journal { file, len, sync }, commits))
    }

    /// Writes one commit (not yet synced) and returns the position to wait for with
    /// `GroupSync::wait`. On failure the journal is cut back to where it was, so a later
    /// commit never sits behind a torn entry.
    pub fn write(&mut self, ops: &[Op]) -> Result<u64, String> {
        self.sync.check()?;
        let entry = encode(ops);
        if let Err(e) = self.file.write_all(&entry) {
            let _ = self.file.set_len(self.len);
            return Err(e.to_string());
        }
        self.len += entry.len() as u64;
        Ok(self
            .sync
            .written
            .fetch_add(entry.len() as u64, Ordering::AcqRel)
            + entry.len() as u64)
    }

    /// Writes one commit and waits until it is on disk.
    #[cfg(test)]
    pub fn append(&mut self, ops: &[Op]) -> Result<(), String> {
        let end = self.write(ops)?;
        self.sync.wait(end)
    }

    /// Bytes held since the last checkpoint.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn group_sync(&self) -> Arc<GroupSync> {
        self.sync.clone()
    }

    /// Empties the journal; call only once everything in it is durable elsewhere. Every
    /// commit written so far counts as durable from then on.
    pub fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.len = 0;
        let written = self.sync.written.load(Ordering::Acquire);
        let mut st = self.sync.lock();
        st.durable = st.durable.max(written);
        self.sync.synced.notify_all();
        Ok(())
    }
}

impl GroupSync {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) -> Result<(), String> {
        match &self.lock().failed {
            Some(e) => Err(format!(
                "an earlier journal sync failed ({e}); restart to recover"
            )),
            None => Ok(()),
        }
    }

    #[cfg(test)]
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Blocks until every commit up to `end` is on disk, syncing if no other writer is.
    pub fn wait(&self, end: u64) -> Result<(), String> {
        let mut st = self.lock();
        loop {
            if let Some(e) = &st.failed {
                return Err(format!("journal sync failed: {e}"));
            }
            if st.durable >= end {
                return Ok(());
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.syncing = true;
            let due = st.last_sync.map(|at| at + self.interval);
            drop(st);
            if let Some(wait) = due.and_then(|due| due.checked_duration_since(Instant::now())) {
                // Commits written meanwhile ride along on this sync.
                std::thread::sleep(wait);
            }
            let target = self.written.load(Ordering::Acquire);
            let synced = self.file.sync_data();
            self.syncs.fetch_add(1, Ordering::Relaxed);
            st = self.lock();
            st.syncing = false;
            st.last_sync = Some(Instant::now());
            match synced {
                Ok(()) => st.durable = st.durable.max(target),
                Err(e) => st.failed = Some(e.to_string()),
            }
            self.synced.notify_all();
        }
    }
}

/// Makes a new file's directory entry durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// One entry: the header's room is kept first and filled once the payload is written, so the
/// payload is not copied (an import's commit is the whole document).
fn encode(ops: &[Op]) -> Vec<u8> {
    let mut entry = vec![0u8; HEADER];
    for op in ops {
        let (tag, key, value) = match op {
            Op::Insert(k, v) => (1u8, k, Some(v)),
            Op::Remove(k) => (0u8, k, None),
        };
        entry.push(tag);
        put_chunk(&mut entry, key);
        if let Some(v) = value {
            put_chunk(&mut entry, v);
        }
    }
    let len = (entry.len() - HEADER) as u32;
    let crc = crc32fast::hash(&entry[HEADER..]);
    entry[..4].copy_from_slice(&len.to_le_bytes());
    entry[4..HEADER].copy_from_slice(&crc.to_le_bytes());
    entry
}

fn put_chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Every whole, intact entry from the start; stops at the first torn or corrupt one.
fn decode_all(mut raw: &[u8]) -> Vec<Vec<Op>> {
    let mut commits = Vec::new();
    while let (Some(len), Some(crc)) = (le_u32(raw), raw.get(4..).and_then(le_u32)) {
        let len = len as usize;
        let Some(payload) = raw.get(HEADER..HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(ops) = decode_ops(payload) else {
            break;
        };
        commits.push(ops);
        raw = &raw[HEADER + len..];
    }
    commits
}

fn decode_ops(mut p: &[u8]) -> Option<Vec<Op>> {
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = p.split_first() {
        let (key, rest) = take_chunk(rest)?;
        p = rest;
        ops.push(match tag {
            0 => Op::Remove(key.to_vec()),
            1 => {
                let (value, rest) = take_chunk(p)?;
                p = rest;
                Op::Insert(key.to_vec(), value.to_vec())
            }
            _ => return None,
        });
    }
    Some(ops)
}

fn take_chunk(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = le_u32(p)? as usize;
    let chunk = p.get(4..4 + len)?;
    Some((chunk, &p[4 + len..]))
}

/// The little-endian `u32` that `p` starts with.
fn le_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(p.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commits a fresh open of `path` replays.
    fn replay(path: &Path) -> Vec<Vec<Op>> {
        Journal::open(path, Duration::ZERO).unwrap().1
    }

    fn commit(i: u8) -> Vec<Op> {
        vec![
            Op::Insert(vec![b'k', i], vec![i; 300]),
            Op::Remove(vec![b'r', i]),
        ]
    }

    #[test]
    fn appended_commits_come_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, none) = Journal::open(&path, Duration::ZERO).unwrap();
        assert!(none.is_empty());
        for i in 0..3 {
            j.append(&commit(i)).unwrap();
        }
        drop(j);
        let (j, commits) = Journal::open(&path, Duration::ZERO).unwrap();
        assert_eq!(commits, (0..3).map(commit).collect::<Vec<_>>());
        assert_eq!(j.len(), std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, _) = Journal::open(&path, Duration::ZERO).unwrap();
        j.append(&commit(1)).unwrap();
        j.append(&commit(2)).unwrap();
        drop(j);
        let whole = std::fs::read(&path).unwrap();
        // cut inside the second entry: only the first survives
        std::fs::write(&path, &whole[..whole.len() - 10]).unwrap();
        assert_eq!(replay(&path), vec![commit(1)]);
        // a flipped byte in the second entry's payload: its checksum fails
        let mut flipped = whole.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(replay(&path), vec![commit(1)]);
        // a header claiming more than the file holds
        let mut huge = whole[..HEADER].to_vec();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        assert!(replay(&path).is_empty());
    }

    /// Writes in a stream are synced at most once per interval; writers that arrive while a
    /// sync is pending share it.
    #[test]
    fn concurrent_commits_share_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (j, _) = Journal::open(&path, Duration::from_millis(100)).unwrap();
        let sync = j.group_sync();
        let j = Mutex::new(j);
        j.lock().unwrap().append(&commit(0)).unwrap();
        assert_eq!(
            sync.syncs(),
            1,
            "a write after a quiet spell is synced at once"
        );
        std::thread::scope(|s| {
            for i in 1..=8 {
                let (j, sync) = (&j, &sync);
                s.spawn(move || {
                    let end = j.lock().unwrap().write(&commit(i)).unwrap();
                    sync.wait(end).unwrap();
                });
            }
        });
        assert!(sync.syncs() <= 3, "{} syncs for 8 writers", sync.syncs());
        drop(j);
        assert_eq!(replay(&path).len(), 9);
    }

    #[test]
    fn clear_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, _) = Journal::open(&path, Duration::ZERO).unwrap();
        j.append(&commit(1)).unwrap();
        j.clear().unwrap();
        assert_eq!(j.len(), 0);
        j.append(&commit(2)).unwrap();
        drop(j);
        assert_eq!(replay(&path), vec![commit(2)]);
    }
}
