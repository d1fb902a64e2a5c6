//! Versioned encoding of persisted values: one format-version byte, then bincode (standard
//! configuration, serde). A value written by a newer format is refused rather than misread.
//!
//! Most values are still at version 1. A type whose shape changed is written under a newer
//! version with [`encode_as`] and read with [`split`] + [`decode_body`], which lets its reader
//! decode older versions through a frozen copy of the old type (see `command::v1`,
//! `views::store::decode_record`). The changelog is in ARCHITECTURE.md, "Persisted formats".

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Current format version of every value this crate persists.
pub const FORMAT_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty value")]
    Empty,
    #[error("unsupported format version {0} (written by a newer release?)")]
    Version(u8),
    #[error("cannot decode value: {0}")]
    Decode(String),
}

/// Encodes `value` as `[FORMAT_VERSION] ++ bincode(value)`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_as(FORMAT_VERSION, value)
}

/// Encodes `value` as `[version] ++ bincode(value)`.
pub fn encode_as<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    // Encoding into a Vec cannot fail for our plain data types.
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .expect("bincode encoding into a Vec");
    out
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (version, body) = split(bytes)?;
    if version != FORMAT_VERSION {
        return Err(Error::Version(version));
    }
    decode_body(body)
}

/// The format version of a persisted value and its body.
pub fn split(bytes: &[u8]) -> Result<(u8, &[u8]), Error> {
    let (&version, body) = bytes.split_first().ok_or(Error::Empty)?;
    Ok((version, body))
}

/// Decodes the body of a value (after its version byte); the whole body must be used.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
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

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    /// The byte fields of persisted types are `#[serde(with = "serde_bytes")]`: one copy
    /// instead of a call per byte. bincode writes both forms as a length and the bytes, so
    /// values written before (and release 1's) read the same; this pins that.
    #[test]
    fn serde_bytes_fields_encode_as_plain_byte_vectors() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Plain {
            key: Vec<u8>,
            value: Option<Vec<u8>>,
            n: u64,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Bytes {
            #[serde(with = "serde_bytes")]
            key: Vec<u8>,
            #[serde(with = "serde_bytes")]
            value: Option<Vec<u8>>,
            n: u64,
        }
        for (key, value) in [
            (vec![], None),
            (vec![0, 1, 255], Some(vec![])),
            (vec![7; 300], Some(vec![9; 70_000])),
        ] {
            let plain = Plain {
                key: key.clone(),
                value: value.clone(),
                n: 42,
            };
            let bytes = Bytes { key, value, n: 42 };
            let encoded = super::encode(&plain);
            assert_eq!(super::encode(&bytes), encoded);
            assert_eq!(super::decode::<Bytes>(&encoded).unwrap(), bytes);
        }
    }
}
