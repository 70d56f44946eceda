//! `tflock cluster status`: the servers sharing the store, the leader and its epoch.
//! Through a server it prints `GET /api/cluster`; on Redis opened directly it reads
//! the cluster registry itself (without joining it) and prints the same shape. The
//! embedded store has no cluster: this process alone would be listed, so it says so.

use serde_json::{Value, json};
use tflock_config::Loaded;

use crate::args::{ClusterCommand, GlobalArgs};
use crate::exit::{CliResult, Exit, Failure};
use crate::output::{Out, table};
use crate::target::{Target, connect};

pub async fn run(
    global: &GlobalArgs,
    loaded: &Loaded,
    command: ClusterCommand,
    out: Out,
) -> CliResult<Exit> {
    match command {
        ClusterCommand::Status => status(global, loaded, out).await,
    }
}

async fn status(global: &GlobalArgs, loaded: &Loaded, out: Out) -> CliResult<Exit> {
    let target = connect(global, loaded).await?;
    let body = read(&target).await;
    target.close().await;
    let body = body?;
    out.emit(&body, || render(&target.describe(), &body))?;
    Ok(Exit::Success)
}

async fn read(target: &Target) -> CliResult<Value> {
    match target {
        Target::Http(h) => h.cluster().await.map_err(Failure::from),
        Target::Direct(o) => match &o.redis {
            Some(redis) => {
                let s = tflock_cluster::read_status(redis.clone())
                    .await
                    .map_err(Failure::from)?;
                // The shape of `GET /api/cluster`.
                let nodes: Vec<Value> = s
                    .nodes
                    .iter()
                    .map(|n| {
                        json!({
                            "id": n.id, "address": n.address, "version": n.version,
                            "backend": "redis", "started_at": n.started_at, "self": false,
                            "last_heartbeat": n.last_heartbeat,
                        })
                    })
                    .collect();
                Ok(json!({"nodes": nodes, "leader": s.leader, "epoch": s.epoch}))
            }
            None => Err(Failure::usage(
                "the embedded store has no cluster: one server serves it (use Redis to run several)",
            )),
        },
    }
}

fn render(target: &str, body: &Value) -> String {
    let leader = body["leader"].as_str();
    let mut s = match (leader, body["epoch"].as_u64()) {
        (Some(l), Some(e)) => format!("leader {l} (epoch {e}) ({target})\n"),
        (None, Some(e)) => format!("no leader now (last epoch {e}) ({target})\n"),
        _ => format!("no cluster ({target})\n"),
    };
    let rows: Vec<Vec<String>> = body["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let id = n["id"].as_str().unwrap_or("-");
            let mut role = if Some(id) == leader {
                "leader"
            } else {
                "follower"
            }
            .to_string();
            if n["self"] == true {
                role.push_str(" (answered)");
            }
            vec![
                id.to_string(),
                role,
                n["address"].as_str().unwrap_or("-").to_string(),
                n["version"].as_str().unwrap_or("-").to_string(),
                n["started_at"].as_str().unwrap_or("-").to_string(),
                n["last_heartbeat"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    s.push_str(&table(
        &[
            "NODE",
            "ROLE",
            "ADDRESS",
            "VERSION",
            "STARTED",
            "LAST HEARTBEAT",
        ],
        &rows,
    ));
    s
}
