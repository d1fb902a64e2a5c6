//! The on-disk frame of one log record:
//!
//! ```text
//! [version: u8 = 1][crc32: u32 little-endian][payload ...]
//! ```
//!
//! The crc32 (crc32fast, IEEE) covers the record's index (u64 big-endian), the version byte and
//! the payload, so a record copied to the wrong index is caught as well as a flipped bit.

/// Current frame version.
pub const VERSION: u8 = 1;
const HEADER: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("record of {0} bytes is shorter than its {HEADER}-byte header")]
    Short(usize),
    #[error("unsupported frame version {0} (this build reads version {VERSION})")]
    Version(u8),
    #[error("crc mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Crc { stored: u32, computed: u32 },
}

fn checksum(index: u64, version: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_be_bytes());
    h.update(&[version]);
    h.update(payload);
    h.finalize()
}

/// Frames `payload` as the record at `index`.
pub fn encode(index: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(VERSION);
    out.extend_from_slice(&checksum(index, VERSION, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Verifies the frame of the record at `index` and returns its payload.
pub fn decode(index: u64, raw: &[u8]) -> Result<&[u8], Error> {
    if raw.len() < HEADER {
        return Err(Error::Short(raw.len()));
    }
    if raw[0] != VERSION {
        return Err(Error::Version(raw[0]));
    }
    let stored = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]);
    let payload = &raw[HEADER..];
    let computed = checksum(index, VERSION, payload);
    if stored != computed {
        return Err(Error::Crc { stored, computed });
    }
    Ok(payload)
}
