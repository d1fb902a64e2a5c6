//! Damage to a stopped node's data dir, for the `corrupt` nemesis: a flipped byte in one of the
//! last log records, the log's tail cut off, or a flipped byte in the snapshot file. The log is
//! edited through `micro_log::Db` (the API Micro's own fault tests use), so the damage is
//! exactly what was intended and RocksDB's own checksums stay intact; the snapshot file is
//! edited in place.

use std::path::{Path, PathBuf};

use rand::Rng;
use serde::Serialize;

/// The snapshot file in a data dir (`docs/snapshots.md`).
pub fn snapshot_file(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots").join("current.snap")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// XOR one byte of one of the last few log records (frame header or payload).
    FlipLog,
    /// Delete the last few log records (a lost tail).
    TruncateLog,
    /// XOR one byte of `snapshots/current.snap`.
    FlipSnapshot,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::FlipLog, Kind::TruncateLog, Kind::FlipSnapshot];

    pub fn name(self) -> &'static str {
        match self {
            Kind::FlipLog => "flip-log",
            Kind::TruncateLog => "truncate-log",
            Kind::FlipSnapshot => "flip-snapshot",
        }
    }

    /// Parses a comma-separated list (`flip-log,truncate-log,flip-snapshot`).
    pub fn parse_list(s: &str) -> Result<Vec<Kind>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let k = Kind::ALL
                .into_iter()
                .find(|k| k.name() == part)
                .ok_or_else(|| {
                    format!("unknown corruption {part:?} (flip-log, truncate-log, flip-snapshot)")
                })?;
            if !out.contains(&k) {
                out.push(k);
            }
        }
        Ok(out)
    }
}

/// Exactly what was done, for the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Damage {
    FlipLog {
        /// The log's last index before the damage.
        last: u64,
        index: u64,
        offset: usize,
        /// The record's length in bytes (frame included).
        len: usize,
        mask: u8,
    },
    TruncateLog {
        last: u64,
        /// Records with index >= `from` were deleted.
        from: u64,
        removed: u64,
    },
    FlipSnapshot {
        offset: u64,
        len: u64,
        mask: u8,
    },
}

impl Damage {
    /// The phrase a node that notices this damage names in its error: a node must refuse to
    /// start on a flipped byte, naming the record or the snapshot.
    pub fn expected_error(&self) -> Option<String> {
        match self {
            Damage::FlipLog { index, .. } => Some(format!("log record {index} is corrupt")),
            // Refused only when the node had applied or known committed what was lost; a
            // shorter log that lost nothing it vouched for starts and catches up.
            Damage::TruncateLog { .. } => Some("are missing".into()),
            Damage::FlipSnapshot { .. } => Some("snapshot is corrupt".into()),
        }
    }
}

/// The kinds of `allowed` that apply to `data_dir`: the snapshot flip only when there is a
/// snapshot file.
pub fn available(data_dir: &Path, allowed: &[Kind]) -> Vec<Kind> {
    let snapshot = snapshot_file(data_dir).is_file();
    allowed
        .iter()
        .copied()
        .filter(|k| *k != Kind::FlipSnapshot || snapshot)
        .collect()
}

/// A nonzero XOR mask.
fn mask(rng: &mut impl Rng) -> u8 {
    rng.random_range(1..=255)
}

/// Applies `kind` to the (stopped) node's `data_dir`. Fails when there is nothing to damage
/// (an empty log, no snapshot file).
pub fn apply(data_dir: &Path, kind: Kind, rng: &mut impl Rng) -> anyhow::Result<Damage> {
    match kind {
        Kind::FlipLog | Kind::TruncateLog => {
            let db = micro_log::Db::open(&data_dir.join("db"))?;
            let Some((last, _)) = db.last_log()? else {
                anyhow::bail!("the log is empty");
            };
            let first = db
                .read_log(0, last + 1)
                .ok()
                .and_then(|r| r.first().map(|(i, _)| *i))
                .unwrap_or(last);
            // the last three records (or as many as there are)
            let lo = last.saturating_sub(2).max(first);
            if kind == Kind::FlipLog {
                let index = rng.random_range(lo..=last);
                let Some(mut raw) = db.raw_log_record(index)? else {
                    anyhow::bail!("log record {index} is missing");
                };
                anyhow::ensure!(!raw.is_empty(), "log record {index} is empty");
                let offset = rng.random_range(0..raw.len());
                let m = mask(rng);
                raw[offset] ^= m;
                db.put_raw_log_record(index, &raw)?;
                Ok(Damage::FlipLog {
                    last,
                    index,
                    offset,
                    len: raw.len(),
                    mask: m,
                })
            } else {
                let from = rng.random_range(lo..=last);
                db.truncate_log(from)?;
                Ok(Damage::TruncateLog {
                    last,
                    from,
                    removed: last - from + 1,
                })
            }
        }
        Kind::FlipSnapshot => {
            let file = snapshot_file(data_dir);
            let mut bytes = std::fs::read(&file)?;
            anyhow::ensure!(!bytes.is_empty(), "{} is empty", file.display());
            let offset = rng.random_range(0..bytes.len());
            let m = mask(rng);
            bytes[offset] ^= m;
            std::fs::write(&file, &bytes)?;
            Ok(Damage::FlipSnapshot {
                offset: offset as u64,
                len: bytes.len() as u64,
                mask: m,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn data_dir_with_log(records: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let db = micro_log::Db::open(&dir.path().join("db")).unwrap();
        let payloads: Vec<(u64, Vec<u8>)> = (1..=records)
            .map(|i| (i, format!("entry {i}").into_bytes()))
            .collect();
        db.append(payloads.iter().map(|(i, p)| (*i, p.as_slice())))
            .unwrap();
        db.sync().unwrap();
        dir
    }

    #[test]
    fn a_flipped_log_byte_is_named_by_the_log_check() {
        for seed in 0..20 {
            let dir = data_dir_with_log(10);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let d = apply(dir.path(), Kind::FlipLog, &mut rng).unwrap();
            let Damage::FlipLog {
                last, index, mask, ..
            } = d
            else {
                panic!("{d:?}")
            };
            assert_eq!(last, 10);
            assert!((8..=10).contains(&index), "{d:?}");
            assert_ne!(mask, 0);
            let db = micro_log::Db::open(&dir.path().join("db")).unwrap();
            let err = db.verify_log().unwrap_err().to_string();
            assert!(
                err.starts_with(&d.expected_error().unwrap()),
                "{err} for {d:?}"
            );
        }
    }

    #[test]
    fn a_truncated_log_loses_its_tail_and_nothing_else() {
        let dir = data_dir_with_log(10);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let d = apply(dir.path(), Kind::TruncateLog, &mut rng).unwrap();
        let Damage::TruncateLog {
            last,
            from,
            removed,
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!((last, from + removed - 1), (10, 10));
        let db = micro_log::Db::open(&dir.path().join("db")).unwrap();
        assert_eq!(db.verify_log().unwrap(), from - 1);
        assert_eq!(db.last_log().unwrap().unwrap().0, from - 1);
    }

    #[test]
    fn the_snapshot_flip_changes_exactly_one_byte() {
        let dir = data_dir_with_log(3);
        assert_eq!(
            available(dir.path(), &Kind::ALL),
            vec![Kind::FlipLog, Kind::TruncateLog]
        );
        let file = snapshot_file(dir.path());
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let before: Vec<u8> = (0..=255u8).collect();
        std::fs::write(&file, &before).unwrap();
        assert!(available(dir.path(), &Kind::ALL).contains(&Kind::FlipSnapshot));
        assert_eq!(
            available(dir.path(), &[Kind::FlipSnapshot]),
            vec![Kind::FlipSnapshot]
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let d = apply(dir.path(), Kind::FlipSnapshot, &mut rng).unwrap();
        let after = std::fs::read(&file).unwrap();
        let diff: Vec<usize> = (0..before.len())
            .filter(|i| before[*i] != after[*i])
            .collect();
        let Damage::FlipSnapshot { offset, mask, .. } = d else {
            panic!("{d:?}")
        };
        assert_eq!(diff, vec![offset as usize]);
        assert_eq!(before[offset as usize] ^ after[offset as usize], mask);
    }

    #[test]
    fn corruption_lists() {
        assert_eq!(
            Kind::parse_list("truncate-log, flip-log,flip-log").unwrap(),
            vec![Kind::TruncateLog, Kind::FlipLog]
        );
        assert!(Kind::parse_list("flip")
            .unwrap_err()
            .contains("flip-snapshot"));
    }

    #[test]
    fn nothing_to_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(apply(dir.path(), Kind::FlipLog, &mut rng).is_err());
        assert!(apply(dir.path(), Kind::FlipSnapshot, &mut rng).is_err());
    }
}
