//! The lock clients the measures drive: tflock through its library (`Backend` trait),
//! tflock through its HTTP API (the real server, in this process, on `127.0.0.1:0`),
//! and the Redlock peer `rslock`. One enum, so every measure runs the same loop over
//! each of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tflock_core::{
    LeaseId, LockFilter, LockPage, LockRequest, LockResponse, LockSettings, Priority, Resource,
    SharedBackend, SystemClock,
};
use tflock_embedded::{EmbeddedBackend, EmbeddedConfig};
use tflock_redis::{RedisBackend, RedisConfig};
use tflock_server::{AppState, Tokens};
use tokio::sync::oneshot;

/// Lease TTL of every acquisition, tflock's and the peers' (performance-targets.md).
pub const LOCK_TTL: Duration = Duration::from_secs(30);

/// Which tflock store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Embedded,
    Redis,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Embedded => "embedded",
            BackendKind::Redis => "redis",
        }
    }
}

/// How tflock is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Library,
    Http,
}

impl Surface {
    pub fn name(self) -> &'static str {
        match self {
            Surface::Library => "library",
            Surface::Http => "HTTP",
        }
    }
}

/// Opens a fresh tflock store of `kind`: a new file in `dir`, or a new key prefix on
/// the benchmark's Redis (so measures never see each other's keys).
pub async fn open_backend(
    kind: BackendKind,
    dir: &std::path::Path,
    redis_addr: &str,
    tag: &str,
    settings: LockSettings,
) -> Result<SharedBackend> {
    Ok(match kind {
        BackendKind::Embedded => {
            let path = dir.join(format!("{tag}.redb"));
            let _ = std::fs::remove_file(&path);
            let b: Arc<EmbeddedBackend> =
                EmbeddedBackend::open(EmbeddedConfig { path, settings }, Arc::new(SystemClock))
                    .await
                    .context("opening the embedded store")?;
            b
        }
        BackendKind::Redis => {
            let mut cfg = RedisConfig::standalone(redis_addr);
            cfg.key_prefix = format!("bench:{tag}:");
            // Every waiter blocks on a connection of its own (BLPOP); keep as many
            // idle as the largest waiter count so the pool does not churn.
            cfg.pool_size = 300;
            let b: Arc<RedisBackend> = RedisBackend::connect(cfg, settings, Arc::new(SystemClock))
                .await
                .map_err(|e| anyhow!("connecting the Redis backend: {e}"))?;
            b
        }
    })
}

/// The real tflock HTTP server over `backend`, on an ephemeral loopback port in this
/// process. Stopped (gracefully) on drop.
pub struct HttpServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl HttpServer {
    pub async fn start(backend: SharedBackend) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let state = AppState::new(backend, Tokens::none());
        let task = tokio::spawn(tflock_server::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Ok(HttpServer {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Stops the server and waits (bounded) until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Keep-alive HTTP clients of one server: one `reqwest::Client` (own connection pool)
/// per simulated client, as separate Terraform runners would have.
pub struct HttpApi {
    base: String,
    clients: Vec<reqwest::Client>,
}

impl HttpApi {
    pub fn new(addr: SocketAddr, clients: usize) -> Result<Self> {
        let clients = (0..clients.max(1))
            .map(|_| {
                reqwest::Client::builder()
                    .tcp_nodelay(true)
                    .pool_idle_timeout(Duration::from_secs(120))
                    .timeout(Duration::from_secs(330))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HttpApi {
            base: format!("http://{addr}"),
            clients,
        })
    }

    fn client(&self, i: usize) -> &reqwest::Client {
        &self.clients[i % self.clients.len()]
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        i: usize,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T> {
        let resp = self
            .client(i)
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!("POST {path}: {status}: {text}");
        }
        Ok(resp.json().await?)
    }

    pub async fn list(&self, i: usize, cursor: Option<&str>, limit: usize) -> Result<LockPage> {
        let mut url = format!("{}/api/v1/locks?limit={limit}", self.base);
        if let Some(c) = cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        let resp = self.client(i).get(url).send().await?;
        let status = resp.status();
        if !status.is_success() {
            bail!("GET /api/v1/locks: {status}: {}", resp.text().await?);
        }
        Ok(resp.json().await?)
    }
}

/// A lock client the measures drive.
pub enum Api {
    /// tflock through the `Backend` trait, shared by every simulated client (as the
    /// server shares it).
    Library(SharedBackend),
    /// tflock through its HTTP API.
    Http(HttpApi),
    /// `rslock` (Redlock over SET NX PX) with its own retry settings.
    Rslock(rslock::LockManager),
}

/// What a client holds.
pub enum Held {
    Lease(LeaseId),
    Redlock(rslock::Lock),
}

fn request(r: &Resource, client: usize, prio: Priority) -> LockRequest {
    LockRequest::new(r.clone(), format!("bench/client#{client}"))
        .with_ttl(LOCK_TTL)
        .with_priority(prio)
}

fn resource_json(r: &Resource) -> serde_json::Value {
    serde_json::to_value(r).expect("a resource serialises")
}

fn lease_of(resp: LockResponse) -> Result<Option<Held>> {
    if !resp.acquired {
        return Ok(None);
    }
    let lease = resp
        .lock
        .and_then(|l| l.lease_id)
        .ok_or_else(|| anyhow!("a grant without its lease id"))?;
    Ok(Some(Held::Lease(lease)))
}

impl Api {
    /// Acquires a free lock (no waiting); an error when it is not granted.
    pub async fn acquire_now(&self, client: usize, r: &Resource) -> Result<Held> {
        let got = match self {
            Api::Library(b) => lease_of(b.try_lock(request(r, client, Priority::Normal)).await?)?,
            Api::Http(h) => {
                let body = serde_json::json!({
                    "resource": resource_json(r),
                    "owner": format!("bench/client#{client}"),
                    "ttl": "30s",
                });
                lease_of(h.post(client, "/api/v1/locks/acquire", body).await?)?
            }
            Api::Rslock(m) => Some(Held::Redlock(
                m.lock(r.lock_key().as_bytes(), LOCK_TTL)
                    .await
                    .map_err(|e| anyhow!("rslock: {e:?}"))?,
            )),
        };
        got.ok_or_else(|| anyhow!("an uncontended acquire was not granted"))
    }

    /// Blocks in the library's own way until granted or `deadline` (then `None`).
    pub async fn acquire_wait(
        &self,
        client: usize,
        r: &Resource,
        prio: Priority,
        deadline: Instant,
    ) -> Result<Option<Held>> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(1) {
            return Ok(None);
        }
        match self {
            Api::Library(b) => {
                lease_of(b.try_lock(request(r, client, prio).with_wait(left)).await?)
            }
            Api::Http(h) => {
                let body = serde_json::json!({
                    "resource": resource_json(r),
                    "owner": format!("bench/client#{client}"),
                    "ttl": "30s",
                    "priority": prio.as_str(),
                    "wait": format!("{}ms", left.as_millis()),
                });
                lease_of(h.post(client, "/api/v1/locks/acquire", body).await?)
            }
            Api::Rslock(m) => {
                // `acquire_no_guard` loops until granted; the deadline bounds it.
                match tokio::time::timeout(
                    left,
                    m.acquire_no_guard(r.lock_key().as_bytes(), LOCK_TTL),
                )
                .await
                {
                    Ok(Ok(l)) => Ok(Some(Held::Redlock(l))),
                    Ok(Err(e)) => Err(anyhow!("rslock: {e:?}")),
                    Err(_) => Ok(None),
                }
            }
        }
    }

    /// Releases what `acquire_*` returned.
    pub async fn release(&self, client: usize, r: &Resource, held: Held) -> Result<()> {
        match (self, held) {
            (Api::Library(b), Held::Lease(l)) => {
                b.unlock(r, &l).await?;
            }
            (Api::Http(h), Held::Lease(l)) => {
                let body = serde_json::json!({
                    "resource": resource_json(r),
                    "lease_id": l.as_str(),
                });
                let _: serde_json::Value = h.post(client, "/api/v1/locks/release", body).await?;
            }
            (Api::Rslock(m), Held::Redlock(l)) => m.unlock(&l).await,
            _ => bail!("released with another client's kind of lease"),
        }
        Ok(())
    }

    /// One page of held locks (tflock only).
    pub async fn list(&self, cursor: Option<String>, limit: usize) -> Result<LockPage> {
        match self {
            Api::Library(b) => Ok(b
                .list_locks(LockFilter {
                    cursor,
                    limit: Some(limit),
                    ..LockFilter::default()
                })
                .await?),
            Api::Http(h) => h.list(0, cursor.as_deref(), limit).await,
            Api::Rslock(_) => bail!("rslock cannot list locks"),
        }
    }
}
