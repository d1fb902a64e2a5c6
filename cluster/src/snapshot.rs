//! The snapshot file: the whole views keyspace at one applied log id.
//!
//! ```text
//! "MICROSNP" | version: u8 = 1 | header_len: u32 LE | header (micro-state codec) |
//! records: (key_len: u32 LE | key | value_len: u32 LE | value)* | crc32: u32 LE
//! ```
//!
//! The trailing crc32 covers every byte before it. A file that is cut short, has a flipped
//! byte or a newer version is refused before anything is written.

use micro_state::codec;
use serde::{Deserialize, Serialize};

use crate::{LogId, Membership};

pub const MAGIC: &[u8; 8] = b"MICROSNP";
pub const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub snapshot_id: String,
    pub last_log_id: Option<LogId>,
    pub membership: Membership,
    pub record_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a Micro snapshot (bad magic)")]
    Magic,
    #[error("snapshot format version {0} is not supported (this build reads {VERSION})")]
    Version(u8),
    #[error("snapshot is truncated: {0}")]
    Truncated(&'static str),
    #[error("snapshot checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Crc { stored: u32, computed: u32 },
    #[error("snapshot header does not decode: {0}")]
    Header(String),
    #[error("snapshot declares {declared} records but holds {actual}")]
    Count { declared: u64, actual: u64 },
}

/// Builds a snapshot file in memory.
pub struct Writer {
    buf: Vec<u8>,
    count: u64,
}

impl Writer {
    pub fn new() -> Self {
        Writer {
            buf: Vec::new(),
            count: 0,
        }
    }

    pub fn record(&mut self, k: &[u8], v: &[u8]) {
        self.buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(k);
        self.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(v);
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Finishes the file with `header` (its `record_count` is filled in).
    pub fn finish(self, mut header: Header) -> Vec<u8> {
        header.record_count = self.count;
        let h = codec::encode(&header);
        let mut out = Vec::with_capacity(8 + 1 + 4 + h.len() + self.buf.len() + 4);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(h.len() as u32).to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&self.buf);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], Error> {
    if b.len() < n {
        return Err(Error::Truncated(what));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_u32(b: &mut &[u8], what: &'static str) -> Result<usize, Error> {
    let s = take(b, 4, what)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// Verifies the whole file and returns its header (records are checked, not collected).
pub fn verify(bytes: &[u8]) -> Result<Header, Error> {
    let (header, _) = parse(bytes, |_, _| {})?;
    Ok(header)
}

/// Verifies the file, then visits every record. Nothing is visited if any check fails.
pub fn parse(bytes: &[u8], mut visit: impl FnMut(&[u8], &[u8])) -> Result<(Header, u64), Error> {
    if bytes.len() < MAGIC.len() + 1 + 4 + 4 {
        return Err(if bytes.starts_with(&MAGIC[..bytes.len().min(8)]) {
            Error::Truncated("shorter than the fixed header")
        } else {
            Error::Magic
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(Error::Magic);
    }
    if bytes[8] != VERSION {
        return Err(Error::Version(bytes[8]));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(Error::Crc { stored, computed });
    }
    let mut b = &body[9..];
    let hlen = take_u32(&mut b, "header length")?;
    let header: Header =
        codec::decode(take(&mut b, hlen, "header")?).map_err(|e| Error::Header(e.to_string()))?;
    // Walk twice: first validate the framing, then visit, so a bad file visits nothing.
    let records = b;
    let mut n = 0u64;
    while !b.is_empty() {
        let kl = take_u32(&mut b, "record key length")?;
        take(&mut b, kl, "record key")?;
        let vl = take_u32(&mut b, "record value length")?;
        take(&mut b, vl, "record value")?;
        n += 1;
    }
    if n != header.record_count {
        return Err(Error::Count {
            declared: header.record_count,
            actual: n,
        });
    }
    let mut b = records;
    while !b.is_empty() {
        let kl = take_u32(&mut b, "record key length")?;
        let k = take(&mut b, kl, "record key")?;
        let vl = take_u32(&mut b, "record value length")?;
        let v = take(&mut b, vl, "record value")?;
        visit(k, v);
    }
    Ok((header, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new();
        w.record(b"k1", b"v1");
        w.record(b"k2", b"");
        w.finish(Header {
            snapshot_id: "s".into(),
            last_log_id: None,
            membership: Membership::default(),
            record_count: 0,
        })
    }

    #[test]
    fn round_trip() {
        let mut seen = Vec::new();
        let (h, n) = parse(&sample(), |k, v| seen.push((k.to_vec(), v.to_vec()))).unwrap();
        assert_eq!((h.record_count, n), (2, 2));
        assert_eq!(seen[0], (b"k1".to_vec(), b"v1".to_vec()));
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_refused() {
        let good = sample();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(verify(&bad).is_err(), "flip at {i} accepted");
            assert!(verify(&good[..i]).is_err(), "cut at {i} accepted");
        }
    }
}
