//! Versioned encoding of persisted values: one format-version byte, then bincode (standard
//! configuration, serde). A value written by a newer format is refused rather than misread.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Current format version of every value this crate persists.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty value")]
    Empty,
    #[error("unsupported format version {0} (this build reads version {FORMAT_VERSION})")]
    Version(u8),
    #[error("cannot decode value: {0}")]
    Decode(String),
}

/// Encodes `value` as `[FORMAT_VERSION] ++ bincode(value)`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Encoding into a Vec cannot fail for our plain data types.
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .expect("bincode encoding into a Vec");
    out
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (&version, body) = bytes.split_first().ok_or(Error::Empty)?;
    if version != FORMAT_VERSION {
        return Err(Error::Version(version));
    }
    // The limit stops a corrupt length prefix from asking for an absurd allocation.
    let config = bincode::config::standard().with_limit::<{ 256 * 1024 * 1024 }>();
    let (value, used) = bincode::serde::decode_from_slice(body, config)
        .map_err(|e| Error::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(Error::Decode(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}
