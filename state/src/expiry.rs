//! The one expiry index of every view: `EXPIRY due_ms owner_key`. Apply purges what is due
//! before each entry by handing each due owner key to the view its first byte names; the
//! leader's ticker asks [`next_due`] (one seek) when to propose an empty entry.

use crate::keys;
use crate::storage::{Overlay, Read, StorageError};

/// Schedules `owner_key` to expire at `due_ms`.
pub fn schedule<S: Read + ?Sized>(ov: &mut Overlay<'_, S>, due_ms: u64, owner_key: &[u8]) {
    ov.put(keys::expiry_key(due_ms, owner_key), Vec::new());
}

/// Cancels a schedule made with [`schedule`].
pub fn cancel<S: Read + ?Sized>(ov: &mut Overlay<'_, S>, due_ms: u64, owner_key: &[u8]) {
    ov.delete(keys::expiry_key(due_ms, owner_key));
}

/// The earliest due time in the index, if anything is scheduled.
pub fn next_due<S: Read + ?Sized>(s: &S) -> Result<Option<u64>, StorageError> {
    let mut first = None;
    s.scan(
        &[keys::EXPIRY],
        Some(&[keys::EXPIRY + 1]),
        false,
        &mut |k, _| {
            // The due time sits at the same place in schema 1 and 2 keys.
            first = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            false
        },
    )?;
    Ok(first)
}

/// Removes and returns the owner keys due at or before `now_ms`, earliest first.
pub fn take_due<S: Read + ?Sized>(
    ov: &mut Overlay<'_, S>,
    now_ms: u64,
) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut to = vec![keys::EXPIRY];
    to.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
    let due = ov.collect(&[keys::EXPIRY], Some(&to), usize::MAX)?;
    let mut owners = Vec::with_capacity(due.len());
    for (ek, _) in due {
        let (_, owner) = keys::parse_expiry_key(&ek)
            .ok_or_else(|| StorageError("corrupt expiry index key".into()))?;
        owners.push(owner.to_vec());
        ov.delete(ek);
    }
    Ok(owners)
}

/// Rewrites schema-1 expiry keys (store records only, without the view byte) in the schema-2
/// layout. Runs inside apply at the first entry after an upgrade, so every node migrates at
/// the same log index.
pub fn migrate_v1<S: Read + ?Sized>(ov: &mut Overlay<'_, S>) -> Result<usize, StorageError> {
    let old = ov.collect(&[keys::EXPIRY], Some(&[keys::EXPIRY + 1]), usize::MAX)?;
    let mut new = Vec::with_capacity(old.len());
    // All deletes first: an old key may equal another record's new key.
    for (ek, _) in &old {
        new.push(
            keys::parse_expiry_key_v1(ek)
                .ok_or_else(|| StorageError("corrupt schema-1 expiry index key".into()))?,
        );
        ov.delete(ek.clone());
    }
    for (due, sk) in new {
        schedule(ov, due, &sk);
    }
    Ok(old.len())
}
