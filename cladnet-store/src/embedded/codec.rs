//! Binary encoding of the embedded store's records.
//!
//! A key's record is `create_revision, mod_revision, version, lease` as little-endian `i64`s
//! (lease 0 = none) followed by the value bytes. A history entry is a kind byte (1 = put,
//! 2 = delete), the key length as a little-endian `u32`, the key, and for puts the key's record.
//! The revision of a history entry is its table key.

use crate::types::{KeyValue, Revision, WatchEvent};

const HEADER: usize = 32;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;

/// Encodes the record stored under a key.
pub(super) fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.lease.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

/// Decodes the record stored under `key`.
pub(super) fn decode_kv(key: &str, bytes: &[u8]) -> Result<KeyValue, String> {
    let Some((header, value)) = bytes.split_first_chunk::<HEADER>() else {
        return Err(format!(
            "record of key {key:?} has {} bytes, less than the {HEADER}-byte header",
            bytes.len()
        ));
    };
    let field = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i * 8..i * 8 + 8]);
        i64::from_le_bytes(b)
    };
    let lease = field(3);
    Ok(KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision: field(0),
        mod_revision: field(1),
        version: field(2),
        lease: (lease != 0).then_some(lease),
    })
}

/// Encodes a history entry.
pub(super) fn encode_event(event: &WatchEvent) -> Vec<u8> {
    let (kind, key) = match event {
        WatchEvent::Put(kv) => (KIND_PUT, kv.key.as_str()),
        WatchEvent::Delete { key, .. } => (KIND_DELETE, key.as_str()),
    };
    // Keys are bounded by redb's own limits far below 4 GiB; saturate rather than wrap.
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(5 + key.len());
    out.push(kind);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    if let WatchEvent::Put(kv) = event {
        out.extend_from_slice(&encode_kv(kv));
    }
    out
}

/// Decodes the history entry recorded at `revision`.
pub(super) fn decode_event(revision: Revision, bytes: &[u8]) -> Result<WatchEvent, String> {
    let bad = |what: &str| format!("history entry at revision {revision}: {what}");
    let Some((&kind, rest)) = bytes.split_first() else {
        return Err(bad("empty"));
    };
    let Some((len, rest)) = rest.split_first_chunk::<4>() else {
        return Err(bad("truncated key length"));
    };
    let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| bad("key too long"))?;
    if rest.len() < len {
        return Err(bad("truncated key"));
    }
    let (key, rest) = rest.split_at(len);
    let key = std::str::from_utf8(key).map_err(|_| bad("key is not UTF-8"))?;
    match kind {
        KIND_PUT => decode_kv(key, rest).map(WatchEvent::Put),
        KIND_DELETE if rest.is_empty() => Ok(WatchEvent::Delete {
            key: key.to_owned(),
            revision,
        }),
        KIND_DELETE => Err(bad("trailing bytes after a delete")),
        other => Err(bad(&format!("unknown kind {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let kv = KeyValue {
            key: "/a/ü".into(),
            value: b"v\0x".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: Some(77),
        };
        assert_eq!(decode_kv(&kv.key, &encode_kv(&kv)).unwrap(), kv);
        let put = WatchEvent::Put(kv.clone());
        assert_eq!(decode_event(9, &encode_event(&put)).unwrap(), put);
        let del = WatchEvent::Delete {
            key: "/a".into(),
            revision: 12,
        };
        assert_eq!(decode_event(12, &encode_event(&del)).unwrap(), del);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_kv("k", &[1, 2, 3]).is_err());
        assert!(decode_event(1, &[]).is_err());
        assert!(decode_event(1, &[1, 9, 0, 0, 0, b'a']).is_err());
        assert!(decode_event(1, &[7, 1, 0, 0, 0, b'a']).is_err());
        assert!(decode_event(1, &[2, 1, 0, 0, 0, 0xff]).is_err());
    }
}
