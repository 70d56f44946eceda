//! Connections: which node to talk to (standalone, Sentinel's current primary, or
//! Cluster), keeping one multiplexed connection for scripts, reconnecting after
//! failures, the pool of dedicated connections for blocked waiters (BLPOP), script
//! calls (FCALL, `FUNCTION LOAD` on a missing function; EVALSHA, EVAL on `NOSCRIPT`)
//! and `WAIT`.
//!
//! Every network call is bounded: connecting by the connect timeout, each reply by
//! `read_timeout`. A failure that may mean a dead or demoted node (I/O error,
//! timeout, `READONLY`, `MASTERDOWN`, `LOADING`) drops the connection, so the next
//! call connects again; in Sentinel mode that first asks the sentinels where the
//! primary is now. Only connection attempts are retried (`max_retries` with
//! back-off): a request that may have reached Redis is never sent twice.
//!
//! At most once: a script changes state, so one that ran but whose reply was lost
//! (the connection dropped after the request was written, or the reply came after
//! `read_timeout`) must fail the call (`backend_unavailable`), never run again: a
//! resent force unlock would also release the lock it just handed to the next
//! waiter. Standalone and Sentinel use a multiplexed connection, which never resends.
//! redis-rs's cluster client does: with `retries(n)` it sends a request again after
//! an I/O error or a per-attempt timeout (and after redirections and refusals), so
//! the script and waiter connections are built with `retries(0)`, and [`Connector::call`]
//! itself retries only answers that prove the script did not run: `MOVED` and `ASK`
//! (followed to the node they name), `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`,
//! `LOADING`, `READONLY` (refused before running; a script on a replica stops at its
//! first write), and no connection to the slot's node (nothing was sent). All of
//! them within one `read_timeout`, as the client's own retries were. The events
//! connection (`SSUBSCRIBE`, idempotent) keeps the client's retries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionAddr, ErrorKind,
    IntoConnectionInfo, ProtocolVersion, PushInfo, RedisConnectionInfo, RedisError,
    ServerErrorKind, TlsCertificates, Value,
};
use tflock_core::BackendError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;
use tokio::time::timeout;

use crate::config::{AuthMethod, ConnectError, RedisConfig, parse_address};
use crate::scripts::{Function, Library, Script};

/// How long one BLPOP blocks before the waiter re-checks its entry (the slow
/// fallback of the contract).
pub const BLOCK: Duration = Duration::from_secs(1);

/// A connection scripts can run on.
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// What [`Connector::send`] sends.
#[derive(Clone, Copy)]
enum Request<'a> {
    Cmd(&'a Cmd),
    ReadPipeline(&'a redis::Pipeline),
}

/// The current script connection and the generation it belongs to (bumped at every
/// reconnect, so a stale connection is never put back into use).
#[derive(Clone)]
struct Current {
    generation: u64,
    /// The node's client (standalone and Sentinel), for the waiters' connections.
    client: Option<Client>,
    conn: Conn,
}

/// Where the primary is.
enum Target {
    /// Fixed addresses, tried in order.
    Fixed(Vec<(String, u16)>),
    /// Ask these sentinels for `master`.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
    },
    /// A Redis Cluster from these seeds.
    Cluster {
        client: Box<ClusterClient>,
        blocking: Box<ClusterClient>,
        /// RESP3, for the published events of other backends: its connections deliver
        /// push messages to the receiver in `Connector::cluster_pushes`.
        events: Box<ClusterClient>,
    },
}

/// A connection that receives the events other backends publish (RESP3 pushes).
pub enum EventsConn {
    /// To the node of the script connection (standalone, Sentinel's primary).
    Single(MultiplexedConnection),
    /// To the cluster: subscriptions follow their slots to whichever primary owns them.
    Cluster(ClusterConnection),
}

/// A connection of the waiters' pool.
struct Blocking {
    generation: u64,
    conn: Conn,
}

/// Talks to Redis. Shared by every operation of one backend.
pub struct Connector {
    target: Target,
    redis: RedisConnectionInfo,
    tls: Option<TlsCertificates>,
    config: AsyncConnectionConfig,
    blocking_config: AsyncConnectionConfig,
    read_timeout: Duration,
    connect_timeout: Duration,
    pool_timeout: Duration,
    max_retries: u32,
    min_backoff: Duration,
    max_backoff: Duration,
    pool_size: usize,
    current: Arc<Mutex<Option<Current>>>,
    reconnect: tokio::sync::Mutex<()>,
    generation: Arc<AtomicU64>,
    /// Cluster only: since when (µs after `epoch`, 0 = not failing) calls have failed
    /// without a success, and whether a replacement connection is being built.
    epoch: Instant,
    failing_since: AtomicU64,
    rebuilding: Arc<AtomicBool>,
    /// Connection attempts made, and the last one's error: callers that queued behind
    /// a failed attempt share its error instead of each trying again in turn (which,
    /// with a hung server, would make the last of them wait many connect timeouts).
    attempts: AtomicU64,
    last_failure: Mutex<Option<RedisError>>,
    pool: Mutex<Vec<Blocking>>,
    /// Cluster only: where the events client's pushes arrive, until the event relay
    /// takes it.
    cluster_pushes: Mutex<Option<UnboundedReceiver<PushInfo>>>,
    /// Standalone and Sentinel: the newest connection generation found dead. A
    /// waiter's BLPOP on that node gives up as soon as any call notices (a hung server
    /// answers nobody, and a BLPOP alone could only tell after its own block time).
    dead: watch::Sender<u64>,
    /// Sentinel only: the primary the newest `+switch-master` (or the sentinels'
    /// majority in the health check) named, see `crate::sentinel_watch`.
    announced: Mutex<Option<(String, u16)>>,
}

/// A failed call: why, and whether Redis said something we must act on.
#[derive(Debug)]
pub enum CallError {
    /// Redis answered `NOSCRIPT`: load the script and call again.
    NoScript,
    /// Redis does not have the function (a node that never loaded the library, or
    /// lost it: restarted without data, `FUNCTION FLUSH`): load it and call again.
    NoFunction,
    Backend(BackendError),
}

impl From<CallError> for BackendError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::NoScript => BackendError::Internal("script missing after EVAL".into()),
            CallError::NoFunction => {
                BackendError::Internal("function missing after FUNCTION LOAD".into())
            }
            CallError::Backend(b) => b,
        }
    }
}

/// Whether an error may mean the node is gone, hung or no longer the primary.
fn needs_reconnect(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
            ) | ErrorKind::ClusterConnectionNotFound
        )
}

/// Whether an error proves the command did not run, so sending it again cannot run it
/// twice: the node refused it before executing (a redirection, a cluster or node not
/// ready, a replica: a script there stops at its first write), or the cluster client
/// found no connection to send it on. An I/O error or a timeout proves nothing.
fn refused_before_running(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly
        ) | ErrorKind::ClusterConnectionNotFound
    )
}

/// Where a `MOVED` or `ASK` answer sends the command next.
enum Redirect {
    Moved(String, u16),
    Ask(String, u16),
}

fn redirect_of(e: &RedisError) -> Option<Redirect> {
    let (addr, _slot) = e.redirect_node()?;
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.to_string();
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::Ask) => Some(Redirect::Ask(host, port)),
        _ => Some(Redirect::Moved(host, port)),
    }
}

/// Sends `request` once on a cluster connection: by its key's slot, or to the node a
/// redirection named (`ASKING` first for `ASK`). redis-rs sends it once too (the
/// connection is built with `retries(0)`). A pipeline's keys share one slot.
async fn cluster_query<T: redis::FromRedisValue>(
    c: &mut ClusterConnection,
    request: Request<'_>,
    redirect: Option<&Redirect>,
) -> redis::RedisResult<T> {
    let (host, port, ask) = match redirect {
        None => {
            return match request {
                Request::Cmd(cmd) => cmd.query_async(c).await,
                Request::ReadPipeline(pipe) => pipe.query_async(c).await,
            };
        }
        Some(Redirect::Moved(host, port)) => (host, *port, false),
        Some(Redirect::Ask(host, port)) => (host, *port, true),
    };
    let node = SingleNodeRoutingInfo::ByAddress {
        host: host.clone(),
        port,
    };
    let v = match (request, ask) {
        (Request::Cmd(cmd), false) => {
            c.route_command(cmd.clone(), RoutingInfo::SingleNode(node))
                .await?
        }
        (Request::Cmd(cmd), true) => {
            let mut p = redis::pipe();
            p.cmd("ASKING").add_command(cmd.clone());
            c.route_pipeline(p, 1, 1, node)
                .await?
                .pop()
                .unwrap_or(Value::Nil)
        }
        (Request::ReadPipeline(pipe), false) => {
            Value::Array(c.route_pipeline(pipe.clone(), 0, pipe.len(), node).await?)
        }
        (Request::ReadPipeline(pipe), true) => {
            // ASKING lets only the next command through: one before each.
            let mut p = redis::pipe();
            for cmd in pipe.cmd_iter() {
                p.cmd("ASKING").add_command(cmd.clone());
            }
            let replies = c.route_pipeline(p, 0, 2 * pipe.len(), node).await?;
            Value::Array(replies.into_iter().skip(1).step_by(2).collect())
        }
    };
    redis::from_redis_value(v.extract_error()?).map_err(RedisError::from)
}

/// Translates a Redis error: a script that broke is an internal error, everything
/// else (unreachable, refused, read-only, out of memory, no permission) means the
/// store cannot be used now.
fn classify(e: RedisError) -> CallError {
    if matches!(e.kind(), ErrorKind::Server(ServerErrorKind::NoScript)) {
        return CallError::NoScript;
    }
    let msg = e.to_string();
    let response = matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ResponseError));
    if response && msg.contains("Function not found") {
        return CallError::NoFunction;
    }
    let script_error = response
        && (msg.contains("user_script")
            || msg.contains("user_function")
            || msg.contains("Error running script"));
    if script_error {
        CallError::Backend(BackendError::Internal(format!("redis: {msg}")))
    } else {
        CallError::Backend(BackendError::Unavailable(format!("redis: {msg}")))
    }
}

/// A failed (re)connect: the store cannot be used now.
fn no_connection(e: RedisError) -> CallError {
    unavailable(format!("redis: cannot connect: {e}"))
}

fn unavailable(msg: impl Into<String>) -> CallError {
    CallError::Backend(BackendError::Unavailable(msg.into()))
}

impl Connector {
    /// Builds the connector from the (validated) configuration; reads TLS files.
    /// Connects nothing yet.
    pub fn new(cfg: &RedisConfig) -> Result<Connector, ConnectError> {
        let tls = if cfg.tls_enabled {
            Some(load_tls(cfg)?)
        } else {
            None
        };
        let mut redis = RedisConnectionInfo::default().set_db(cfg.db);
        if let Some(p) = cfg.password.as_deref().filter(|p| !p.is_empty()) {
            redis = redis.set_password(p);
        }
        if cfg.auth_method == AuthMethod::Acl
            && let Some(u) = &cfg.username
        {
            redis = redis.set_username(u);
        }
        let connect_timeout = cfg.connect_timeout();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(cfg.read_timeout));
        let blocking_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(BLOCK + cfg.read_timeout));
        let mut cluster_pushes = None;
        let target = if cfg.cluster_mode {
            let nodes = cfg
                .addresses
                .iter()
                .map(|a| parse_address(a).map_err(|m| ConnectError::new("redis.addresses", m)))
                .collect::<Result<Vec<_>, _>>()?;
            // `retries`: how often redis-rs's cluster client may send one request again
            // (also after it may have run): 0 for scripts and waiters (see the module
            // docs), `max_retries` for the idempotent subscriptions.
            let build =
                |response: Duration, retries: u32, push: Option<UnboundedSender<PushInfo>>| {
                    let infos = nodes
                        .iter()
                        .map(|(h, p)| {
                            let addr = if tls.is_some() {
                                ConnectionAddr::TcpTls {
                                    host: h.clone(),
                                    port: *p,
                                    insecure: false,
                                    tls_params: None,
                                }
                            } else {
                                ConnectionAddr::Tcp(h.clone(), *p)
                            };
                            addr.into_connection_info()
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| ConnectError::new("redis.addresses", e.to_string()))?;
                    let mut b = ClusterClient::builder(infos)
                        .connection_timeout(connect_timeout)
                        .response_timeout(response)
                        .overall_response_timeout(Some(response))
                        .retries(retries)
                        .min_retry_wait(cfg.min_retry_backoff.as_millis() as u64)
                        .max_retry_wait(cfg.max_retry_backoff.as_millis() as u64);
                    if let Some(p) = cfg.password.as_deref().filter(|p| !p.is_empty()) {
                        b = b.password(p);
                    }
                    if cfg.auth_method == AuthMethod::Acl
                        && let Some(u) = &cfg.username
                    {
                        b = b.username(u);
                    }
                    if let Some(certs) = &tls {
                        b = b.tls(redis::TlsMode::Secure).certs(certs.clone());
                    }
                    if let Some(push) = push {
                        b = b.use_protocol(ProtocolVersion::RESP3).push_sender(push);
                    }
                    b.build()
                        .map_err(|e| ConnectError::new("redis.addresses", e.to_string()))
                };
            let (push, pushes) = unbounded_channel();
            cluster_pushes = Some(pushes);
            Target::Cluster {
                client: Box::new(build(cfg.read_timeout, 0, None)?),
                blocking: Box::new(build(BLOCK + cfg.read_timeout, 0, None)?),
                events: Box::new(build(cfg.read_timeout, cfg.max_retries, Some(push))?),
            }
        } else if cfg.sentinel.enabled() {
            Target::Sentinel {
                sentinels: cfg
                    .sentinel
                    .addresses
                    .iter()
                    .map(|a| {
                        parse_address(a)
                            .map_err(|m| ConnectError::new("redis.sentinel.addresses", m))
                    })
                    .collect::<Result<_, _>>()?,
                master: cfg.sentinel.master_name.clone().unwrap_or_default(),
            }
        } else {
            Target::Fixed(
                cfg.addresses
                    .iter()
                    .map(|a| parse_address(a).map_err(|m| ConnectError::new("redis.addresses", m)))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(Connector {
            target,
            redis,
            tls,
            config,
            blocking_config,
            read_timeout: cfg.read_timeout,
            connect_timeout,
            pool_timeout: cfg.pool_timeout.max(connect_timeout),
            max_retries: cfg.max_retries,
            min_backoff: cfg.min_retry_backoff,
            max_backoff: cfg.max_retry_backoff,
            pool_size: cfg.pool_size,
            current: Arc::new(Mutex::new(None)),
            reconnect: tokio::sync::Mutex::new(()),
            generation: Arc::new(AtomicU64::new(1)),
            epoch: Instant::now(),
            failing_since: AtomicU64::new(0),
            rebuilding: Arc::new(AtomicBool::new(false)),
            attempts: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            pool: Mutex::new(Vec::new()),
            cluster_pushes: Mutex::new(cluster_pushes),
            dead: watch::channel(0).0,
            announced: Mutex::new(None),
        })
    }

    /// `standalone`, `sentinel` or `cluster`.
    pub fn mode(&self) -> &'static str {
        match self.target {
            Target::Fixed(_) => "standalone",
            Target::Sentinel { .. } => "sentinel",
            Target::Cluster { .. } => "cluster",
        }
    }

    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// A client for one node.
    fn node_client(&self, host: &str, port: u16) -> redis::RedisResult<Client> {
        let addr = if self.tls.is_some() {
            ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.to_string(), port)
        };
        let info = addr
            .into_connection_info()?
            .set_redis_settings(self.redis.clone());
        match &self.tls {
            Some(certs) => Client::build_with_tls(info, certs.clone()),
            None => Client::open(info),
        }
    }

    async fn connect_node(
        &self,
        client: &Client,
        config: &AsyncConnectionConfig,
    ) -> redis::RedisResult<MultiplexedConnection> {
        match timeout(
            self.connect_timeout,
            client.get_multiplexed_async_connection_with_config(config),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no connection to {} within {:?}",
                    client.get_connection_info().addr(),
                    self.connect_timeout
                ),
            ))),
        }
    }

    /// Asks the sentinels where the primary is and connects to it; a node that does
    /// not say it is the primary (`ROLE`) is not used.
    async fn resolve_sentinel(
        &self,
        sentinels: &[(String, u16)],
        master: &str,
    ) -> redis::RedisResult<(Client, MultiplexedConnection)> {
        let mut problems = Vec::new();
        let mut others: Vec<(String, u16)> = Vec::new();
        for (host, port) in sentinels {
            let sentinel = match Client::open(ConnectionAddr::Tcp(host.clone(), *port)) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("sentinel {host}:{port}: {e}"));
                    continue;
                }
            };
            let mut sc = match self.connect_node(&sentinel, &self.config).await {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("sentinel {host}:{port}: {e}"));
                    continue;
                }
            };
            let addr: Option<(String, u16)> = match timeout(
                self.read_timeout,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query_async(&mut sc),
            )
            .await
            {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    problems.push(format!("sentinel {host}:{port}: {e}"));
                    continue;
                }
                Err(_) => {
                    problems.push(format!("sentinel {host}:{port}: no reply"));
                    continue;
                }
            };
            let Some((mh, mp)) = addr else {
                problems.push(format!(
                    "sentinel {host}:{port} knows no master named '{master}'"
                ));
                continue;
            };
            // A sentinel that has not heard of the last switch yet names the old
            // primary, which may still say `master` (crate::sentinel_watch).
            if let Some((ah, ap)) = self.announced()
                && (ah.as_str(), ap) != (mh.as_str(), mp)
            {
                problems.push(format!(
                    "sentinel {host}:{port} names {mh}:{mp}, but {ah}:{ap} was announced"
                ));
                others.push((mh, mp));
                continue;
            }
            let client = self.node_client(&mh, mp)?;
            let mut conn = match self.connect_node(&client, &self.config).await {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!(
                        "primary {mh}:{mp} (from sentinel {host}:{port}): {e}"
                    ));
                    continue;
                }
            };
            let role: Vec<Value> =
                match timeout(self.read_timeout, redis::cmd("ROLE").query_async(&mut conn)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        problems.push(format!("primary {mh}:{mp}: no reply to ROLE"));
                        continue;
                    }
                };
            let is_master = matches!(role.first(), Some(Value::BulkString(b)) if b == b"master")
                || matches!(role.first(), Some(Value::SimpleString(s)) if s == "master");
            if is_master {
                return Ok((client, conn));
            }
            problems.push(format!("{mh}:{mp} is not (or no longer) the primary"));
        }
        // No sentinel agreed with the announcement: when a majority of them name one
        // other node, the announcement is the stale one (the next attempt follows them).
        if let Some(a) = others
            .iter()
            .find(|a| others.iter().filter(|b| b == a).count() > sentinels.len() / 2)
        {
            *self.announced.lock().unwrap_or_else(|p| p.into_inner()) = Some(a.clone());
        }
        Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!("no primary for '{master}': {}", problems.join("; ")),
        )))
    }

    /// One attempt to open the script connection.
    async fn open_once(&self) -> redis::RedisResult<(Option<Client>, Conn)> {
        match &self.target {
            Target::Fixed(addrs) => {
                let mut last = None;
                for (h, p) in addrs {
                    let client = self.node_client(h, *p)?;
                    match self.connect_node(&client, &self.config).await {
                        Ok(c) => return Ok((Some(client), Conn::Single(c))),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    RedisError::from((ErrorKind::InvalidClientConfig, "no address"))
                }))
            }
            Target::Sentinel { sentinels, master } => {
                let (client, conn) = self.resolve_sentinel(sentinels, master).await?;
                Ok((Some(client), Conn::Single(conn)))
            }
            Target::Cluster { client, .. } => {
                match timeout(
                    self.connect_timeout + self.read_timeout,
                    client.get_async_connection(),
                )
                .await
                {
                    Ok(r) => Ok((None, Conn::Cluster(r?))),
                    Err(_) => Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no cluster connection in time",
                    ))),
                }
            }
        }
    }

    /// Opens the script connection, retrying refused attempts with back-off.
    async fn open(&self) -> redis::RedisResult<(Option<Client>, Conn)> {
        let mut backoff = self.min_backoff;
        let mut attempt = 0;
        loop {
            match self.open_once().await {
                Ok(c) => return Ok(c),
                Err(e) if attempt < self.max_retries && e.is_connection_refusal() => {
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The script connection, connecting when there is none.
    async fn get(&self) -> redis::RedisResult<Current> {
        if let Some(c) = self.lock_current().clone() {
            return Ok(c);
        }
        // One reconnect at a time; the others then use its connection, or its error.
        let seen = self.attempts.load(Ordering::Acquire);
        let _one = self.reconnect.lock().await;
        if let Some(c) = self.lock_current().clone() {
            return Ok(c);
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            let failure = self
                .last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(e) = failure {
                return Err(e);
            }
        }
        let opened = self.open().await;
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
            opened.as_ref().err().cloned();
        self.attempts.fetch_add(1, Ordering::AcqRel);
        let (client, conn) = opened?;
        let cur = Current {
            generation: self.generation.fetch_add(1, Ordering::Relaxed),
            client,
            conn,
        };
        *self.lock_current() = Some(cur.clone());
        Ok(cur)
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation of the current script connection, if there is one.
    pub fn current_generation(&self) -> Option<u64> {
        self.lock_current().as_ref().map(|c| c.generation)
    }

    /// Cluster only: the receiver of the events connection's push messages (once).
    pub fn take_cluster_pushes(&self) -> Option<UnboundedReceiver<PushInfo>> {
        self.cluster_pushes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Opens a connection for the events other backends publish, and returns it with
    /// the script connection's generation it follows. Standalone and Sentinel: a RESP3
    /// connection to the script connection's node whose pushes go to `push`. Cluster:
    /// a RESP3 cluster connection whose pushes go to [`Connector::take_cluster_pushes`]'s
    /// receiver (`push` is unused).
    pub async fn events_connection(
        &self,
        push: UnboundedSender<PushInfo>,
    ) -> Result<(EventsConn, u64), BackendError> {
        let limit = self.connect_timeout * (self.max_retries + 1) + self.read_timeout;
        let cur = match timeout(limit, self.get()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(no_connection(e).into()),
            Err(_) => return Err(unavailable("redis: no connection in time").into()),
        };
        match (&self.target, &cur.client) {
            (Target::Cluster { events, .. }, _) => {
                match timeout(
                    self.connect_timeout + self.read_timeout,
                    events.get_async_connection(),
                )
                .await
                {
                    Ok(Ok(c)) => Ok((EventsConn::Cluster(c), cur.generation)),
                    Ok(Err(e)) => Err(classify(e).into()),
                    Err(_) => Err(unavailable("redis: no events connection in time").into()),
                }
            }
            (_, Some(client)) => {
                let info = client
                    .get_connection_info()
                    .clone()
                    .set_redis_settings(self.redis.clone().set_protocol(ProtocolVersion::RESP3));
                let client = match &self.tls {
                    Some(certs) => Client::build_with_tls(info, certs.clone()),
                    None => Client::open(info),
                }
                .map_err(|e| BackendError::from(classify(e)))?;
                let config = self.config.clone().set_push_sender(push);
                let conn = self
                    .connect_node(&client, &config)
                    .await
                    .map_err(|e| BackendError::from(classify(e)))?;
                Ok((EventsConn::Single(conn), cur.generation))
            }
            (_, None) => Err(BackendError::Internal("no node client".into())),
        }
    }

    /// Sentinel only: the configured sentinels and the master name.
    pub(crate) fn sentinel_target(&self) -> Option<(&[(String, u16)], &str)> {
        match &self.target {
            Target::Sentinel { sentinels, master } => Some((sentinels, master)),
            _ => None,
        }
    }

    /// The primary last given to [`Connector::announce`].
    fn announced(&self) -> Option<(String, u16)> {
        self.announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sentinel only (`crate::sentinel_watch`): the sentinels name `host:port` as the
    /// primary. A script connection (and the waiters' pool) to another node is dropped
    /// as if found dead, so the next call asks the sentinels again. Returns whether it
    /// dropped one.
    pub(crate) fn announce(&self, host: &str, port: u16) -> bool {
        *self.announced.lock().unwrap_or_else(|p| p.into_inner()) = Some((host.to_string(), port));
        let stale = self.lock_current().as_ref().and_then(|c| {
            let on = match c.client.as_ref()?.get_connection_info().addr() {
                ConnectionAddr::Tcp(h, p)
                | ConnectionAddr::TcpTls {
                    host: h, port: p, ..
                } => (h.as_str(), *p) == (host, port),
                _ => true,
            };
            (!on).then_some(c.generation)
        });
        let Some(generation) = stale else {
            return false;
        };
        self.invalidate(generation);
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|b| b.generation > generation);
        true
    }

    fn invalidate(&self, generation: u64) {
        if let Target::Cluster { client, .. } = &self.target {
            self.cluster_failed(client);
            return;
        }
        let mut cur = self.lock_current();
        if cur.as_ref().is_some_and(|c| c.generation == generation) {
            *cur = None;
        }
        drop(cur);
        self.dead.send_if_modified(|d| {
            let newer = *d < generation;
            if newer {
                *d = generation;
            }
            newer
        });
    }

    /// A cluster connection reconnects its nodes by itself, but keeps sending a dead
    /// primary's slots to it until something tells it the slots moved, which a dead
    /// node never does. So when calls have failed for two read timeouts in a row, a
    /// new connection (which reads the slots afresh from a live node) is built in the
    /// background and swapped in; calls meanwhile still answer within read_timeout.
    fn cluster_failed(&self, client: &ClusterClient) {
        let now = (self.epoch.elapsed().as_micros() as u64).max(1);
        let since =
            match self
                .failing_since
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => now,
                Err(t) => t,
            };
        let streak = Duration::from_micros(now.saturating_sub(since));
        if streak < self.read_timeout * 2 || self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        self.failing_since.store(0, Ordering::Release);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.rebuilding.store(false, Ordering::Release);
            return;
        };
        let (client, current, generation, rebuilding) = (
            client.clone(),
            self.current.clone(),
            self.generation.clone(),
            self.rebuilding.clone(),
        );
        let limit = self.connect_timeout + self.read_timeout;
        rt.spawn(async move {
            if let Ok(Ok(conn)) = timeout(limit, client.get_async_connection()).await {
                *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Current {
                    generation: generation.fetch_add(1, Ordering::Relaxed),
                    client: None,
                    conn: Conn::Cluster(conn),
                });
            }
            rebuilding.store(false, Ordering::Release);
        });
    }

    fn succeeded(&self) {
        if self.failing_since.load(Ordering::Relaxed) != 0 {
            self.failing_since.store(0, Ordering::Relaxed);
        }
    }

    /// Connects now (start-up), for a clear error if Redis cannot be used.
    pub async fn connect_now(&self) -> redis::RedisResult<()> {
        let mut cur = self.get().await?;
        match timeout(
            self.read_timeout,
            cur.conn.query::<Value>(&redis::cmd("PING")),
        )
        .await
        {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no reply to PING within read_timeout",
            ))),
        }
    }

    /// Sends one command on the script connection; returns the reply and the
    /// connection's generation.
    pub async fn call<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<(T, u64), CallError> {
        self.send(Request::Cmd(cmd)).await
    }

    /// Sends a pipeline of read-only commands whose keys share one slot (listing's
    /// reads of one bucket, the lease read of a refused TryLock) on the script
    /// connection; returns their replies. On a cluster it follows redirections and
    /// retries as one command does ([`Connector::cluster_once`]).
    pub async fn read_pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, CallError> {
        Ok(self.send(Request::ReadPipeline(pipe)).await?.0)
    }

    async fn send<T: redis::FromRedisValue>(
        &self,
        request: Request<'_>,
    ) -> Result<(T, u64), CallError> {
        let mut cur = match timeout(
            self.connect_timeout * (self.max_retries + 1) + self.read_timeout,
            self.get(),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(no_connection(e)),
            Err(_) => return Err(unavailable("redis: no connection in time")),
        };
        let reply = match &mut cur.conn {
            Conn::Single(c) => {
                // A call on a connection another call already found dead gives up at
                // once instead of waiting out its own read_timeout (a request caught
                // on the connection when Redis died may get neither a reply nor an
                // error until then). Nothing is sent again: the same answer as a
                // timeout, sooner.
                let mut dead = self.dead.subscribe();
                let generation = cur.generation;
                let reply: BoxFuture<'_, redis::RedisResult<T>> = match request {
                    Request::Cmd(cmd) => Box::pin(cmd.query_async(c)),
                    Request::ReadPipeline(pipe) => Box::pin(pipe.query_async(c)),
                };
                tokio::select! {
                    r = timeout(self.read_timeout, reply) => r,
                    _ = dead.wait_for(|d| *d >= generation) => {
                        return Err(unavailable(
                            "redis: the connection failed while waiting for the reply",
                        ));
                    }
                }
            }
            Conn::Cluster(c) => timeout(self.read_timeout, self.cluster_once(c, request)).await,
        };
        match reply {
            Ok(Ok(v)) => {
                self.succeeded();
                Ok((v, cur.generation))
            }
            Ok(Err(e)) => {
                if needs_reconnect(&e) {
                    self.invalidate(cur.generation);
                }
                Err(classify(e))
            }
            Err(_) => {
                self.invalidate(cur.generation);
                Err(unavailable(format!(
                    "redis: no reply within read_timeout ({:?})",
                    self.read_timeout
                )))
            }
        }
    }

    /// Runs `request` on a cluster so that it runs at most once: sent again only after an
    /// answer that proves it did not run ([`refused_before_running`]), up to
    /// `max_retries` times, following redirections at once and waiting with back-off
    /// otherwise. The caller bounds it all by `read_timeout`.
    async fn cluster_once<T: redis::FromRedisValue>(
        &self,
        c: &mut ClusterConnection,
        request: Request<'_>,
    ) -> redis::RedisResult<T> {
        let mut redirect = None;
        let mut backoff = self.min_backoff;
        let mut attempt = 0;
        loop {
            match cluster_query(c, request, redirect.as_ref()).await {
                Err(e) if attempt < self.max_retries && refused_before_running(&e) => {
                    attempt += 1;
                    redirect = redirect_of(&e);
                    if redirect.is_none() {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.max_backoff);
                    }
                }
                r => return r,
            }
        }
    }

    /// Sends one command to every node that holds data: the node of the script
    /// connection (standalone, Sentinel's primary), or every cluster primary. Returns
    /// each node's address with its reply or the error it answered; a connection
    /// problem (unreachable, no reply within read_timeout) fails the whole call.
    pub async fn call_nodes(&self, cmd: &Cmd) -> Result<Vec<(String, NodeReply)>, CallError> {
        let mut cur = match timeout(
            self.connect_timeout * (self.max_retries + 1) + self.read_timeout,
            self.get(),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(no_connection(e)),
            Err(_) => return Err(unavailable("redis: no connection in time")),
        };
        let node = cur
            .client
            .as_ref()
            .map(|c| c.get_connection_info().addr().to_string())
            .unwrap_or_default();
        let reply = match &mut cur.conn {
            Conn::Single(c) => {
                // As in `call`: a connection found dead ends the wait at once.
                let mut dead = self.dead.subscribe();
                let generation = cur.generation;
                tokio::select! {
                    r = timeout(self.read_timeout, cmd.query_async::<Value>(c)) => r,
                    _ = dead.wait_for(|d| *d >= generation) => {
                        return Err(unavailable(
                            "redis: the connection failed while waiting for the reply",
                        ));
                    }
                }
                .map(|r| match r {
                    Ok(v) => Ok(vec![(node, node_reply(v))]),
                    Err(e) if !needs_reconnect(&e) => Ok(vec![(node, Err(e.to_string()))]),
                    Err(e) => Err(e),
                })
            }
            Conn::Cluster(c) => {
                let route = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                timeout(self.read_timeout, c.route_command(cmd.clone(), route))
                    .await
                    .map(|r| r.map(per_node))
            }
        };
        match reply {
            Ok(Ok(v)) => {
                self.succeeded();
                Ok(v)
            }
            Ok(Err(e)) => {
                if needs_reconnect(&e) {
                    self.invalidate(cur.generation);
                }
                Err(classify(e))
            }
            Err(_) => {
                self.invalidate(cur.generation);
                Err(unavailable(format!(
                    "redis: no reply within read_timeout ({:?})",
                    self.read_timeout
                )))
            }
        }
    }

    /// Runs a script on the bucket whose key prefix is `key` (EVALSHA; EVAL when the
    /// node does not have it, which also caches it there). Returns the JSON reply and
    /// the connection generation.
    pub async fn eval(
        &self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<(String, u64), BackendError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.sha).arg(1).arg(key).arg(args);
        match self.call::<String>(&cmd).await {
            Ok(r) => Ok(r),
            Err(CallError::NoScript) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(script.source).arg(1).arg(key).arg(args);
                self.call::<String>(&cmd).await.map_err(|e| match e {
                    CallError::Backend(BackendError::Internal(m)) => {
                        BackendError::Internal(format!("{}: {m}", script.name))
                    }
                    e => e.into(),
                })
            }
            Err(CallError::Backend(BackendError::Internal(m))) => {
                Err(BackendError::Internal(format!("{}: {m}", script.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs one of the library's functions on the bucket whose key prefix is `key`
    /// (FCALL; when the node lacks it, FUNCTION LOAD of the library, on every
    /// primary of a cluster, and FCALL again). Returns the JSON reply and the
    /// connection generation.
    pub async fn fcall(
        &self,
        library: &Library,
        f: &Function,
        key: &str,
        args: &[&str],
    ) -> Result<(String, u64), BackendError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(&f.function).arg(1).arg(key).arg(args);
        let named = |e: CallError| match e {
            CallError::Backend(BackendError::Internal(m)) => {
                BackendError::Internal(format!("{}: {m}", f.name))
            }
            e => e.into(),
        };
        match self.call::<String>(&cmd).await {
            Ok(r) => Ok(r),
            Err(CallError::NoFunction) => {
                let mut load = redis::cmd("FUNCTION");
                load.arg("LOAD").arg("REPLACE").arg(&library.source);
                self.call::<redis::Value>(&load).await.map_err(|e| {
                    match BackendError::from(e) {
                        BackendError::Internal(m) => BackendError::Internal(format!(
                            "loading the function library {}: {m}",
                            library.name
                        )),
                        BackendError::Unavailable(m) => BackendError::Unavailable(format!(
                            "loading the function library {}: {m}",
                            library.name
                        )),
                        e => e,
                    }
                })?;
                self.call::<String>(&cmd).await.map_err(named)
            }
            Err(e) => Err(named(e)),
        }
    }

    /// `WAIT n` on the connection (generation) the grant was written on, for the
    /// bucket whose key prefix is `key`. Returns how many replicas acknowledged.
    pub async fn wait_replicas(
        &self,
        generation: u64,
        key: &str,
        replicas: u32,
        wait: Duration,
    ) -> Result<u64, BackendError> {
        let mut cur = match self.lock_current().clone() {
            Some(c) if c.generation == generation => c,
            // A new connection has written nothing: its WAIT would confirm nothing.
            _ => {
                return Err(BackendError::Unavailable(
                    "redis: the connection of the grant was lost before WAIT".into(),
                ));
            }
        };
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(wait.as_millis() as u64);
        let reply = match &mut cur.conn {
            Conn::Single(c) => timeout(self.read_timeout + wait, cmd.query_async::<u64>(c)).await,
            Conn::Cluster(c) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                timeout(self.read_timeout + wait, async {
                    let v = c.route_command(cmd, route).await?;
                    redis::from_redis_value::<u64>(v).map_err(RedisError::from)
                })
                .await
            }
        };
        match reply {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => {
                if needs_reconnect(&e) {
                    self.invalidate(generation);
                }
                Err(BackendError::Unavailable(format!(
                    "redis: WAIT failed: {e}"
                )))
            }
            Err(_) => {
                self.invalidate(generation);
                Err(BackendError::Unavailable("redis: no reply to WAIT".into()))
            }
        }
    }

    /// A connection of the waiters' pool (a blocking command would stall the shared
    /// multiplexed connection), opening one when none is idle.
    async fn take_blocking(&self) -> Result<Blocking, BackendError> {
        let cur = self
            .get()
            .await
            .map_err(|e| BackendError::from(classify(e)))?;
        {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(b) = pool.pop() {
                if b.generation == cur.generation {
                    return Ok(b);
                }
            }
        }
        let conn = match (&self.target, &cur.client) {
            (Target::Cluster { blocking, .. }, _) => {
                match timeout(self.pool_timeout, blocking.get_async_connection()).await {
                    Ok(Ok(c)) => Conn::Cluster(c),
                    Ok(Err(e)) => return Err(classify(e).into()),
                    Err(_) => {
                        return Err(BackendError::Unavailable(
                            "redis: no connection for a waiter within pool_timeout".into(),
                        ));
                    }
                }
            }
            (_, Some(client)) => Conn::Single(
                self.connect_node(client, &self.blocking_config)
                    .await
                    .map_err(|e| BackendError::from(classify(e)))?,
            ),
            (_, None) => return Err(BackendError::Internal("no node client".into())),
        };
        Ok(Blocking {
            generation: cur.generation,
            conn,
        })
    }

    /// Blocks up to [`BLOCK`] on the list `key`; `Some(item)` when one was pushed.
    /// Dropping the future drops its connection (the reply would still come).
    pub async fn blpop(&self, key: &str) -> Result<Option<String>, BackendError> {
        let mut b = self.take_blocking().await?;
        let mut cmd = redis::cmd("BLPOP");
        cmd.arg(key).arg(BLOCK.as_secs_f64());
        let generation = b.generation;
        let mut dead = self.dead.subscribe();
        let reply = tokio::select! {
            r = timeout(BLOCK + self.read_timeout, b.conn.query::<Option<(String, String)>>(&cmd)) => r,
            // Another call found this node dead (cluster connections never signal
            // here: one failing node must not end the waiters of the others).
            _ = dead.wait_for(|d| *d >= generation) => {
                return Err(BackendError::Unavailable(
                    "redis: the connection failed while waiting".into(),
                ));
            }
        };
        match reply {
            Ok(Ok(v)) => {
                let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < self.pool_size {
                    pool.push(b);
                }
                Ok(v.map(|(_, item)| item))
            }
            Ok(Err(e)) => {
                if needs_reconnect(&e) {
                    self.invalidate(b.generation);
                }
                Err(classify(e).into())
            }
            Err(_) => {
                self.invalidate(b.generation);
                Err(BackendError::Unavailable(
                    "redis: BLPOP got no reply".into(),
                ))
            }
        }
    }
}

/// One node's answer to [`Connector::call_nodes`]: its reply, or the error it
/// answered (e.g. `NOPERM` for a user without the command).
pub type NodeReply = Result<Value, String>;

/// A cluster's multi-node reply (a map of node address to reply) as a list.
fn per_node(v: Value) -> Vec<(String, NodeReply)> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    match v {
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| (text(&k), node_reply(v)))
            .collect(),
        other => vec![(String::new(), node_reply(other))],
    }
}

/// An error reply is the node's refusal, not a value.
fn node_reply(v: Value) -> NodeReply {
    match v {
        Value::ServerError(e) => Err(format!("{e:?}")),
        v => Ok(v),
    }
}

/// Reads the TLS files; a file that cannot be read or parsed names its setting.
fn load_tls(cfg: &RedisConfig) -> Result<TlsCertificates, ConnectError> {
    let read = |setting: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| ConnectError::new(setting, format!("cannot read {}: {e}", path.display())))
    };
    let root_cert = match &cfg.tls_ca_file {
        Some(p) => {
            let pem = read("redis.tls_ca_file", p)?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConnectError::new(
                    "redis.tls_ca_file",
                    format!("{} holds no PEM certificate", p.display()),
                ));
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(c), Some(k)) => Some(ClientTlsConfig {
            client_cert: read("redis.tls_cert_file", c)?,
            client_key: read("redis.tls_key_file", k)?,
        }),
        _ => None,
    };
    let certs = TlsCertificates {
        client_tls,
        root_cert,
    };
    // Parse now, so a bad file is reported as such and not as a connection failure.
    Client::build_with_tls("rediss://127.0.0.1:6379", certs.clone()).map_err(|e| {
        let m = e.to_string();
        let setting = if m.contains("client certificate") {
            "redis.tls_cert_file"
        } else if m.contains("private key") {
            "redis.tls_key_file"
        } else {
            "redis.tls_ca_file"
        };
        ConnectError::new(setting, m)
    })?;
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(reply: &str) -> RedisError {
        redis::parse_redis_value(format!("-{reply}\r\n").as_bytes())
            .and_then(Value::extract_error)
            .expect_err("an error reply")
    }

    /// What the cluster path may send again: only answers that prove the command did
    /// not run. A dropped connection or a timeout after the write proves nothing.
    #[test]
    fn only_refusals_before_running_are_retried() {
        for refused in [
            "MOVED 3999 127.0.0.1:7001",
            "ASK 3999 127.0.0.1:7002",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down",
            "LOADING Redis is loading the dataset in memory",
            "READONLY You can't write against a read only replica.",
        ] {
            assert!(refused_before_running(&server_error(refused)), "{refused}");
        }
        let not_found = RedisError::from((ErrorKind::ClusterConnectionNotFound, "none"));
        assert!(refused_before_running(&not_found));
        for maybe_ran in [
            RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            server_error("ERR Error running script"),
            server_error("OOM command not allowed when used memory > 'maxmemory'."),
            server_error("NOSCRIPT No matching script."),
        ] {
            assert!(!refused_before_running(&maybe_ran), "{maybe_ran:?}");
        }
    }

    #[test]
    fn redirections_name_their_node() {
        match redirect_of(&server_error("MOVED 3999 127.0.0.1:7001")) {
            Some(Redirect::Moved(h, 7001)) => assert_eq!(h, "127.0.0.1"),
            _ => panic!("MOVED"),
        }
        match redirect_of(&server_error("ASK 3999 127.0.0.1:7002")) {
            Some(Redirect::Ask(h, 7002)) => assert_eq!(h, "127.0.0.1"),
            _ => panic!("ASK"),
        }
        assert!(redirect_of(&server_error("TRYAGAIN busy")).is_none());
    }
}
