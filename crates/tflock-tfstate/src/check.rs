//! The decisions both stores share, written once: body validation (size, UTF-8, JSON
//! object, `serial`, `lineage`), md5, the guard decision, the serial/lineage
//! comparison and the rollback rewrite of `serial`.
//!
//! The embedded store calls all of them inside its transaction. The Redis store calls
//! the pure ones ([`check_size`], [`parse_body`], [`rewrite_serial`]) before its script
//! and passes their results as arguments; the comparisons that depend on stored data
//! ([`guard`], [`history`]) are mirrored in `lua/write.lua`, because there they must
//! run inside the script to be atomic. Keep the two in step.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use md5::{Digest, Md5};
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::{Guard, LockRecord, WriteError};

/// What a valid document says about itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    pub serial: u64,
    pub lineage: String,
    pub md5: String,
    pub size: u64,
}

/// Who wrote a version, from the guard that let it through.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Writer {
    pub token: Option<u64>,
    pub lock_id: Option<String>,
}

pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn check_size(size: usize, max: u64) -> Result<(), WriteError> {
    let size = size as u64;
    if size > max {
        return Err(WriteError::TooLarge { size, max });
    }
    Ok(())
}

/// A Terraform state: UTF-8 JSON, an object with an integer `serial` >= 0 and a
/// string `lineage` (`version` and everything else is not looked at).
pub(crate) fn parse_body(body: &[u8]) -> Result<Parsed, WriteError> {
    let invalid = |m: &str| Err(WriteError::InvalidState(m.to_string()));
    let Ok(text) = std::str::from_utf8(body) else {
        return invalid("the state must be UTF-8 JSON");
    };
    let doc: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Err(WriteError::InvalidState(format!(
                "the state is not JSON: {e}"
            )));
        }
    };
    let Some(obj) = doc.as_object() else {
        return invalid("the state must be a JSON object");
    };
    let serial = match obj.get("serial") {
        None => return invalid("the state has no \"serial\""),
        Some(v) => match v.as_u64() {
            Some(s) => s,
            None => return invalid("\"serial\" must be an integer >= 0"),
        },
    };
    let lineage = match obj.get("lineage") {
        None => return invalid("the state has no \"lineage\""),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return invalid("\"lineage\" must be a string"),
    };
    Ok(Parsed {
        serial,
        lineage,
        md5: md5_hex(body),
        size: body.len() as u64,
    })
}

/// The guard decision (mirrored in `lua/write.lua`).
pub(crate) fn guard(
    guard: &Guard,
    record: Option<&LockRecord>,
    fence: u64,
) -> Result<Writer, WriteError> {
    let fenced = || WriteError::Fenced {
        fence,
        record: record.cloned(),
    };
    match guard {
        Guard::Admin => Ok(Writer {
            token: None,
            lock_id: None,
        }),
        Guard::Unlocked { fence_seen } => {
            if fence > *fence_seen {
                return Err(fenced());
            }
            Ok(Writer {
                token: None,
                lock_id: None,
            })
        }
        Guard::Lock { id_digest, token } => match record {
            Some(r) if r.id_digest == *id_digest && r.token == *token && *token == fence => {
                Ok(Writer {
                    token: Some(*token),
                    lock_id: Some(r.public_id.clone()),
                })
            }
            _ => Err(fenced()),
        },
    }
}

/// The serial/lineage comparison against the current version, `(serial, lineage)`,
/// if there is one (mirrored in `lua/write.lua`).
pub(crate) fn history(
    current: Option<(u64, &str)>,
    sent: &Parsed,
    force: bool,
) -> Result<(), WriteError> {
    let Some((serial, lineage)) = current else {
        return Ok(());
    };
    if force {
        return Ok(());
    }
    if !lineage.is_empty() && !sent.lineage.is_empty() && lineage != sent.lineage {
        return Err(WriteError::LineageChanged {
            stored: lineage.to_string(),
            sent: sent.lineage.clone(),
        });
    }
    if sent.serial < serial {
        return Err(WriteError::SerialBackwards {
            stored: serial,
            sent: sent.serial,
        });
    }
    Ok(())
}

/// The document with its top-level `serial` set to `serial`, every other byte as it
/// was (whitespace, key order, number formatting): a rollback must restore the old
/// state exactly, and a re-serialised document would not be.
/// The serial a rollback writes: one above the highest stored, refused (not wrapped)
/// at the top of the range.
pub(crate) fn next_serial(highest: u64) -> Result<u64, WriteError> {
    highest.checked_add(1).ok_or_else(|| {
        WriteError::InvalidState(
            "the highest serial stored is the largest there is: no serial above it".into(),
        )
    })
}

pub(crate) fn rewrite_serial(body: &[u8], serial: u64) -> Result<Vec<u8>, WriteError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| WriteError::InvalidState("the state must be UTF-8 JSON".into()))?;
    let spans = serial_spans(text)
        .map_err(|e| WriteError::InvalidState(format!("the state is not JSON: {e}")))?;
    if spans.is_empty() {
        return Err(WriteError::InvalidState(
            "the state has no \"serial\"".into(),
        ));
    }
    let new = serial.to_string();
    let mut out = String::with_capacity(text.len() + new.len());
    let mut at = 0;
    for span in spans {
        out.push_str(&text[at..span.start]);
        out.push_str(&new);
        at = span.end;
    }
    out.push_str(&text[at..]);
    Ok(out.into_bytes())
}

/// Where the values of the top-level `"serial"` keys are in `text` (every one, should
/// a document repeat the key). serde_json's borrowed [`RawValue`] is a slice of the
/// input itself, so its position in `text` is exact.
fn serial_spans(text: &str) -> Result<Vec<Range<usize>>, serde_json::Error> {
    struct Spans<'a>(&'a str);

    impl<'de> Visitor<'de> for Spans<'de> {
        type Value = Vec<Range<usize>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut spans = Vec::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                let raw: &'de RawValue = map.next_value()?;
                if key == "serial" {
                    let start = raw.get().as_ptr() as usize - self.0.as_ptr() as usize;
                    spans.push(start..start + raw.get().len());
                }
            }
            Ok(spans)
        }
    }

    let mut de = serde_json::Deserializer::from_str(text);
    let spans = serde::Deserializer::deserialize_map(&mut de, Spans(text))?;
    de.end()?;
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_every_other_byte() {
        let doc = "{\n  \"version\": 4,\n  \"serial\":   7 ,\n  \"lineage\": \"x\",\n  \"outputs\": {\"serial\": 1}\n}\n";
        let out = rewrite_serial(doc.as_bytes(), 12).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\n  \"version\": 4,\n  \"serial\":   12 ,\n  \"lineage\": \"x\",\n  \"outputs\": {\"serial\": 1}\n}\n"
        );
    }

    #[test]
    fn rewrite_handles_escaped_keys() {
        let doc = r#"{"seri\u0061l":3,"lineage":"l"}"#;
        let out = rewrite_serial(doc.as_bytes(), 4).unwrap();
        assert_eq!(out, br#"{"seri\u0061l":4,"lineage":"l"}"#);
    }

    #[test]
    fn md5_of_nothing() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn parse_names_the_field() {
        let e = |b: &[u8]| match parse_body(b) {
            Err(WriteError::InvalidState(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(e(b"{\"lineage\":\"l\"}").contains("serial"));
        assert!(e(b"{\"serial\":-1,\"lineage\":\"l\"}").contains("serial"));
        assert!(e(b"{\"serial\":1.5,\"lineage\":\"l\"}").contains("serial"));
        assert!(e(b"{\"serial\":1}").contains("lineage"));
        assert!(e(b"{\"serial\":1,\"lineage\":2}").contains("lineage"));
        assert!(e(b"[1]").contains("object"));
        assert!(e(b"\xff").contains("UTF-8"));
    }
}
