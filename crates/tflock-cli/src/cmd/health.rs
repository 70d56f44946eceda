//! `tflock health`: the backend's health, circuit breaker state, health metrics and
//! performance metrics. Through a server it prints `GET /api/health/locking`; on a
//! backend opened directly it runs one health check and prints the same report the
//! server would. Exit 0 when healthy, 4 when not.

use serde_json::Value;
use tflock_config::Loaded;

use crate::args::GlobalArgs;
use crate::exit::{CliResult, Exit, Failure};
use crate::output::Out;
use crate::target::{Target, connect};

pub async fn run(global: &GlobalArgs, loaded: &Loaded, out: Out) -> CliResult<Exit> {
    let target = connect(global, loaded).await?;
    let result = report(&target).await;
    target.close().await;
    let (healthy, body) = result?;
    out.emit(&body, || render(healthy, &target.describe(), &body))?;
    Ok(if healthy {
        Exit::Success
    } else {
        Exit::Unavailable
    })
}

async fn report(target: &Target) -> CliResult<(bool, Value)> {
    match target {
        Target::Http(h) => {
            let (status, body) = h.health_report().await.map_err(Failure::from)?;
            Ok((status == 200, body))
        }
        Target::Direct(o) => {
            let check = o.inner.health_check().await.map_err(|e| e.to_string());
            o.health.record_check(check);
            let metrics = o.backend.get_metrics().await.ok();
            let report = o.health.report(metrics);
            let body = serde_json::to_value(&report)
                .map_err(|e| Failure::error(format!("cannot encode the report: {e}")))?;
            Ok((report.healthy, body))
        }
    }
}

/// `healthy` or `UNHEALTHY`, then every leaf of the report as `path: value`.
fn render(healthy: bool, target: &str, body: &Value) -> String {
    let mut s = format!(
        "{} ({target})\n",
        if healthy { "healthy" } else { "UNHEALTHY" }
    );
    let mut rows = Vec::new();
    leaves("", body, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        s.push_str(&format!("  {k:<width$}  {v}\n"));
    }
    s
}

fn leaves(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&key, v, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Null => out.push((prefix.to_string(), "-".into())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}
