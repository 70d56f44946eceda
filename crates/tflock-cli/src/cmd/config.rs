//! `tflock config schema | validate [FILE] | show | set KEY VALUE`.
//!
//! `set` takes the spec's key form (`tflock config set enhanced_locking.legacy_fallback
//! false`; the `enhanced_locking.` prefix may be left out), types the value by the
//! key's default (booleans, numbers, comma-separated lists, strings), edits only the
//! key's line of the file, and writes the file only when the result still loads.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tflock_config::load::{leaf_keys, nearest};
use tflock_config::{Sources, yaml_edit};

use crate::args::{ConfigCommand, GlobalArgs};
use crate::exit::{CliResult, Exit, Failure};
use crate::output::{Out, table};

pub fn run(global: &GlobalArgs, command: ConfigCommand, out: Out) -> CliResult<Exit> {
    match command {
        ConfigCommand::Schema => {
            let schema = tflock_config::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).expect("schemas serialise")
            );
            Ok(Exit::Success)
        }
        ConfigCommand::Validate { file } => validate(global, file, out),
        ConfigCommand::Show => {
            let loaded = crate::load(global, Value::Null, false)?;
            let rows = tflock_config::show(&loaded);
            let json_rows: Vec<Value> = rows
                .iter()
                .map(|(k, v, s)| json!({"key": k, "value": v, "source": s}))
                .collect();
            out.emit(&json_rows, || {
                let mut head = format!(
                    "config file: {}\n",
                    loaded
                        .file
                        .as_ref()
                        .map(|f| f.display().to_string())
                        .unwrap_or_else(|| "none".into())
                );
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|(k, v, s)| {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            Value::Null => "-".into(),
                            other => other.to_string(),
                        };
                        vec![k.clone(), v, s.clone()]
                    })
                    .collect();
                head.push_str(&table(&["KEY", "VALUE", "SOURCE"], &cells));
                head
            })?;
            Ok(Exit::Success)
        }
        ConfigCommand::Set { key, value } => set(global, &key, &value, out),
    }
}

fn validate(global: &GlobalArgs, file: Option<PathBuf>, out: Out) -> CliResult<Exit> {
    let mut sources = Sources::standard(global.config.clone(), Value::Null);
    if let Some(f) = file {
        sources.file = Some(f);
    }
    let loaded = tflock_config::load(&sources)?;
    let name = sources
        .file
        .as_ref()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "no config file (defaults and environment)".into());
    out.emit(
        &json!({"file": sources.file, "valid": true, "warnings": loaded.warnings}),
        || {
            let mut s = format!("{name}: valid\n");
            for w in &loaded.warnings {
                s.push_str(&format!("warning: {w}\n"));
            }
            s
        },
    )?;
    Ok(Exit::Success)
}

/// The file `set` edits: `--config`, `$TFLOCK_CONFIG`, else `./tflock.yaml`
/// (created when missing).
fn file_to_edit(global: &GlobalArgs) -> PathBuf {
    global
        .config
        .clone()
        .or_else(|| std::env::var_os("TFLOCK_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("tflock.yaml"))
}

/// The dotted key `set` names, in full form.
fn full_key(key: &str) -> CliResult<(String, Value)> {
    let keys = leaf_keys();
    let key = match key {
        "log-level" => "log_level".to_string(),
        k if k.starts_with("enhanced_locking.") || k == "log_level" => k.to_string(),
        k => format!("enhanced_locking.{k}"),
    };
    match keys.iter().find(|(k, _)| *k == key) {
        Some((k, default)) => Ok((k.clone(), default.clone())),
        None => {
            let hint = nearest(&key, keys.iter().map(|(k, _)| k.as_str()))
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            Err(Failure::usage(format!(
                "{key} is not a tflock setting{hint}; `tflock config show` lists them all"
            )))
        }
    }
}

/// `raw` as a YAML value of the key's type.
fn yaml_value(key: &str, raw: &str, default: &Value) -> CliResult<String> {
    let bad = |what: &str| Failure::usage(format!("{key}: '{raw}' is not {what}"));
    Ok(match default {
        Value::Bool(_) => match raw.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => "true".into(),
            "false" | "no" | "off" | "0" => "false".into(),
            _ => return Err(bad("a boolean (true or false)")),
        },
        Value::Number(_) => {
            if raw.trim().parse::<i64>().is_ok() || raw.trim().parse::<f64>().is_ok() {
                raw.trim().to_string()
            } else {
                return Err(bad("a number"));
            }
        }
        Value::Array(_) => {
            let items: Vec<String> = raw
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|s| s.trim().trim_matches('"').trim_matches('\''))
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()).to_string())
                .collect();
            format!("[{}]", items.join(", "))
        }
        _ => Value::String(raw.to_string()).to_string(),
    })
}

fn set(global: &GlobalArgs, key: &str, raw: &str, out: Out) -> CliResult<Exit> {
    let (key, default) = full_key(key)?;
    let value = yaml_value(&key, raw, &default)?;
    let path = file_to_edit(global);
    let old = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Failure::usage(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let new = yaml_edit::set(&old, &key, &value);
    // Check the edited file loads before replacing the old one.
    let tmp = sibling(&path, ".tflock-set.tmp");
    std::fs::write(&tmp, &new)
        .map_err(|e| Failure::error(format!("cannot write {}: {e}", tmp.display())))?;
    let check = tflock_config::load(&Sources {
        file: Some(tmp.clone()),
        env: std::env::vars().collect(),
        flags: Value::Null,
    });
    if let Err(e) = check {
        let _ = std::fs::remove_file(&tmp);
        let msg = e
            .to_string()
            .replace(&tmp.display().to_string(), &path.display().to_string());
        return Err(Failure::usage(format!(
            "{} left unchanged: with {key} = {value} it would not load: {msg}",
            path.display()
        )));
    }
    std::fs::rename(&tmp, &path)
        .map_err(|e| Failure::error(format!("cannot replace {}: {e}", path.display())))?;
    let line = yaml_edit::locate(&new, &key);
    out.emit(
        &json!({"file": path, "key": key, "value": serde_json::from_str::<Value>(&value).unwrap_or(Value::String(value.clone())), "line": line}),
        || match line {
            Some(l) => format!("{}:{l}: {key} = {value}", path.display()),
            None => format!("{}: {key} = {value}", path.display()),
        },
    )?;
    Ok(Exit::Success)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_by_the_keys_default() {
        assert_eq!(yaml_value("k", "False", &json!(true)).unwrap(), "false");
        assert!(yaml_value("k", "maybe", &json!(true)).is_err());
        assert_eq!(yaml_value("k", "30", &json!(1)).unwrap(), "30");
        assert_eq!(
            yaml_value("k", "a:1, b:2", &json!([])).unwrap(),
            r#"["a:1", "b:2"]"#
        );
        assert_eq!(yaml_value("k", "30s", &json!("1m")).unwrap(), r#""30s""#);
    }

    #[test]
    fn keys_may_leave_out_enhanced_locking() {
        assert_eq!(
            full_key("legacy_fallback").unwrap().0,
            "enhanced_locking.legacy_fallback"
        );
        assert_eq!(
            full_key("enhanced_locking.redis.pool_size").unwrap().0,
            "enhanced_locking.redis.pool_size"
        );
        let e = full_key("enhanced_locking.legacy_fallbak").unwrap_err();
        assert!(e.message.contains("legacy_fallback"), "{}", e.message);
    }
}
