//! How a record's JSON is kept in sled: zstd-compressed.
//!
//! A consumer's JSON repeats its registry ids and model lists across `registry_ids`,
//! `registry_weights` and `model_policies`, which compresses to ~45%: the 100,000-consumer
//! bench store takes 165 MiB on disk instead of 262, its journal entries shrink alike, and
//! the open's peak RSS is ~3 MiB lower (fewer bytes pass through sled's cache and the load's
//! stages).
//!
//! Records written before this are plain JSON and still read: a zstd frame starts with its
//! magic number, a JSON record with `{`.

use std::borrow::Cow;
use std::cell::RefCell;

/// zstd's fastest regular level: on a 1 KiB consumer it compresses as well as the default (3)
/// to within 1 % and takes ~30 % less time, which every admin write pays.
const LEVEL: i32 = 1;
/// The largest record `decode` will inflate to (a corrupt frame header cannot ask for more).
const MAX_RECORD: u64 = 64 << 20;
/// How every zstd frame starts.
pub(super) const MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();

thread_local! {
    // A zstd context allocates ~100 KiB-1 MiB of tables: one per thread, not one per record.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// The bytes to store for a record's JSON.
pub fn encode(json: &[u8]) -> Vec<u8> {
    let compressed = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        c.as_mut()?.compress(json).ok()
    });
    // Compressing an in-memory buffer fails only if zstd cannot allocate its context; the
    // plain JSON is still a valid record.
    compressed.unwrap_or_else(|| json.to_vec())
}

/// A stored record's JSON.
pub fn decode(bytes: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if !bytes.starts_with(&MAGIC) {
        return Ok(Cow::Borrowed(bytes));
    }
    let size = match zstd::zstd_safe::get_frame_content_size(bytes) {
        Ok(Some(n)) if n <= MAX_RECORD => n as usize,
        _ => return Err("a compressed record with no valid size".into()),
    };
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        let d = d.as_mut().ok_or("no zstd context")?;
        d.decompress(bytes, size)
            .map(Cow::Owned)
            .map_err(|e| format!("a compressed record does not inflate: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_plain_json_still_reads() {
        let json = br#"{"registry_ids":["e79d930c-8e89-4025-9730-e7f3ef10b21d"],"registry_weights":[{"registry_id":"e79d930c-8e89-4025-9730-e7f3ef10b21d","weight":50}]}"#;
        let stored = encode(json);
        assert!(
            stored.len() < json.len(),
            "{} vs {}",
            stored.len(),
            json.len()
        );
        assert!(stored.starts_with(&MAGIC));
        assert_eq!(decode(&stored).unwrap().as_ref(), json);
        assert_eq!(
            decode(json).unwrap().as_ref(),
            json,
            "plain JSON passes through"
        );
    }

    #[test]
    fn corrupt_frames_are_errors_not_panics() {
        let stored = encode(br#"{"name":"a consumer","name2":"a consumer"}"#);
        assert!(decode(&stored[..stored.len() - 3]).is_err(), "truncated");
        assert!(decode(&MAGIC).is_err(), "a bare magic number");
        let mut lying = stored.clone();
        lying.truncate(4);
        lying.extend_from_slice(&[0xff; 12]);
        assert!(decode(&lying).is_err(), "a garbage header");
    }
}
