//! Where a resource lives: its bucket (0..64) and the bucket's key prefix
//! `P{b:NN}:`. The hash tag `{b:NN}` keeps every key of a bucket on one cluster
//! slot, so one script changes a resource and its bucket's indexes atomically; it
//! never holds user text.

/// Number of buckets; resources spread over them by a hash of the storage key.
pub const BUCKETS: usize = 64;

/// FNV-1a, 64 bits: stable across versions and platforms, which a bucket must be
/// (std's hasher is randomly seeded).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The bucket of a storage key.
pub fn bucket_of(storage_key: &str) -> usize {
    (fnv1a64(storage_key.as_bytes()) % BUCKETS as u64) as usize
}

/// The bucket of an entry id: its first two hex digits. `None` for an id this
/// backend cannot have issued.
pub fn bucket_of_entry(entry_id: &str) -> Option<usize> {
    if entry_id.len() != 32 || !entry_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let b = usize::from_str_radix(&entry_id[..2], 16).ok()?;
    (b < BUCKETS).then_some(b)
}

/// The 64 key prefixes (`P{b:00}:` .. `P{b:3f}:`), computed once.
pub fn bucket_prefixes(prefix: &str) -> Vec<String> {
    (0..BUCKETS)
        .map(|b| format!("{prefix}{{b:{b:02x}}}:"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn entry_buckets() {
        assert_eq!(
            bucket_of_entry("3f0123456789abcdef0123456789abcd"),
            Some(63)
        );
        assert_eq!(bucket_of_entry("400123456789abcdef0123456789abcd"), None);
        assert_eq!(bucket_of_entry("short"), None);
        assert_eq!(bucket_prefixes("p:")[10], "p:{b:0a}:");
    }
}
