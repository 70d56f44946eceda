//! The scripts' arguments, typed: one struct per script, whose [`ScriptArgs::argv`]
//! is the only place its positional `ARGV` order and protocol letters are written.
//! Each `argv` mirrors the header of its script in `lua/` (`ARGV[7]` on; the common
//! `ARGV[1..6]` are [`Prelude`], mirroring `prelude.lua`'s header). Numbers are sent
//! as decimal strings (µs for durations and instants), as the scripts expect.
//!
//! A leaf module: it knows the scripts and their reply types, nothing of the backend.

use std::time::Duration;

use serde::de::DeserializeOwned;
use tflock_core::{BackendError, InvalidRequest, Owner, Timestamp};

use crate::reply::{
    CancelReply, ExportReply, FenceReply, GenerationReply, ImportReply, LockReply, PullReply,
    QueueReply, RefreshReply, StatsReply, StatusReply, SweepReply, TransferReply, TryLockReply,
    UnlockReply, UpgradeReply, UserQueueReply, WaitEndReply,
};
use crate::scripts::{Function, Scripts};

/// Lua numbers are doubles: integers from 2^53 on are not kept exactly.
const LUA_EXACT: u64 = 1 << 53;

/// A duration in µs, as the scripts read it.
pub(crate) fn us(d: Duration) -> String {
    d.as_micros().to_string()
}

fn flag(on: bool) -> String {
    if on { "1" } else { "0" }.to_string()
}

/// A number the scripts keep exactly, as a string.
pub(crate) fn exact(v: u64, field: impl FnOnce() -> String) -> Result<String, InvalidRequest> {
    if v >= LUA_EXACT {
        return Err(InvalidRequest::new(
            field(),
            format!("{v} is not below 2^53, the largest integer the Redis backend keeps exact"),
        ));
    }
    Ok(v.to_string())
}

/// [`exact`] for a duration in µs.
pub(crate) fn exact_us(
    d: Duration,
    field: impl FnOnce() -> String,
) -> Result<String, InvalidRequest> {
    exact(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), field)
}

/// One script call's arguments: which script, its reply, whether it changes data,
/// and its own `ARGV` (from `ARGV[7]`).
pub(crate) trait ScriptArgs: Sync {
    /// What the script replies (besides the common `ev`/`ho`/`now`).
    type Reply: DeserializeOwned + Send;
    /// A changing script: it gets a fresh seed (`ARGV[5]`) and publishes its events
    /// (`ARGV[6]`); a read gets neither.
    const SEEDED: bool;
    /// The script this is for.
    fn script(scripts: &Scripts) -> &Function;
    /// `ARGV[7..]`, in the order of the script's header.
    fn argv(&self) -> Vec<String>;
}

/// `ARGV[1..6]`, common to every script (mirrors `prelude.lua`'s header).
pub(crate) struct Prelude<'a> {
    /// `ARGV[1]`: the injected clock's instant, or `None` for Redis's `TIME` (`''`).
    pub now: Option<Timestamp>,
    /// `ARGV[2]`: claim_timeout.
    pub claim_timeout: Duration,
    /// `ARGV[3]`: starvation_threshold.
    pub starvation_threshold: Duration,
    /// `ARGV[4]`: max_priority_boost.
    pub max_boost: u8,
    /// `ARGV[5]`: 32 random hex digits (changing scripts), else `''`.
    pub seed: &'a str,
    /// `ARGV[6]`: `''`, or `c`/`s` and this backend's instance id.
    pub publish: &'a str,
}

impl Prelude<'_> {
    pub fn argv(&self) -> Vec<String> {
        vec![
            self.now
                .map(|t| t.as_micros().to_string())
                .unwrap_or_default(),
            us(self.claim_timeout),
            us(self.starvation_threshold),
            self.max_boost.to_string(),
            self.seed.to_string(),
            self.publish.to_string(),
        ]
    }
}

/// An owner as the scripts store it: owner string, username, pull number, metadata.
pub(crate) struct OwnerArgs {
    pub owner: String,
    pub user: String,
    pub pull: String,
    pub meta: String,
}

impl OwnerArgs {
    pub fn of(o: &Owner) -> Result<OwnerArgs, BackendError> {
        let meta = serde_json::to_string(o)
            .map_err(|e| BackendError::Internal(format!("owner metadata: {e}")))?;
        let pull = o
            .pull
            .as_ref()
            .map(|p| p.num.to_string())
            .unwrap_or_default();
        Ok(OwnerArgs {
            owner: o.owner.clone(),
            user: o.username().unwrap_or("").to_string(),
            pull,
            meta,
        })
    }
}

/// try_lock.lua's `ARGV[14]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TryLockMode {
    /// `n`: answer now.
    NoWait,
    /// `w`: wait (queue as a waiter).
    Wait,
    /// `r`: reserve (queue as a reservation).
    Reserve,
}

/// try_lock.lua's arguments (mirrors its header, `ARGV[7]` to `ARGV[27]`).
pub(crate) struct TryLockArgs<'a> {
    pub storage_key: &'a str,
    pub owner: &'a OwnerArgs,
    pub priority: u8,
    pub ttl: Duration,
    pub mode: TryLockMode,
    /// The wait (`Wait`) or the reservation's lifetime (`Reserve`).
    pub span: Duration,
    pub request_id: &'a str,
    pub max_queue: usize,
    pub retention: Duration,
    pub priority_queue: bool,
    pub retries: bool,
    pub waiter_grace: Duration,
    /// Remember every answer (`a`), or only grants (`g`: retry-loop attempts).
    pub remember_all: bool,
    pub entry_id: &'a str,
    pub node: &'a str,
    pub lease_id: &'a str,
    pub lock_delay: Duration,
    pub knows_generation: bool,
}

impl ScriptArgs for TryLockArgs<'_> {
    type Reply = TryLockReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.try_lock
    }
    fn argv(&self) -> Vec<String> {
        vec![
            self.storage_key.to_string(),
            self.owner.owner.clone(),
            self.owner.user.clone(),
            self.owner.pull.clone(),
            self.owner.meta.clone(),
            self.priority.to_string(),
            us(self.ttl),
            match self.mode {
                TryLockMode::NoWait => "n",
                TryLockMode::Wait => "w",
                TryLockMode::Reserve => "r",
            }
            .to_string(),
            us(self.span),
            self.request_id.to_string(),
            self.max_queue.to_string(),
            us(self.retention),
            flag(self.priority_queue),
            flag(self.retries),
            us(self.waiter_grace),
            if self.remember_all { "a" } else { "g" }.to_string(),
            self.entry_id.to_string(),
            self.node.to_string(),
            self.lease_id.to_string(),
            us(self.lock_delay),
            flag(self.knows_generation),
        ]
    }
}

/// wait_end.lua's `ARGV[12]`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum WaitEndMode {
    /// `poll`: keep waiting unless granted or past the deadline.
    Poll,
    /// `end`: the deadline has come.
    End,
}

/// wait_end.lua's arguments (mirrors its header, `ARGV[7]` to `ARGV[14]`).
pub(crate) struct WaitEndArgs<'a> {
    pub storage_key: &'a str,
    pub entry_id: &'a str,
    pub owner: &'a str,
    pub request_id: &'a str,
    pub deadline: Timestamp,
    pub mode: WaitEndMode,
    /// What the wake-up said (`g`, `c`, `t`), as it came, or `''`.
    pub hint: &'a str,
    pub retention: Duration,
}

impl ScriptArgs for WaitEndArgs<'_> {
    type Reply = WaitEndReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.wait_end
    }
    fn argv(&self) -> Vec<String> {
        vec![
            self.storage_key.to_string(),
            self.entry_id.to_string(),
            self.owner.to_string(),
            self.request_id.to_string(),
            self.deadline.as_micros().to_string(),
            match self.mode {
                WaitEndMode::Poll => "poll",
                WaitEndMode::End => "end",
            }
            .to_string(),
            self.hint.to_string(),
            us(self.retention),
        ]
    }
}

/// abandon.lua's arguments (mirrors its header, `ARGV[7]` to `ARGV[9]`).
pub(crate) struct AbandonArgs<'a> {
    pub storage_key: &'a str,
    pub entry_id: &'a str,
    pub had_request_id: bool,
}

impl ScriptArgs for AbandonArgs<'_> {
    type Reply = StatusReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.abandon
    }
    fn argv(&self) -> Vec<String> {
        vec![
            self.storage_key.to_string(),
            self.entry_id.to_string(),
            flag(self.had_request_id),
        ]
    }
}

/// rollback.lua's arguments (mirrors its header, `ARGV[7]` and `ARGV[8]`).
pub(crate) struct RollbackArgs<'a> {
    pub storage_key: &'a str,
    pub lease: &'a str,
}

impl ScriptArgs for RollbackArgs<'_> {
    type Reply = StatusReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.rollback
    }
    fn argv(&self) -> Vec<String> {
        vec![self.storage_key.to_string(), self.lease.to_string()]
    }
}

/// Who unlocks (unlock.lua's `ARGV[8]` to `ARGV[10]`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum UnlockMode<'a> {
    /// `lease`: the holder, by its lease id.
    Lease(&'a str),
    /// `force`: an admin, optionally only the lease with the token it saw.
    Force(Option<u64>),
}

/// unlock.lua's arguments (mirrors its header, `ARGV[7]` to `ARGV[10]`).
pub(crate) struct UnlockArgs<'a> {
    pub storage_key: &'a str,
    pub how: UnlockMode<'a>,
}

impl ScriptArgs for UnlockArgs<'_> {
    type Reply = UnlockReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.unlock
    }
    fn argv(&self) -> Vec<String> {
        let (mode, lease, expected) = match self.how {
            UnlockMode::Lease(l) => ("lease", l, String::new()),
            UnlockMode::Force(t) => ("force", "", t.map(|t| t.to_string()).unwrap_or_default()),
        };
        vec![
            self.storage_key.to_string(),
            mode.to_string(),
            lease.to_string(),
            expected,
        ]
    }
}

/// unlock_pull.lua's arguments (mirrors its header, `ARGV[7]` to `ARGV[9]`).
pub(crate) struct UnlockPullArgs<'a> {
    pub repo: &'a str,
    pub pull: u64,
}

impl ScriptArgs for UnlockPullArgs<'_> {
    type Reply = PullReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.unlock_pull
    }
    fn argv(&self) -> Vec<String> {
        vec![
            crate::keys::key_part(self.repo),
            self.pull.to_string(),
            format!("{}#{}", self.repo, self.pull),
        ]
    }
}

/// refresh.lua's arguments (mirrors its header, `ARGV[7]` to `ARGV[9]`).
pub(crate) struct RefreshArgs<'a> {
    pub storage_key: &'a str,
    pub lease: &'a str,
    pub ttl: Duration,
}

impl ScriptArgs for RefreshArgs<'_> {
    type Reply = RefreshReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.refresh
    }
    fn argv(&self) -> Vec<String> {
        vec![
            self.storage_key.to_string(),
            self.lease.to_string(),
            us(self.ttl),
        ]
    }
}

/// Who transfers (transfer.lua's `ARGV[8]` and `ARGV[9]`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum TransferMode<'a> {
    /// `lease`: the holder, by its lease id.
    Lease(&'a str),
    /// `admin`.
    Admin,
}

/// transfer.lua's arguments (mirrors its header, `ARGV[7]` to `ARGV[13]`).
pub(crate) struct TransferArgs<'a> {
    pub storage_key: &'a str,
    pub auth: TransferMode<'a>,
    pub to: &'a OwnerArgs,
}

impl ScriptArgs for TransferArgs<'_> {
    type Reply = TransferReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.transfer
    }
    fn argv(&self) -> Vec<String> {
        // The mode is explicit: an empty lease id never means admin.
        let (mode, lease) = match self.auth {
            TransferMode::Lease(l) => ("lease", l),
            TransferMode::Admin => ("admin", ""),
        };
        vec![
            self.storage_key.to_string(),
            mode.to_string(),
            lease.to_string(),
            self.to.owner.clone(),
            self.to.user.clone(),
            self.to.pull.clone(),
            self.to.meta.clone(),
        ]
    }
}

/// cancel.lua's arguments (mirrors its header, `ARGV[7]` and `ARGV[8]`).
pub(crate) struct CancelArgs<'a> {
    pub entry_id: &'a str,
    /// The storage key the entry must still wait in, or `''` for any.
    pub expected: &'a str,
}

impl ScriptArgs for CancelArgs<'_> {
    type Reply = CancelReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.cancel
    }
    fn argv(&self) -> Vec<String> {
        vec![self.entry_id.to_string(), self.expected.to_string()]
    }
}

/// sweep.lua's arguments (mirrors its header, `ARGV[7]` to `ARGV[9]`).
pub(crate) struct SweepArgs<'a> {
    pub limit: usize,
    /// The leader's epoch, or `None` for an unfenced sweep (`''`).
    pub epoch: Option<u64>,
    /// Servers declared dead, as JSON, or `''`.
    pub dead: &'a str,
}

impl ScriptArgs for SweepArgs<'_> {
    type Reply = SweepReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.sweep
    }
    fn argv(&self) -> Vec<String> {
        vec![
            self.limit.to_string(),
            self.epoch.map(|e| e.to_string()).unwrap_or_default(),
            self.dead.to_string(),
        ]
    }
}

/// fence.lua's arguments (mirrors its header, `ARGV[7]`).
pub(crate) struct FenceArgs {
    pub epoch: u64,
}

impl ScriptArgs for FenceArgs {
    type Reply = FenceReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.fence
    }
    fn argv(&self) -> Vec<String> {
        vec![self.epoch.to_string()]
    }
}

/// get_lock.lua's arguments (mirrors its header, `ARGV[7]`).
pub(crate) struct GetLockArgs<'a> {
    pub storage_key: &'a str,
}

impl ScriptArgs for GetLockArgs<'_> {
    type Reply = LockReply;
    const SEEDED: bool = false;
    fn script(s: &Scripts) -> &Function {
        &s.get_lock
    }
    fn argv(&self) -> Vec<String> {
        vec![self.storage_key.to_string()]
    }
}

/// queue_status.lua's arguments (mirrors its header, `ARGV[7]`).
pub(crate) struct QueueStatusArgs<'a> {
    pub storage_key: &'a str,
}

impl ScriptArgs for QueueStatusArgs<'_> {
    type Reply = QueueReply;
    const SEEDED: bool = false;
    fn script(s: &Scripts) -> &Function {
        &s.queue_status
    }
    fn argv(&self) -> Vec<String> {
        vec![self.storage_key.to_string()]
    }
}

/// user_queue.lua's arguments (mirrors its header, `ARGV[7]`).
pub(crate) struct UserQueueArgs<'a> {
    pub username: &'a str,
}

impl ScriptArgs for UserQueueArgs<'_> {
    type Reply = UserQueueReply;
    const SEEDED: bool = false;
    fn script(s: &Scripts) -> &Function {
        &s.user_queue
    }
    fn argv(&self) -> Vec<String> {
        vec![self.username.to_string()]
    }
}

/// stats.lua has no arguments of its own.
pub(crate) struct StatsArgs;

impl ScriptArgs for StatsArgs {
    type Reply = StatsReply;
    const SEEDED: bool = false;
    fn script(s: &Scripts) -> &Function {
        &s.stats
    }
    fn argv(&self) -> Vec<String> {
        Vec::new()
    }
}

/// export.lua's arguments (mirrors its header, `ARGV[7]` and `ARGV[8]`).
pub(crate) struct ExportArgs<'a> {
    pub after: &'a str,
    pub page: usize,
}

impl ScriptArgs for ExportArgs<'_> {
    type Reply = ExportReply;
    const SEEDED: bool = false;
    fn script(s: &Scripts) -> &Function {
        &s.export
    }
    fn argv(&self) -> Vec<String> {
        vec![self.after.to_string(), self.page.to_string()]
    }
}

/// import.lua's arguments (mirrors its header, `ARGV[7]` to `ARGV[12]`).
pub(crate) struct ImportArgs<'a> {
    pub storage_key: &'a str,
    pub dry_run: bool,
    pub overwrite: bool,
    /// The snapshot's last token, checked by [`exact`].
    pub last_token: &'a str,
    /// The lock as JSON, or `''`.
    pub lock: &'a str,
    /// The reservations as a JSON list.
    pub entries: &'a str,
}

impl ScriptArgs for ImportArgs<'_> {
    type Reply = ImportReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.import
    }
    fn argv(&self) -> Vec<String> {
        vec![
            self.storage_key.to_string(),
            flag(self.dry_run),
            flag(self.overwrite),
            self.last_token.to_string(),
            self.lock.to_string(),
            self.entries.to_string(),
        ]
    }
}

/// generation.lua's arguments (mirrors its header, `ARGV[7]` to `ARGV[12]`).
pub(crate) struct GenerationArgs<'a> {
    /// The marker id this server saw last, or `''`.
    pub seen_id: &'a str,
    /// A fresh random id for a new generation.
    pub fresh: &'a str,
    pub lock_delay: Duration,
    pub instance_id: &'a str,
    /// The `seen` value this server wrote last, or `''`.
    pub seen: &'a str,
    pub count: u64,
}

impl ScriptArgs for GenerationArgs<'_> {
    type Reply = GenerationReply;
    const SEEDED: bool = false;
    fn script(s: &Scripts) -> &Function {
        &s.generation
    }
    fn argv(&self) -> Vec<String> {
        vec![
            self.seen_id.to_string(),
            self.fresh.to_string(),
            us(self.lock_delay),
            self.instance_id.to_string(),
            self.seen.to_string(),
            self.count.to_string(),
        ]
    }
}

/// upgrade.lua's arguments (mirrors its header, `ARGV[7]` on).
pub(crate) struct UpgradeArgs<'a> {
    pub dry_run: bool,
    /// Layout-1 storage keys and their layout-2 resource keys.
    pub pairs: &'a [(String, String)],
}

impl ScriptArgs for UpgradeArgs<'_> {
    type Reply = UpgradeReply;
    const SEEDED: bool = true;
    fn script(s: &Scripts) -> &Function {
        &s.upgrade
    }
    fn argv(&self) -> Vec<String> {
        let mut v = Vec::with_capacity(1 + 2 * self.pairs.len());
        v.push(flag(self.dry_run));
        for (old, new) in self.pairs {
            v.push(old.clone());
            v.push(new.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_lock_argv_is_in_header_order() {
        let owner = OwnerArgs {
            owner: "o".into(),
            user: "u".into(),
            pull: "7".into(),
            meta: "{}".into(),
        };
        let a = TryLockArgs {
            storage_key: "sk",
            owner: &owner,
            priority: 2,
            ttl: Duration::from_secs(1),
            mode: TryLockMode::Reserve,
            span: Duration::from_millis(5),
            request_id: "rid",
            max_queue: 10,
            retention: Duration::from_secs(2),
            priority_queue: true,
            retries: false,
            waiter_grace: Duration::from_secs(3),
            remember_all: false,
            entry_id: "e",
            node: "n",
            lease_id: "l",
            lock_delay: Duration::from_secs(4),
            knows_generation: true,
        };
        let argv = a.argv();
        assert_eq!(argv.len(), 27 - 6);
        assert_eq!(
            argv,
            [
                "sk", "o", "u", "7", "{}", "2", "1000000", "r", "5000", "rid", "10", "2000000",
                "1", "0", "3000000", "g", "e", "n", "l", "4000000", "1"
            ]
        );
    }
}
