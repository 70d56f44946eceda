//! Prints every configuration key with its default and environment variable, as
//! Markdown table rows (used to keep docs/configuration.md complete).
fn main() {
    for (key, default) in tflock_config::load::leaf_keys() {
        let d = match &default {
            serde_json::Value::Null => "none".to_string(),
            serde_json::Value::String(s) => format!("`{s}`"),
            other => format!("`{other}`"),
        };
        println!(
            "| `{key}` | {d} | `{}` |",
            tflock_config::load::env_name_of(&key)
        );
    }
}
