//! Where a resource lives: its bucket (0..64), the bucket's key prefix `P{b:NN}:`, the
//! resource's readable key, and the layout version. The hash tag `{b:NN}` keeps every
//! key of a bucket on one cluster slot, so one script changes a resource and its
//! bucket's indexes atomically; it never holds user text.
//!
//! A resource's key (in key names and index members) is its four parts, each
//! escaped, joined by `!`: `myorg/myrepo!modules/vpc!default!vpc`. The escape keeps
//! every byte printable and keeps the order: sorting keys sorts by (repo, path,
//! workspace, project_name), which listing relies on (see [`resource_key`]).

use tflock_core::Resource;

/// Number of buckets; resources spread over them by a hash of the storage key.
pub const BUCKETS: usize = 64;

/// The key layout these scripts read and write (docs/redis-design.md, "Layout
/// versions"): `2` since readable keys. Kept per bucket in the `layout` field of the
/// bucket's marker `P{b:NN}:gen`.
pub const LAYOUT: u32 = 2;

/// Joins the escaped parts of a resource key: below every byte an escaped part can
/// hold, so a shorter part sorts first, as in the tuple order.
const SEP: u8 = b'!';

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

/// The bucket of a resource. It is a hash of [`Resource::storage_key`] (the four
/// parts joined by `\x1f`), as in layout 1, so that an upgrade never moves a resource
/// to another slot.
pub fn bucket_of(resource: &Resource) -> usize {
    (fnv1a64(resource.storage_key().as_bytes()) % BUCKETS as u64) as usize
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

/// The name of a resource's lease hash: its bucket's prefix, `lock:` and its key
/// (the prelude's `k_lock`; listing reads it without a script).
pub fn lock_name(bucket: &str, key: &str) -> String {
    format!("{bucket}lock:{key}")
}

/// The name of a bucket's index of resource keys that have a lock or a queue (the
/// prelude's `K_IDX`).
pub fn resources_name(bucket: &str) -> String {
    format!("{bucket}resources")
}

/// The resource's key in the store: [`key_part`] of each part, joined by `!`.
pub fn resource_key(r: &Resource) -> String {
    let mut k = String::with_capacity(
        r.repo.len() + r.path.len() + r.workspace.len() + r.project_name.len() + 3,
    );
    for (i, part) in [&r.repo, &r.path, &r.workspace, &r.project_name]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            k.push(SEP as char);
        }
        push_part(&mut k, part);
    }
    k
}

/// One part as it appears in a resource key. Bytes up to `#` (0x23: space, `!`, `"`,
/// `#` and control characters) become `#` and two hex digits, bytes from `~` (0x7e:
/// `~`, DEL and every byte of a non-ASCII character) become `~` and two hex digits,
/// the rest stay. Each byte maps to something that sorts where the byte does (an
/// escape's first character is `#` below every kept byte, or `~` above them, and its
/// hex digits order the escaped bytes), and the separator `!` sorts below all of it:
/// so keys sort exactly as the parts do, byte by byte.
pub fn key_part(part: &str) -> String {
    let mut k = String::with_capacity(part.len());
    push_part(&mut k, part);
    k
}

fn push_part(out: &mut String, part: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in part.as_bytes() {
        let lead = match b {
            0..=0x23 => '#',
            0x7e.. => '~',
            _ => {
                out.push(b as char);
                continue;
            }
        };
        out.push(lead);
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// The resource of a key: a layout-2 [`resource_key`], or a layout-1 storage key
/// (parts joined by `\x1f`, still found in events of an older server and in answers
/// stored before an upgrade). `None` when it is neither.
pub fn resource_of_key(key: &str) -> Option<Resource> {
    if key.contains(tflock_core::resource::STORAGE_KEY_SEPARATOR) {
        return Resource::from_storage_key(key);
    }
    let mut parts = key.split(SEP as char).map(unescape);
    let r = Resource {
        repo: parts.next()??,
        path: parts.next()??,
        workspace: parts.next()??,
        project_name: parts.next()??,
    };
    parts.next().is_none().then_some(r)
}

fn unescape(part: &str) -> Option<String> {
    let b = part.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            lead @ (b'#' | b'~') => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                let v = u8::from_str_radix(hex, 16).ok()?;
                // Only the canonical escape: one key per resource.
                if (lead == b'#') != (v <= 0x23) || (lead == b'~') != (v >= 0x7e) {
                    return None;
                }
                if hex.bytes().any(|c| c.is_ascii_uppercase()) {
                    return None;
                }
                out.push(v);
                i += 3;
            }
            c if c <= 0x23 || c >= 0x7e => return None,
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A listing cursor as layout 2 reads it: a layout-1 storage key (a cursor handed out
/// before an upgrade) becomes the resource's key; anything else is kept.
pub fn cursor_key(cursor: String) -> String {
    if cursor.contains(tflock_core::resource::STORAGE_KEY_SEPARATOR)
        && let Some(r) = Resource::from_storage_key(&cursor)
    {
        return resource_key(&r);
    }
    cursor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(repo: &str, path: &str, ws: &str, project: &str) -> Resource {
        Resource {
            repo: repo.into(),
            path: path.into(),
            workspace: ws.into(),
            project_name: project.into(),
        }
    }

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

    #[test]
    fn keys_are_readable() {
        assert_eq!(
            resource_key(&res("myorg/myrepo", "modules/vpc", "default", "vpc")),
            "myorg/myrepo!modules/vpc!default!vpc"
        );
        assert_eq!(
            resource_key(&res("a b/c!d", ".", "x#y~z", "é{}")),
            "a#20b/c#21d!.!x#23y~7ez!~c3~a9{}"
        );
        // The bucket is layout 1's: an upgrade moves no resource to another slot.
        let r = res("myorg/myrepo", ".", "default", "");
        assert_eq!(
            bucket_of(&r),
            (fnv1a64(b"myorg/myrepo\x1f.\x1fdefault\x1f") % 64) as usize
        );
    }

    /// Parts drawn from the bytes that decide the order: the escaped ones at both
    /// ends, the separator's neighbours, plain ones and a non-ASCII character.
    fn parts() -> Vec<String> {
        let atoms = [
            "", " ", "!", "\"", "#", "$", "a", "z", "{", "}", "~", "é", "/", "%",
        ];
        let mut out: Vec<String> = atoms.iter().map(|s| s.to_string()).collect();
        for a in atoms {
            for b in atoms {
                out.push(format!("{a}{b}"));
            }
        }
        out
    }

    #[test]
    fn keys_sort_as_the_parts_do_and_read_back() {
        let ps = parts();
        let mut all = Vec::new();
        for (i, a) in ps.iter().enumerate() {
            // Enough pairs to meet every case without the full cross product.
            let b = &ps[(i * 7 + 3) % ps.len()];
            let c = &ps[(i * 13 + 5) % ps.len()];
            all.push(res(a, b, c, a));
            all.push(res(a, c, b, ""));
            all.push(res(b, a, "", c));
        }
        for r in &all {
            let k = resource_key(r);
            assert!(
                k.bytes().all(|b| (0x21..0x7f).contains(&b)),
                "not printable: {k:?}"
            );
            assert_eq!(resource_of_key(&k).as_ref(), Some(r), "{k}");
            assert_eq!(resource_of_key(&r.storage_key()).as_ref(), Some(r));
        }
        let mut by_parts = all.clone();
        by_parts.sort();
        by_parts.dedup();
        let mut by_key = by_parts.clone();
        by_key.sort_by_key(resource_key);
        assert_eq!(by_parts, by_key);
    }

    #[test]
    fn only_canonical_keys_read_back() {
        for bad in [
            "a!b!c",
            "a!b!c!d!e",
            "a#2!b!c!d",
            "a#41!b!c!d",
            "a~41!b!c!d",
            "a#2A!b!c!d",
            "a b!c!d!e",
            "~ff!b!c!d",
        ] {
            assert_eq!(resource_of_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn old_cursors_become_keys() {
        let r = res("o/r", ".", "default", "");
        assert_eq!(cursor_key(r.storage_key()), resource_key(&r));
        assert_eq!(cursor_key("o/r!.!x!".into()), "o/r!.!x!");
    }
}
