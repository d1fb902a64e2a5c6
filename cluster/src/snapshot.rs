//! The snapshot file: the whole views keyspace at one applied log id. It is both what a
//! leader streams to a lagging follower and the disaster-recovery archive of
//! `micro snapshot save`.
//!
//! Format version 1 (all integers little-endian):
//!
//! ```text
//! magic "MICROSNP" | version u8 = 1 | header_len u32 | header (micro-state codec: Header)
//! chunk*:  body_len u32 | record_count u32 | body | crc32(body) u32
//!          body = (key_len u32 | key | value_len u32 | value)*
//! end:     body_len u32 = 0 | record_count u32 = 0
//! crc32 u32 of every byte before it
//! ```
//!
//! Chunks let a reader name where damage is; the trailing crc covers everything, so a cut
//! short, a flipped byte or a newer version is refused before anything is written.

use std::io::Write;
use std::path::{Path, PathBuf};

use micro_state::codec;
use serde::{Deserialize, Serialize};

use crate::{LogId, Membership};

pub const MAGIC: &[u8; 8] = b"MICROSNP";
pub const VERSION: u8 = 1;
/// Records are grouped into chunks of about this many bytes.
const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The cluster the snapshot was taken from ("" before the first leader named it).
    pub cluster_id: String,
    pub snapshot_id: String,
    /// The last log entry the snapshot includes.
    pub last_log_id: Option<LogId>,
    pub membership: Membership,
    /// The store revision at the snapshot (the last applied command's).
    pub revision: u64,
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
    #[error(
        "snapshot is corrupt: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    Crc { stored: u32, computed: u32 },
    #[error("snapshot chunk {chunk} is corrupt: crc mismatch")]
    ChunkCrc { chunk: u64 },
    #[error("snapshot chunk {chunk} is malformed: {reason}")]
    Chunk { chunk: u64, reason: &'static str },
    #[error("snapshot header does not decode: {0}")]
    Header(String),
    #[error("snapshot declares {declared} records but holds {actual}")]
    Count { declared: u64, actual: u64 },
}

/// Writes the records of a snapshot file (its body) to a sink as they come, with the
/// checksums, and finishes the file once the header (which counts the records) is known:
/// in memory ([`Writer::new`], [`Writer::finish`]) or streamed to disk ([`FileWriter`]).
pub struct Writer<W: Write = Vec<u8>> {
    body: W,
    /// crc32 of the body so far: the file's trailing crc is this combined with the prefix's.
    body_crc: crc32fast::Hasher,
    body_len: u64,
    chunk: Vec<u8>,
    chunk_count: u32,
    count: u64,
}

impl Writer<Vec<u8>> {
    pub fn new() -> Self {
        Self::to(Vec::new())
    }

    /// Finishes the file with `header` (its `record_count` is filled in).
    pub fn finish(self, header: Header) -> Vec<u8> {
        // Writes into a Vec cannot fail.
        let (body, prefix, crc) = self.end(header).unwrap_or_default();
        let mut out = Vec::with_capacity(prefix.len() + body.len() + 4);
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

impl Default for Writer<Vec<u8>> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W: Write> Writer<W> {
    /// A writer whose body goes to `body`.
    pub fn to(body: W) -> Self {
        Writer {
            body,
            body_crc: crc32fast::Hasher::new(),
            body_len: 0,
            chunk: Vec::with_capacity(CHUNK_BYTES + 1024),
            chunk_count: 0,
            count: 0,
        }
    }

    pub fn record(&mut self, k: &[u8], v: &[u8]) -> std::io::Result<()> {
        self.chunk
            .extend_from_slice(&(k.len() as u32).to_le_bytes());
        self.chunk.extend_from_slice(k);
        self.chunk
            .extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.chunk.extend_from_slice(v);
        self.chunk_count += 1;
        self.count += 1;
        if self.chunk.len() >= CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.body.write_all(bytes)?;
        self.body_crc.update(bytes);
        self.body_len += bytes.len() as u64;
        Ok(())
    }

    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.chunk_count == 0 {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.put(&(chunk.len() as u32).to_le_bytes())?;
        self.put(&self.chunk_count.to_le_bytes())?;
        self.put(&chunk)?;
        self.put(&crc32fast::hash(&chunk).to_le_bytes())?;
        self.chunk = chunk;
        self.chunk.clear();
        self.chunk_count = 0;
        Ok(())
    }

    /// Ends the body (last chunk, end marker) and returns the sink, the bytes that go before
    /// the body (magic, version, header with `record_count` filled in) and the crc32 of
    /// prefix and body together, which ends the file.
    pub fn end(mut self, mut header: Header) -> std::io::Result<(W, Vec<u8>, u32)> {
        self.flush_chunk()?;
        self.put(&[0u8; 8])?;
        header.record_count = self.count;
        let h = codec::encode(&header);
        let mut prefix = Vec::with_capacity(8 + 1 + 4 + h.len());
        prefix.extend_from_slice(MAGIC);
        prefix.push(VERSION);
        prefix.extend_from_slice(&(h.len() as u32).to_le_bytes());
        prefix.extend_from_slice(&h);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&prefix);
        crc.combine(&self.body_crc);
        Ok((self.body, prefix, crc.finalize()))
    }
}

/// Streams a snapshot file to disk instead of building it in memory: the body goes to a
/// side file as records come, and [`FileWriter::finish`] writes the file (header, body,
/// crc) next to its destination, syncs it and renames it into place.
pub struct FileWriter {
    path: PathBuf,
    body_path: SideFile,
    w: Writer<std::io::BufWriter<std::fs::File>>,
}

/// The body's side file, removed when dropped: after `finish`, or by a build that failed.
struct SideFile(PathBuf);

impl Drop for SideFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl FileWriter {
    /// Starts the snapshot file that will be at `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let body_path = path.with_extension("body");
        let body = std::fs::File::create(&body_path)?;
        Ok(FileWriter {
            path: path.to_path_buf(),
            body_path: SideFile(body_path),
            w: Writer::to(std::io::BufWriter::with_capacity(1 << 20, body)),
        })
    }

    /// Where the records go.
    pub fn records(&mut self) -> &mut Writer<std::io::BufWriter<std::fs::File>> {
        &mut self.w
    }

    /// Finishes the file with `header` and makes it durable at its path (atomically: a
    /// crash leaves the previous file). Returns its size in bytes.
    pub fn finish(self, header: Header) -> std::io::Result<u64> {
        let (body, prefix, crc) = self.w.end(header)?;
        let mut body = body.into_inner().map_err(|e| e.into_error())?;
        body.flush()?;
        drop(body);
        replace_durably(&self.path, |out| {
            out.write_all(&prefix)?;
            // A copy inside the kernel (copy_file_range on Linux), not through this process.
            let copied = std::io::copy(&mut std::fs::File::open(&self.body_path.0)?, out)?;
            out.write_all(&crc.to_le_bytes())?;
            Ok(prefix.len() as u64 + copied + 4)
        })
    }
}

/// Replaces the file at `path` with what `fill` writes, atomically and durably: a temp file
/// beside it, fsynced, renamed over it, and the directory fsynced. A crash leaves the old file
/// or the new one, never a mix.
pub(crate) fn replace_durably<T>(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    let out = fill(&mut f)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(out)
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], Error> {
    if b.len() < n {
        return Err(Error::Truncated(what));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_u32(b: &mut &[u8], what: &'static str) -> Result<u32, Error> {
    let s = take(b, 4, what)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Verifies the whole file and returns its header.
pub fn verify(bytes: &[u8]) -> Result<Header, Error> {
    let (header, _) = parse(bytes, |_, _| {})?;
    Ok(header)
}

/// Verifies the file, then visits every record. Nothing is visited if any check fails.
pub fn parse(bytes: &[u8], mut visit: impl FnMut(&[u8], &[u8])) -> Result<(Header, u64), Error> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(if MAGIC.starts_with(bytes) {
            Error::Truncated("shorter than the magic")
        } else {
            Error::Magic
        });
    }
    if bytes.len() < 8 + 1 + 4 + 8 + 4 {
        return Err(Error::Truncated(
            "shorter than the fixed header and trailer",
        ));
    }
    if bytes[8] != VERSION {
        return Err(Error::Version(bytes[8]));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        // A cut-short file almost always fails here: say so if the end marker is missing.
        if !body.ends_with(&[0u8; 8]) {
            return Err(Error::Truncated("the end marker is missing"));
        }
        return Err(Error::Crc { stored, computed });
    }
    let mut b = &body[9..];
    let hlen = take_u32(&mut b, "header length")? as usize;
    let header: Header =
        codec::decode(take(&mut b, hlen, "header")?).map_err(|e| Error::Header(e.to_string()))?;
    // Validate every chunk first, then visit, so a bad file visits nothing.
    let chunks_start = b;
    let mut total = 0u64;
    let mut chunk = 0u64;
    loop {
        chunk += 1;
        let len = take_u32(&mut b, "chunk length")? as usize;
        let count = take_u32(&mut b, "chunk record count")?;
        if len == 0 && count == 0 {
            break;
        }
        let data = take(&mut b, len, "chunk body")?;
        let crc = take_u32(&mut b, "chunk crc")?;
        if crc32fast::hash(data) != crc {
            return Err(Error::ChunkCrc { chunk });
        }
        let n = walk(data, |_, _| {}).map_err(|reason| Error::Chunk { chunk, reason })?;
        if n != count as u64 {
            return Err(Error::Chunk {
                chunk,
                reason: "record count does not match its records",
            });
        }
        total += n;
    }
    if !b.is_empty() {
        return Err(Error::Chunk {
            chunk,
            reason: "bytes after the end marker",
        });
    }
    if total != header.record_count {
        return Err(Error::Count {
            declared: header.record_count,
            actual: total,
        });
    }
    let mut b = chunks_start;
    loop {
        let len = take_u32(&mut b, "chunk length")? as usize;
        let count = take_u32(&mut b, "chunk record count")?;
        if len == 0 && count == 0 {
            break;
        }
        let data = take(&mut b, len, "chunk body")?;
        take_u32(&mut b, "chunk crc")?;
        walk(data, &mut visit).map_err(|reason| Error::Chunk { chunk, reason })?;
    }
    Ok((header, total))
}

fn walk(mut b: &[u8], mut visit: impl FnMut(&[u8], &[u8])) -> Result<u64, &'static str> {
    let mut n = 0;
    while !b.is_empty() {
        let kl = take_u32(&mut b, "").map_err(|_| "record key length cut")? as usize;
        let k = take(&mut b, kl, "").map_err(|_| "record key cut")?;
        let vl = take_u32(&mut b, "").map_err(|_| "record value length cut")? as usize;
        let v = take(&mut b, vl, "").map_err(|_| "record value cut")?;
        visit(k, v);
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            cluster_id: "c1".into(),
            snapshot_id: "s".into(),
            last_log_id: None,
            membership: Membership::default(),
            revision: 7,
            record_count: 0,
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = Writer::new();
        w.record(b"k1", b"v1").unwrap();
        w.record(b"k2", b"").unwrap();
        w.finish(header())
    }

    #[test]
    fn round_trip_across_many_chunks() {
        let mut w = Writer::new();
        for i in 0..5000u32 {
            w.record(&i.to_be_bytes(), &[7u8; 40]).unwrap();
        }
        let bytes = w.finish(header());
        let mut n = 0u32;
        let (h, total) = parse(&bytes, |k, v| {
            assert_eq!(k, n.to_be_bytes());
            assert_eq!(v.len(), 40);
            n += 1;
        })
        .unwrap();
        assert_eq!((h.record_count, total, h.revision), (5000, 5000, 7));
    }

    #[test]
    fn a_file_streamed_to_disk_is_the_file_built_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("current.snap");
        std::fs::write(&path, b"the previous snapshot").unwrap();
        let records = |w: &mut dyn FnMut(&[u8], &[u8])| {
            for i in 0..3000u32 {
                w(&i.to_be_bytes(), &vec![(i % 251) as u8; (i % 97) as usize]);
            }
        };
        let mut mem = Writer::new();
        records(&mut |k, v| mem.record(k, v).unwrap());
        let expected = mem.finish(header());
        let mut file = FileWriter::create(&path).unwrap();
        records(&mut |k, v| file.records().record(k, v).unwrap());
        let len = file.finish(header()).unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(len, written.len() as u64);
        assert!(written == expected, "streamed and in-memory files differ");
        assert_eq!(verify(&written).unwrap().record_count, 3000);
        // Only the snapshot is left: no side file, no temp file.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("current.snap")]);
    }

    #[test]
    fn a_streamed_file_given_up_half_way_leaves_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("current.snap");
        std::fs::write(&path, b"the previous snapshot").unwrap();
        let mut file = FileWriter::create(&path).unwrap();
        file.records().record(b"k", b"v").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"the previous snapshot");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
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
        let cut = verify(&good[..good.len() - 10]).unwrap_err();
        assert!(matches!(cut, Error::Truncated(_)), "{cut}");
    }

    proptest::proptest! {
        /// Arbitrary bytes (and arbitrary damage to a real file) never panic the parser.
        #[test]
        fn parse_never_panics(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256), cut in 0usize..200, flip in 0usize..200) {
            let _ = verify(&raw);
            let mut good = sample();
            let _ = verify(&good[..cut.min(good.len())]);
            let i = flip % good.len();
            good[i] = good[i].wrapping_add(1);
            proptest::prop_assert!(verify(&good).is_err());
        }
    }

    #[test]
    fn golden_bytes_v1() {
        // Changing this layout breaks every saved snapshot: add a version instead.
        let bytes = sample();
        assert_eq!(&bytes[..9], b"MICROSNP\x01");
        let hlen = u32::from_le_bytes(bytes[9..13].try_into().unwrap()) as usize;
        let rest = &bytes[13 + hlen..];
        assert_eq!(
            rest,
            [
                // chunk: body_len 22, 2 records
                &[22, 0, 0, 0, 2, 0, 0, 0][..],
                &[2, 0, 0, 0, b'k', b'1', 2, 0, 0, 0, b'v', b'1'],
                &[2, 0, 0, 0, b'k', b'2', 0, 0, 0, 0],
                &crc32fast::hash(b"\x02\0\0\0k1\x02\0\0\0v1\x02\0\0\0k2\0\0\0\0").to_le_bytes(),
                &[0; 8],
                &crc32fast::hash(&bytes[..bytes.len() - 4]).to_le_bytes(),
            ]
            .concat()
            .as_slice()
        );
    }
}
