//! Sentinel mode: stop using a primary the sentinels no longer name, as soon as they
//! say so.
//!
//! A stopped primary is not a dead one: while it is stopped (SIGSTOP, a long fork,
//! a VM pause) the sentinels promote a replica, and when it resumes it still says
//! `role:master` until the sentinels reconfigure it (Sentinel waits a few seconds
//! before doing so). A connection that was idle during the stop never fails, so
//! without this module the backend would keep running scripts there, and a `WAIT 1`
//! there can be confirmed by a replica that has not been re-pointed yet: changes
//! acknowledged to clients that the new primary never has.
//!
//! Two ways to notice, both ending in [`Connector::announce`], which drops the script
//! connection and the waiters' connections to any other node (as if found dead: the
//! next call asks the sentinels again and checks `ROLE`, and a sentinel that still
//! names another node than the announced one is passed over):
//!
//! - [`watch`]: one task per configured sentinel, subscribed to `+switch-master` and
//!   `+promoted-slave` (the failover leader's, about a second earlier: sent when the
//!   chosen replica says it is the primary); a switch or promotion for our master
//!   name announces the new address at once. A lost
//!   subscription is opened again with back-off (100 ms doubling to 5 s), and after
//!   each (re)subscription the sentinels are asked once ([`verify`]), since a switch
//!   may have been missed meanwhile.
//! - [`verify`], also run by every health check: asks every configured sentinel
//!   `SENTINEL get-master-addr-by-name`; when a majority of them name one address,
//!   that is announced (a single sentinel that has not heard of a switch yet cannot
//!   move the backend back).
//!
//! What remains (docs/redis-design.md, "Sentinel failover"): the writes between the
//! promotion and the moment the notification arrives still go to the old primary.
//! The data-loss markers (`generation.lua`) report such losses afterwards.

use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;
use redis::{Client, ConnectionAddr};
use tokio::time::timeout;

use crate::backend::Inner;
use crate::conn::Connector;

const CHANNEL: &str = "+switch-master";
/// Published by the failover's leader as soon as the chosen replica says it is the
/// primary, before `+switch-master` (which waits for the other replicas).
const PROMOTED: &str = "+promoted-slave";
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a subscriber checks that its backend still exists.
const ALIVE_CHECK: Duration = Duration::from_secs(1);

/// Starts one subscriber per configured sentinel (Sentinel mode only); each ends
/// when the backend is dropped or closed.
pub(crate) fn spawn(inner: &std::sync::Arc<Inner>) {
    let Some((sentinels, _)) = inner.conn.sentinel_target() else {
        return;
    };
    for (host, port) in sentinels.iter().cloned() {
        tokio::spawn(watch(std::sync::Arc::downgrade(inner), host, port));
    }
}

/// `+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>`: the new address
/// when the switch is of `master`.
fn parse_switch(payload: &str, master: &str) -> Option<(String, u16)> {
    let parts: Vec<&str> = payload.split_whitespace().collect();
    match parts.as_slice() {
        [name, _, _, ip, port] if *name == master => Some((ip.to_string(), port.parse().ok()?)),
        _ => None,
    }
}

/// `+promoted-slave slave <ip:port> <ip> <port> @ <name> <old-ip> <old-port>`: the
/// promoted replica's address when it is one of `master`'s.
fn parse_promoted(payload: &str, master: &str) -> Option<(String, u16)> {
    let parts: Vec<&str> = payload.split_whitespace().collect();
    match parts.as_slice() {
        ["slave", _, ip, port, "@", name, _, _] if *name == master => {
            Some((ip.to_string(), port.parse().ok()?))
        }
        _ => None,
    }
}

/// Subscribes to `+switch-master` (and `+promoted-slave`) on one sentinel, for as long as the backend lives.
async fn watch(inner: Weak<Inner>, host: String, port: u16) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let (master, limit) = match inner.upgrade() {
            Some(i) if !i.is_closed() => (
                i.conn.sentinel_target().map(|(_, m)| m.to_string()),
                i.conn.read_timeout() * 2,
            ),
            _ => return,
        };
        let Some(master) = master else { return };
        let subscribed = async {
            let client = Client::open(ConnectionAddr::Tcp(host.clone(), port))?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&[CHANNEL, PROMOTED]).await?;
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = match timeout(limit, subscribed).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!("sentinel {host}:{port}: subscribing to {CHANNEL}: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                tracing::debug!("sentinel {host}:{port}: no subscription in time");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        // A switch may have happened while there was no subscription.
        match inner.upgrade() {
            Some(i) => verify(&i.conn).await,
            None => return,
        };
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                m = messages.next() => {
                    let Some(m) = m else { break };
                    let Ok(payload) = m.get_payload::<String>() else { continue };
                    let new = if m.get_channel_name() == PROMOTED {
                        parse_promoted(&payload, &master)
                    } else {
                        parse_switch(&payload, &master)
                    };
                    let Some((ip, p)) = new else { continue };
                    let Some(i) = inner.upgrade() else { return };
                    if i.conn.announce(&ip, p) {
                        tracing::warn!(
                            "sentinel {host}:{port}: {} {ip}:{p}: dropped the connections to \
                             the old primary",
                            m.get_channel_name()
                        );
                        // Reconnect now rather than on the next call.
                        let _ = i.conn.connect_now().await;
                    }
                }
                _ = tokio::time::sleep(ALIVE_CHECK) => {
                    match inner.upgrade() {
                        Some(i) if !i.is_closed() => {}
                        _ => return,
                    }
                }
            }
        }
        tracing::debug!("sentinel {host}:{port}: the {CHANNEL} subscription ended");
        tokio::time::sleep(backoff).await;
    }
}

/// Asks every configured sentinel for the primary; when a majority name one address,
/// announces it (dropping connections to any other node). Bounded by one connect and
/// one read timeout; sentinels that do not answer count as not naming any.
pub(crate) async fn verify(conn: &Connector) {
    let Some((sentinels, master)) = conn.sentinel_target() else {
        return;
    };
    let limit = conn.read_timeout();
    let asks = sentinels.iter().map(|(host, port)| async move {
        let ask = async {
            let client = Client::open(ConnectionAddr::Tcp(host.clone(), *port))?;
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
        };
        match timeout(limit, ask).await {
            Ok(Ok(a)) => a,
            _ => None,
        }
    });
    let answers: Vec<(String, u16)> = futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let majority = sentinels.len() / 2 + 1;
    for a in &answers {
        if answers.iter().filter(|b| *b == a).count() >= majority {
            if conn.announce(&a.0, a.1) {
                tracing::warn!(
                    "the sentinels name {}:{} as the primary: dropped the connections to \
                     another node",
                    a.0,
                    a.1
                );
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_promoted, parse_switch};

    #[test]
    fn switches_of_other_masters_are_ignored() {
        assert_eq!(
            parse_switch("mymaster 127.0.0.1 6379 127.0.0.1 6380", "mymaster"),
            Some(("127.0.0.1".to_string(), 6380))
        );
        assert_eq!(
            parse_switch("other 127.0.0.1 6379 127.0.0.1 6380", "mymaster"),
            None
        );
        assert_eq!(parse_switch("mymaster garbage", "mymaster"), None);
        assert_eq!(
            parse_promoted(
                "slave 127.0.0.1:6380 127.0.0.1 6380 @ mymaster 127.0.0.1 6379",
                "mymaster"
            ),
            Some(("127.0.0.1".to_string(), 6380))
        );
        assert_eq!(
            parse_promoted(
                "slave 127.0.0.1:6380 127.0.0.1 6380 @ other 127.0.0.1 6379",
                "mymaster"
            ),
            None
        );
    }
}
