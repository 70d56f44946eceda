//! `tflock admin upgrade-layout`: brings the configured Redis store to this build's
//! key layout (docs/redis-design.md, "Layout versions"), or with `--dry-run` counts
//! what that would move. Always on the store itself: a server upgrades its store when
//! it starts, so there is nothing to ask one; the backend is opened without joining
//! the sweep (a follower) and without upgrading while it connects, so a dry run
//! changes nothing.

use std::sync::Arc;

use tflock_config::{BackendKind, Loaded};
use tflock_core::{Backend, SystemClock};
use tflock_redis::{BackendOptions, LayoutReport, RedisBackend, SweepRole};

use crate::args::AdminCommand;
use crate::exit::{CliResult, Exit, Failure};
use crate::open::redis_config;
use crate::output::Out;

pub async fn run(loaded: &Loaded, command: AdminCommand, out: Out) -> CliResult<Exit> {
    match command {
        AdminCommand::UpgradeLayout { dry_run } => upgrade_layout(loaded, dry_run, out).await,
    }
}

async fn upgrade_layout(loaded: &Loaded, dry_run: bool, out: Out) -> CliResult<Exit> {
    let el = &loaded.config.enhanced_locking;
    if !matches!(el.backend, BackendKind::Redis) {
        return Err(Failure::usage(
            "upgrade-layout works on a Redis store (enhanced_locking.backend: redis, or \
             --backend redis); the embedded store has no key layout to upgrade",
        ));
    }
    let options = BackendOptions::default()
        .upgrade_layout(false)
        .sweep(SweepRole::Follower);
    let backend = RedisBackend::connect_with(
        redis_config(&el.redis),
        el.lock_settings(),
        Arc::new(SystemClock),
        options,
    )
    .await
    .map_err(|e| Failure::unavailable(format!("cannot start the Redis backend: {e}")))?;
    let report = backend.upgrade_layout(dry_run).await;
    backend.close().await;
    let report = report.map_err(Failure::from)?;
    let body = serde_json::to_value(&report)
        .map_err(|e| Failure::error(format!("cannot encode the report: {e}")))?;
    out.emit(&body, || render(&report))?;
    Ok(Exit::Success)
}

fn render(r: &LayoutReport) -> String {
    if r.buckets_upgraded == 0 {
        return format!(
            "the store is at key layout {}: nothing to upgrade\n",
            r.layout
        );
    }
    let verb = if r.dry_run { "would move" } else { "moved" };
    let mut s = format!(
        "key layout {}: {} of 64 buckets {}; {verb} {} resources, {} queue entries, {} \
         fencing token counters\n",
        r.layout,
        r.buckets_upgraded,
        if r.dry_run { "to upgrade" } else { "upgraded" },
        r.resources,
        r.entries,
        r.tokens,
    );
    if r.conflicts > 0 {
        s.push_str(&format!(
            "{} records were already in the new layout (servers of two builds ran at once): \
             the new ones were kept\n",
            r.conflicts
        ));
    }
    if r.dry_run {
        s.push_str("dry run: nothing was changed\n");
    }
    s
}
