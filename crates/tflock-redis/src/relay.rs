//! Events from every server: each script publishes the events it caused (see
//! `publish` in `prelude.lua`), in the same script as the change, on Redis pub/sub;
//! every backend that has subscribers receives them here and re-broadcasts those of
//! other backends on its own [`tflock_core::Backend::subscribe`] channel.
//!
//! Channels: on Redis Cluster (7.0 or later) sharded pub/sub, one channel per bucket
//! (`P{b:NN}:events`, `SPUBLISH`/`SSUBSCRIBE`), so a message only travels within its
//! bucket's shard; elsewhere, and on a cluster without sharded pub/sub, classic
//! `PUBLISH` on one channel `<key_prefix>events`. `docs/cluster.md` has the measured
//! cost of each.
//!
//! Each message carries its origin (the publishing backend's instance id: a backend
//! skips its own, which it already delivered from the script's reply) and an id (a
//! message seen twice, e.g. across a resubscription, is delivered once). Pub/sub is
//! at most once: events published while this backend is reconnecting are not
//! delivered to it. Its own events never depend on pub/sub.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tflock_core::BackendError;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::backend::Inner;
use crate::conn::EventsConn;
use crate::keys::BUCKETS;
use crate::options::EventChannels;
use crate::reply::Published;

/// How many message ids are remembered for de-duplication.
const SEEN: usize = 8192;
/// How often the connection is checked (standalone, Sentinel: PING and "is the
/// script connection still on the same node?").
const CHECK: Duration = Duration::from_secs(2);
/// How often a cluster connection subscribes again to every bucket's channel
/// (idempotent), in case a failover lost a subscription.
const RESUBSCRIBE: Duration = Duration::from_secs(10);

/// Message ids seen lately.
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    fn new() -> Self {
        Seen {
            set: HashSet::with_capacity(SEEN),
            order: VecDeque::with_capacity(SEEN),
        }
    }

    /// False when `id` was seen already.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// Starts the relay once, inside a Tokio runtime.
pub(crate) fn start(inner: &Arc<Inner>) {
    if inner.channels == EventChannels::Off || inner.relay_started.swap(true, Ordering::AcqRel) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(run(Arc::downgrade(inner)));
        }
        Err(_) => inner.relay_started.store(false, Ordering::Release),
    }
}

/// Subscribes to the events channels on `conn`.
async fn subscribe(inner: &Inner, conn: &mut EventsConn) -> redis::RedisResult<()> {
    match conn {
        // Sharded channels are only used on a cluster.
        EventsConn::Single(c) => c.subscribe(inner.classic_channel()).await,
        EventsConn::Cluster(c) => match inner.channels {
            // One slot per call: a multi-channel SSUBSCRIBE must stay within a slot.
            EventChannels::Sharded => {
                for b in &inner.buckets {
                    c.ssubscribe(format!("{b}events")).await?;
                }
                Ok(())
            }
            // Classic messages reach every node of a cluster: one node suffices.
            _ => c.subscribe(inner.classic_channel()).await,
        },
    }
}

async fn connect(
    inner: &Inner,
    push: tokio::sync::mpsc::UnboundedSender<PushInfo>,
) -> Result<(EventsConn, u64), BackendError> {
    let (mut conn, generation) = inner.conn.events_connection(push).await?;
    match tokio::time::timeout(inner.conn.read_timeout() * 2, subscribe(inner, &mut conn)).await {
        Ok(Ok(())) => Ok((conn, generation)),
        Ok(Err(e)) => Err(BackendError::Unavailable(format!(
            "redis: cannot subscribe to the events channel: {e}"
        ))),
        Err(_) => Err(BackendError::Unavailable(
            "redis: no answer to SUBSCRIBE in time".into(),
        )),
    }
}

/// The relay task: connect, subscribe, deliver; reconnect with back-off. Ends at
/// close or when the backend is dropped.
async fn run(weak: Weak<Inner>) {
    let Some(first) = weak.upgrade() else { return };
    let mut closed = first.closed.subscribe();
    let mut cluster_rx = first.conn.take_cluster_pushes();
    drop(first);
    let mut seen = Seen::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.is_closed() {
            return;
        }
        let (push, single_rx) = unbounded_channel();
        let mut single_rx: UnboundedReceiver<PushInfo> = single_rx;
        let connected = tokio::select! {
            r = connect(&inner, push) => r,
            _ = async { let _ = closed.wait_for(|c| *c).await; } => return,
        };
        drop(inner);
        let (mut conn, generation) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("the events relay cannot connect, retrying: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = async { let _ = closed.wait_for(|c| *c).await; } => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut check = tokio::time::interval(CHECK);
        check.tick().await;
        let mut resubscribe = tokio::time::interval(RESUBSCRIBE);
        resubscribe.tick().await;
        loop {
            let rx = match &mut cluster_rx {
                Some(rx) => rx,
                None => &mut single_rx,
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => break,
                    Some(p) if p.kind == PushKind::Disconnection
                        && matches!(conn, EventsConn::Single(_)) => break,
                    Some(p) => {
                        let Some(inner) = weak.upgrade() else { return };
                        deliver(&inner, &mut seen, p);
                    }
                },
                _ = check.tick(), if matches!(conn, EventsConn::Single(_)) => {
                    let Some(inner) = weak.upgrade() else { return };
                    if !alive(&inner, &mut conn, generation).await {
                        break;
                    }
                }
                _ = resubscribe.tick(), if matches!(conn, EventsConn::Cluster(_)) => {
                    let Some(inner) = weak.upgrade() else { return };
                    let again = tokio::time::timeout(
                        inner.conn.read_timeout() * 2,
                        subscribe(&inner, &mut conn),
                    )
                    .await;
                    if !matches!(again, Ok(Ok(()))) {
                        tracing::debug!("the events relay could not subscribe again");
                    }
                }
                _ = async { let _ = closed.wait_for(|c| *c).await; } => return,
            }
        }
        tracing::debug!("the events relay lost its connection; reconnecting");
    }
}

/// Whether a standalone/Sentinel events connection still serves: it answers PING,
/// and the script connection still uses the node it was opened on (after a Sentinel
/// failover the script connection moves; the events connection follows).
async fn alive(inner: &Inner, conn: &mut EventsConn, generation: u64) -> bool {
    if inner
        .conn
        .current_generation()
        .is_some_and(|g| g != generation)
    {
        return false;
    }
    let EventsConn::Single(c) = conn else {
        return true;
    };
    let ping = redis::cmd("PING");
    matches!(
        tokio::time::timeout(inner.conn.read_timeout(), ping.query_async::<Value>(c)).await,
        Ok(Ok(_))
    )
}

/// Re-broadcasts a message of another backend.
fn deliver(inner: &Inner, seen: &mut Seen, push: PushInfo) {
    if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
        return;
    }
    let Some(payload) = push.data.get(1) else {
        return;
    };
    let bytes: &[u8] = match payload {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.as_bytes(),
        _ => return,
    };
    let msg: Published = match serde_json::from_slice(bytes) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("dropping an unreadable published message: {e}");
            return;
        }
    };
    if msg.o == inner.instance_id || !seen.insert(&msg.id) {
        return;
    }
    inner.relayed(msg);
}

/// The 64 bucket channels, for tests and measurements.
pub fn sharded_channels(key_prefix: &str) -> Vec<String> {
    crate::keys::bucket_prefixes(key_prefix)
        .into_iter()
        .take(BUCKETS)
        .map(|b| format!("{b}events"))
        .collect()
}
