//! Line-level work on the YAML text itself: find the line of a key (for error
//! messages) and set a key in place (`tflock config set`) while leaving every other
//! line, comment and blank exactly as it was.
//!
//! This handles the block mappings config files are written in (`key: value`,
//! nested by indentation). Flow mappings (`{a: 1}`) are not edited in place.

/// One `key:` line.
struct KeyLine {
    line: usize,
    indent: usize,
    path: String,
    /// Byte offset in the line just after the `:`.
    value_at: usize,
}

fn key_lines(text: &str) -> Vec<KeyLine> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty()
            || trimmed.starts_with('#')
            || trimmed.starts_with('-')
            || trimmed.starts_with("---")
        {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some(colon) = trimmed.find(':') else {
            continue;
        };
        let key = trimmed[..colon]
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            continue;
        }
        let after = &trimmed[colon + 1..];
        if !(after.is_empty() || after.starts_with(' ') || after.starts_with('\t')) {
            continue;
        }
        while stack.last().is_some_and(|(ind, _)| *ind >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_string()));
        let path = stack
            .iter()
            .map(|(_, k)| k.as_str())
            .collect::<Vec<_>>()
            .join(".");
        out.push(KeyLine {
            line: i,
            indent,
            path,
            value_at: indent + colon + 1,
        });
    }
    out
}

/// The 1-based line of dotted `key` (e.g. `enhanced_locking.redis.pool_size`); for a
/// file written as a fragment (no `enhanced_locking:` at the top) the key is also
/// looked up without that first part.
pub fn locate(text: &str, key: &str) -> Option<usize> {
    let lines = key_lines(text);
    let short = key.strip_prefix("enhanced_locking.");
    lines
        .iter()
        .find(|l| l.path == key || Some(l.path.as_str()) == short)
        .map(|l| l.line + 1)
}

/// Sets dotted `key` to `value` (a YAML scalar or flow sequence, already formatted),
/// editing only the lines that hold that key, or adding it under its nearest parent.
pub fn set(text: &str, key: &str, value: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let kls = key_lines(text);
    let fragment =
        !kls.iter().any(|l| l.path == "enhanced_locking") && kls.iter().any(|l| l.indent == 0);
    let want = if fragment {
        key.strip_prefix("enhanced_locking.")
            .unwrap_or(key)
            .to_string()
    } else {
        key.to_string()
    };
    let mut out: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    if let Some(kl) = kls.iter().find(|l| l.path == want) {
        // Replace the value on the key's line and drop a block value below it.
        let line = lines[kl.line];
        let rest = &line[kl.value_at..];
        let comment = match rest.find(" #") {
            Some(i) => {
                // Keep the spacing before the comment as it was.
                let start = rest[..i].trim_end().len();
                &rest[start
                    .max(rest[..i].len() - rest[..i].trim_start().len())
                    .min(i)..]
            }
            None => "",
        };
        out[kl.line] = format!("{} {}{}", &line[..kl.value_at], value, comment);
        let mut end = kl.line + 1;
        while end < lines.len() {
            let l = lines[end];
            let t = l.trim_start();
            if t.is_empty() {
                end += 1;
                continue;
            }
            let ind = l.len() - t.len();
            if ind > kl.indent || (ind == kl.indent && t.starts_with('-')) {
                end += 1;
            } else {
                break;
            }
        }
        // Keep trailing blank lines that belong to what follows.
        while end > kl.line + 1 && lines[end - 1].trim().is_empty() {
            end -= 1;
        }
        out.drain(kl.line + 1..end);
        return join(out, text);
    }
    // Not present: find the deepest existing parent and add the missing parts under it.
    let parts: Vec<&str> = want.split('.').collect();
    let mut parent: Option<&KeyLine> = None;
    let mut depth = 0;
    for d in (1..parts.len()).rev() {
        let p = parts[..d].join(".");
        if let Some(kl) = kls.iter().find(|l| l.path == p) {
            parent = Some(kl);
            depth = d;
            break;
        }
    }
    let (insert_at, base_indent) = match parent {
        Some(p) => {
            // After the parent's block.
            let mut end = p.line + 1;
            let mut child_indent = p.indent + 2;
            let mut seen_child = false;
            while end < lines.len() {
                let l = lines[end];
                let t = l.trim_start();
                if t.is_empty() || t.starts_with('#') {
                    end += 1;
                    continue;
                }
                let ind = l.len() - t.len();
                if ind > p.indent {
                    if !seen_child {
                        child_indent = ind;
                        seen_child = true;
                    }
                    end += 1;
                } else {
                    break;
                }
            }
            while end > p.line + 1 && lines[end - 1].trim().is_empty() {
                end -= 1;
            }
            (end, child_indent)
        }
        None => (lines.len(), 0),
    };
    let step = if parent.is_some() {
        base_indent - parent.map_or(0, |p| p.indent)
    } else {
        2
    };
    let mut new_lines = Vec::new();
    for (i, part) in parts[depth..].iter().enumerate() {
        let indent = " ".repeat(base_indent + i * step.max(2));
        if depth + i == parts.len() - 1 {
            new_lines.push(format!("{indent}{part}: {value}"));
        } else {
            new_lines.push(format!("{indent}{part}:"));
        }
    }
    for (i, l) in new_lines.into_iter().enumerate() {
        out.insert(insert_at + i, l);
    }
    join(out, text)
}

fn join(lines: Vec<String>, original: &str) -> String {
    let mut s = lines.join("\n");
    if original.ends_with('\n') || original.is_empty() {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# tflock\nenhanced_locking:\n  backend: \"redis\"   # the store\n  redis:\n    addresses:\n      - \"a:1\"\n      - \"b:2\"\n    pool_size: 20\n\n  max_queue_size: 10\n";

    #[test]
    fn locates_nested_keys() {
        assert_eq!(locate(DOC, "enhanced_locking.redis.pool_size"), Some(8));
        assert_eq!(locate(DOC, "enhanced_locking.max_queue_size"), Some(10));
        assert_eq!(locate(DOC, "enhanced_locking.redis.nope"), None);
    }

    #[test]
    fn set_replaces_a_scalar_and_keeps_comments() {
        let out = set(DOC, "enhanced_locking.backend", "embedded");
        assert!(out.contains("  backend: embedded   # the store\n"), "{out}");
        assert_eq!(out.lines().count(), DOC.lines().count());
        assert!(out.starts_with("# tflock\n"));
    }

    #[test]
    fn set_replaces_a_block_list() {
        let out = set(DOC, "enhanced_locking.redis.addresses", "[\"c:3\"]");
        assert!(
            out.contains("    addresses: [\"c:3\"]\n    pool_size: 20\n"),
            "{out}"
        );
    }

    #[test]
    fn set_adds_missing_keys_under_their_parent() {
        let out = set(
            DOC,
            "enhanced_locking.redis.circuit_breaker.failure_threshold",
            "7",
        );
        assert!(
            out.contains("    pool_size: 20\n    circuit_breaker:\n      failure_threshold: 7\n"),
            "{out}"
        );
        let out = set("", "enhanced_locking.backend", "redis");
        assert_eq!(out, "enhanced_locking:\n  backend: redis\n");
    }
}
