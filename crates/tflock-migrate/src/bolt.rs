//! A small read-only reader of files written by Go's bbolt (Atlantis's `atlantis.db`).
//!
//! Why our own: the one Rust port on crates.io (`bbolt-rs`) states no licence, is a
//! full read-write engine (11k lines) that creates the file when it is missing even in
//! read-only mode, and needs a `compat` feature to open Go-written files. Reading is a
//! small part of the format, which bbolt documents as fixed:
//!
//! - Every page starts with a 16-byte header: `id u64, flags u16, count u16,
//!   overflow u32`. A page spans `1 + overflow` pages of `page_size` bytes.
//! - Pages 0 and 1 are meta pages (flag `0x04`). The meta, right after the header:
//!   `magic u32 (0xED0CDAED), version u32 (2), page_size u32, flags u32,
//!   root {root_pgid u64, sequence u64}, freelist u64, pgid u64, txid u64,
//!   checksum u64`, the checksum being FNV-1a 64 over the 56 bytes before it. The
//!   valid meta with the higher txid is the current one (the other is the previous
//!   transaction's, kept for crash safety).
//! - Branch pages (flag `0x01`) hold `count` elements of `pos u32, ksize u32,
//!   pgid u64`; leaf pages (flag `0x02`) hold `count` elements of `flags u32,
//!   pos u32, ksize u32, vsize u32`. `pos` is relative to the element itself; the key
//!   follows at that offset and the value right after the key.
//! - A leaf element with flag `0x01` is a nested bucket: its value is
//!   `root_pgid u64, sequence u64`, and with `root_pgid == 0` the bucket is inline,
//!   its one leaf page stored in the value right after those 16 bytes.
//!
//! Integers are in the machine's byte order (bbolt casts memory); every platform
//! Atlantis ships for is little-endian, and so is what this reader assumes.
//!
//! The reader never writes, never takes bbolt's `flock`, and reads only the pages it
//! walks, so it works on a copy of a large file as well as on a file Atlantis still
//! has open (bbolt writes new pages and then the meta, so a reader sees the state of
//! one committed transaction; point it at a copy all the same). Every page id and
//! offset is checked against the file, so a damaged file gives an error, never a
//! panic or a loop.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// bbolt's magic number.
const MAGIC: u32 = 0xED0C_DAED;
/// The only format version bbolt has written.
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const BRANCH_ELEMENT: usize = 16;
const LEAF_ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const BUCKET_LEAF: u32 = 0x01;
/// Deeper than any real B+tree (a tree of 4 KiB pages this deep would hold more keys
/// than a file can); bounds the walk of a damaged file.
const MAX_DEPTH: usize = 32;
/// Largest page size bbolt accepts from the meta.
const MAX_PAGE_SIZE: u32 = 1 << 20;

/// Why a bbolt file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BoltError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a bbolt file this reader understands: {message}")]
    Format { path: PathBuf, message: String },
}

/// One key and value of a bucket. `bucket` is true for a nested bucket (its value is
/// then the bucket header and is of no use to callers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub bucket: bool,
}

/// An open bbolt file at its latest committed transaction.
#[derive(Debug)]
pub struct BoltFile {
    file: File,
    path: PathBuf,
    page_size: usize,
    /// One past the highest page id in use (the meta's high-water mark).
    page_count: u64,
    root: u64,
    txid: u64,
}

/// Where a page's bytes come from: the file, or the value of an inline bucket.
enum PageRef<'a> {
    File(u64),
    Inline(&'a [u8]),
}

impl BoltFile {
    /// Opens `path` read-only and picks the current meta page.
    pub fn open(path: impl AsRef<Path>) -> Result<BoltFile, BoltError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| BoltError::Io {
            path: path.clone(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| BoltError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        let fmt_err = |message: String| BoltError::Format {
            path: path.clone(),
            message,
        };

        // Meta 0 sits at offset 0 and names the page size, which places meta 1. If meta
        // 0 is damaged, try meta 1 at the page sizes bbolt can have used.
        let mut metas = Vec::new();
        let mut problems = Vec::new();
        match read_meta(&file, 0) {
            Ok(m) => metas.push(m),
            Err(e) => problems.push(format!("meta page 0: {e}")),
        }
        let sizes: Vec<u64> = match metas.first() {
            Some(m) => vec![u64::from(m.page_size)],
            None => vec![4096, 8192, 16384, 32768, 65536],
        };
        for size in sizes {
            if size + 64 > len {
                continue;
            }
            match read_meta(&file, size) {
                Ok(m) if u64::from(m.page_size) == size => {
                    metas.push(m);
                    break;
                }
                Ok(_) => problems.push(format!("meta page 1 at {size}: page size disagrees")),
                Err(e) => problems.push(format!("meta page 1 at {size}: {e}")),
            }
        }
        let meta = metas
            .into_iter()
            .max_by_key(|m| m.txid)
            .ok_or_else(|| fmt_err(format!("no valid meta page ({})", problems.join("; "))))?;
        let page_size = meta.page_size as usize;
        let pages_in_file = len / page_size as u64;
        if meta.pgid > pages_in_file {
            return Err(fmt_err(format!(
                "the meta page counts {} pages but the file holds {pages_in_file} (truncated copy?)",
                meta.pgid
            )));
        }
        Ok(BoltFile {
            file,
            path,
            page_size,
            page_count: meta.pgid,
            root: meta.root,
            txid: meta.txid,
        })
    }

    /// The id of the transaction whose state is read.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// The names of the top-level buckets.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>, BoltError> {
        let mut out = Vec::new();
        self.walk(PageRef::File(self.root), 0, &mut |e| {
            if e.bucket {
                out.push(e.key);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Every entry of the top-level bucket `name` in key order, or `None` when the
    /// file has no such bucket.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Vec<Entry>>, BoltError> {
        let mut header = None;
        self.walk(PageRef::File(self.root), 0, &mut |e| {
            if e.bucket && e.key == name {
                header = Some(e.value);
            }
            Ok(())
        })?;
        let Some(value) = header else {
            return Ok(None);
        };
        if value.len() < BUCKET_HEADER {
            return Err(self.format("a bucket header is shorter than 16 bytes"));
        }
        let root = le_u64(&value, 0);
        let mut out = Vec::new();
        let page = if root == 0 {
            PageRef::Inline(&value[BUCKET_HEADER..])
        } else {
            PageRef::File(root)
        };
        self.walk(page, 0, &mut |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(Some(out))
    }

    fn format(&self, message: impl Into<String>) -> BoltError {
        BoltError::Format {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Reads page `id` with its overflow pages.
    fn read_page(&self, id: u64) -> Result<Vec<u8>, BoltError> {
        if id < 2 || id >= self.page_count {
            return Err(self.format(format!(
                "page id {id} is outside 2..{} (damaged file?)",
                self.page_count
            )));
        }
        let offset = id * self.page_size as u64;
        let mut head = vec![0u8; self.page_size];
        self.read_at(&mut head, offset)?;
        let overflow = u64::from(le_u32(&head, 12));
        if id + overflow >= self.page_count {
            return Err(self.format(format!(
                "page {id} claims {overflow} overflow pages past the end"
            )));
        }
        if overflow == 0 {
            return Ok(head);
        }
        let mut page = vec![0u8; (1 + overflow as usize) * self.page_size];
        self.read_at(&mut page, offset)?;
        Ok(page)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BoltError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| BoltError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Visits every leaf element under `page` in key order.
    fn walk(
        &self,
        page: PageRef<'_>,
        depth: usize,
        visit: &mut dyn FnMut(Entry) -> Result<(), BoltError>,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(self.format("the B+tree is deeper than any real one (a cycle?)"));
        }
        let owned;
        let (bytes, expected_id): (&[u8], Option<u64>) = match page {
            PageRef::File(id) => {
                owned = self.read_page(id)?;
                (&owned, Some(id))
            }
            PageRef::Inline(b) => (b, None),
        };
        if bytes.len() < PAGE_HEADER {
            return Err(self.format("a page is shorter than its header"));
        }
        if let Some(id) = expected_id
            && le_u64(bytes, 0) != id
        {
            return Err(self.format(format!(
                "page {id} says it is page {} (damaged file?)",
                le_u64(bytes, 0)
            )));
        }
        let flags = le_u16(bytes, 8);
        let count = usize::from(le_u16(bytes, 10));
        if flags & BRANCH_PAGE != 0 {
            if expected_id.is_none() {
                return Err(self.format("an inline bucket holds a branch page"));
            }
            let mut children = Vec::with_capacity(count);
            for i in 0..count {
                let at = PAGE_HEADER + i * BRANCH_ELEMENT;
                if at + BRANCH_ELEMENT > bytes.len() {
                    return Err(self.format("branch elements run past the page"));
                }
                children.push(le_u64(bytes, at + 8));
            }
            for child in children {
                self.walk(PageRef::File(child), depth + 1, visit)?;
            }
            Ok(())
        } else if flags & LEAF_PAGE != 0 {
            for i in 0..count {
                let at = PAGE_HEADER + i * LEAF_ELEMENT;
                if at + LEAF_ELEMENT > bytes.len() {
                    return Err(self.format("leaf elements run past the page"));
                }
                let eflags = le_u32(bytes, at);
                let pos = le_u32(bytes, at + 4) as usize;
                let ksize = le_u32(bytes, at + 8) as usize;
                let vsize = le_u32(bytes, at + 12) as usize;
                let kstart = at + pos;
                let vend = kstart
                    .checked_add(ksize)
                    .and_then(|v| v.checked_add(vsize))
                    .filter(|&end| end <= bytes.len())
                    .ok_or_else(|| {
                        self.format("a leaf element's key or value runs past its page")
                    })?;
                visit(Entry {
                    key: bytes[kstart..kstart + ksize].to_vec(),
                    value: bytes[kstart + ksize..vend].to_vec(),
                    bucket: eflags & BUCKET_LEAF != 0,
                })?;
            }
            Ok(())
        } else {
            Err(self.format(format!(
                "expected a branch or leaf page, found flags {flags:#04x}"
            )))
        }
    }
}

/// The fields of a meta page this reader uses.
struct Meta {
    page_size: u32,
    root: u64,
    pgid: u64,
    txid: u64,
}

fn read_meta(file: &File, offset: u64) -> Result<Meta, String> {
    let mut buf = [0u8; PAGE_HEADER + 64];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| e.to_string())?;
    if le_u16(&buf, 8) & META_PAGE == 0 {
        return Err("not a meta page".into());
    }
    let m = &buf[PAGE_HEADER..];
    if le_u32(m, 0) != MAGIC {
        return Err("bad magic number (not a bbolt file)".into());
    }
    let version = le_u32(m, 4);
    if version != VERSION {
        return Err(format!("format version {version}, expected {VERSION}"));
    }
    let checksum = le_u64(m, 56);
    if checksum != 0 && checksum != fnv1a64(&m[..56]) {
        return Err("checksum mismatch".into());
    }
    let page_size = le_u32(m, 8);
    if !(1024..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("implausible page size {page_size}"));
    }
    Ok(Meta {
        page_size,
        root: le_u64(m, 16),
        pgid: le_u64(m, 40),
        txid: le_u64(m, 48),
    })
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_file_that_is_not_bbolt_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");
        std::fs::write(&p, vec![7u8; 8192]).unwrap();
        let err = BoltFile::open(&p).unwrap_err().to_string();
        assert!(err.contains("no valid meta page"), "{err}");
    }
}
