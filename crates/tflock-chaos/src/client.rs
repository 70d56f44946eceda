//! One client process (`tflock-chaos client`): random lock operations through random
//! servers over HTTP, one at a time, each written to its history before the next.
//!
//! It owns what a real caller would know and nothing more: the leases it was answered,
//! the reservations and lost-answer acquires it may still collect (by request id), and
//! its pull request number (every owner of this client carries it, so a release by pull
//! touches only this client's locks and entries). It never reads another client's
//! history. After its deadline it drains: collects or cancels what is still queued and
//! releases what it holds, so every reservation gets an ending.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::clock::{ms, now_ns};
use crate::history::{Args, Op, Outcome, Record, Status, Writer};

pub const REPO: &str = "chaos/app";

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub id: usize,
    pub seed: u64,
    pub servers: Vec<String>,
    pub history: PathBuf,
    /// Stop starting new operations at this instant (ns, `CLOCK_MONOTONIC`).
    pub until: u64,
    pub max_ops: u64,
    pub ttl_ms: u64,
    pub resources: usize,
}

struct Held {
    lease_id: String,
    owner: String,
}

struct Pending {
    request_id: String,
    resource: String,
    reserve: bool,
    invoke: u64,
    wait_ms: u64,
    entry_id: Option<String>,
}

struct Client {
    o: ClientOptions,
    rng: StdRng,
    http: reqwest::Client,
    out: Writer,
    pull: u64,
    owner: String,
    transfers: u64,
    held: BTreeMap<String, Held>,
    pending: Vec<Pending>,
    ops: u64,
}

/// How long a reservation waits in line; rule 3 of the checker needs grants to be
/// collected before they can expire, so the client collects often.
const RESERVE_WAIT_MS: u64 = 8_000;

pub async fn run(o: ClientOptions) -> std::io::Result<u64> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4)
        .build()
        .expect("an HTTP client");
    let mut c = Client {
        rng: StdRng::seed_from_u64(o.seed ^ (o.id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        out: Writer::create(&o.history)?,
        pull: 100 + o.id as u64,
        owner: format!("{REPO}#{}", 100 + o.id),
        transfers: 0,
        held: BTreeMap::new(),
        pending: Vec::new(),
        ops: 0,
        http,
        o,
    };
    while now_ns() < c.o.until && c.ops < c.o.max_ops {
        c.step().await?;
        let pause = c.rng.random_range(0..40);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    c.drain().await?;
    Ok(c.ops)
}

impl Client {
    fn resource_name(&mut self) -> String {
        format!("w{}", self.rng.random_range(0..self.o.resources))
    }

    fn free_resource(&mut self) -> Option<String> {
        for _ in 0..8 {
            let r = self.resource_name();
            if !self.held.contains_key(&r) && !self.pending.iter().any(|p| p.resource == r) {
                return Some(r);
            }
        }
        None
    }

    fn request_id(&mut self) -> String {
        format!("{:032x}", self.rng.random::<u128>())
    }

    async fn step(&mut self) -> std::io::Result<()> {
        let mut choices: Vec<(u32, u8)> = vec![(16, 0), (12, 1), (8, 2), (2, 8), (4, 9)];
        if !self.held.is_empty() {
            choices.extend([(10, 3), (18, 4), (6, 5), (14, 6), (10, 10)]);
        }
        if !self.pending.is_empty() {
            choices.extend([(16, 7), (4, 11)]);
        }
        let total: u32 = choices.iter().map(|c| c.0).sum();
        let mut pick = self.rng.random_range(0..total);
        let mut kind = 0;
        for (w, k) in choices {
            if pick < w {
                kind = k;
                break;
            }
            pick -= w;
        }
        match kind {
            0..=2 => {
                let Some(res) = self.free_resource() else {
                    return Ok(());
                };
                let wait = match kind {
                    1 => Some(self.rng.random_range(200..2500)),
                    2 => Some(RESERVE_WAIT_MS),
                    _ => None,
                };
                self.acquire(&res, wait, kind == 2).await
            }
            3..=6 => {
                let res = self.some_held();
                match kind {
                    3 => self.refresh(&res).await,
                    4 => self.release(&res).await,
                    5 => self.transfer(&res).await,
                    _ => self.read(&res).await,
                }
            }
            7 => {
                let k = self.rng.random_range(0..self.pending.len());
                self.collect(k).await
            }
            8 => self.release_pull().await,
            9 => {
                let res = self.resource_name();
                self.read(&res).await
            }
            10 => {
                // Work under the lock.
                let hold = self.rng.random_range(50..400);
                tokio::time::sleep(Duration::from_millis(hold)).await;
                Ok(())
            }
            _ => {
                let k = self.rng.random_range(0..self.pending.len());
                self.cancel(k).await
            }
        }
    }

    fn some_held(&mut self) -> String {
        let k = self.rng.random_range(0..self.held.len());
        self.held.keys().nth(k).expect("in range").clone()
    }

    fn server(&mut self) -> usize {
        self.rng.random_range(0..self.o.servers.len())
    }

    fn resource_json(res: &str) -> Value {
        json!({"repo": REPO, "path": ".", "workspace": res, "project_name": ""})
    }

    async fn acquire(
        &mut self,
        res: &str,
        wait: Option<u64>,
        reserve: bool,
    ) -> std::io::Result<()> {
        let rid = self.request_id();
        let (mut body, args) = self.acquire_request(res, &rid, wait);
        if let Some(w) = wait {
            body["wait"] = json!(format!("{w}ms"));
        }
        if reserve {
            body["reserve"] = json!(true);
        }
        let op = if reserve { Op::Reserve } else { Op::Acquire };
        let wait_for = if reserve { 0 } else { wait.unwrap_or(0) };
        let (rec, _) = self
            .call(
                op,
                args,
                "POST",
                "/api/v1/locks/acquire",
                Some(body),
                wait_for,
            )
            .await?;
        self.after_acquire(&rec, res, rid, reserve, wait.unwrap_or(0), rec.invoke);
        Ok(())
    }

    /// An acquire's body and history arguments, common to a first call and a collect:
    /// resource, owner, pull, ttl and request id (`wait_ms` goes in the arguments only).
    fn acquire_request(&self, res: &str, rid: &str, wait_ms: Option<u64>) -> (Value, Args) {
        let ttl = self.o.ttl_ms;
        let body = json!({
            "resource": Self::resource_json(res),
            "owner": self.owner,
            "pull": {"num": self.pull},
            "ttl": format!("{ttl}ms"),
            "request_id": rid,
        });
        let args = Args {
            resource: Some(res.to_owned()),
            owner: Some(self.owner.clone()),
            pull: Some(self.pull),
            ttl_ms: Some(ttl),
            wait_ms,
            request_id: Some(rid.to_owned()),
            ..Args::default()
        };
        (body, args)
    }

    fn after_acquire(
        &mut self,
        rec: &Record,
        res: &str,
        rid: String,
        reserve: bool,
        wait_ms: u64,
        origin: u64,
    ) {
        let r = &rec.result;
        if r.granted() {
            self.held.insert(
                res.to_owned(),
                Held {
                    lease_id: r.lease_id.clone().unwrap_or_default(),
                    owner: r.owner.clone().unwrap_or_else(|| self.owner.clone()),
                },
            );
            self.pending.retain(|p| p.request_id != rid);
            return;
        }
        match r.status {
            Status::Ok if r.entry_id.is_some() && reserve => {
                if let Some(p) = self.pending.iter_mut().find(|p| p.request_id == rid) {
                    p.entry_id = r.entry_id.clone();
                } else {
                    let entry_id = r.entry_id.clone();
                    self.push_pending(rid, res, reserve, origin, wait_ms, entry_id);
                }
            }
            Status::Ok if r.entry_id.is_some() => {
                // A waiter's entry still there after its call went away: ask again later.
                self.pend_once(rid, res, reserve, origin, wait_ms);
            }
            Status::Unknown => {
                // The answer was lost: the call may have granted or queued; retry later.
                self.pend_once(rid, res, reserve, origin, wait_ms);
            }
            // Refused before anything was sent: a collect's pending call stays pending.
            Status::Fail if r.http.is_none() => {}
            _ => self.pending.retain(|p| p.request_id != rid),
        }
    }

    /// Keeps an acquire to collect later (with no queue entry known) unless it is
    /// already pending.
    fn pend_once(&mut self, rid: String, res: &str, reserve: bool, origin: u64, wait_ms: u64) {
        if !self.pending.iter().any(|p| p.request_id == rid) {
            self.push_pending(rid, res, reserve, origin, wait_ms, None);
        }
    }

    /// Keeps an acquire (first invoked at `origin`) to collect later.
    fn push_pending(
        &mut self,
        rid: String,
        res: &str,
        reserve: bool,
        origin: u64,
        wait_ms: u64,
        entry_id: Option<String>,
    ) {
        self.pending.push(Pending {
            request_id: rid,
            resource: res.to_owned(),
            reserve,
            invoke: origin,
            wait_ms,
            entry_id,
        });
    }

    async fn collect(&mut self, k: usize) -> std::io::Result<()> {
        let p = &self.pending[k];
        let (rid, res, reserve, origin, wait_ms) = (
            p.request_id.clone(),
            p.resource.clone(),
            p.reserve,
            p.invoke,
            p.wait_ms,
        );
        let (mut body, args) = self.acquire_request(&res, &rid, Some(wait_ms));
        if reserve {
            body["reserve"] = json!(true);
            body["wait"] = json!(format!("{wait_ms}ms"));
        }
        let args = Args {
            origin_invoke: Some(origin),
            reserve,
            ..args
        };
        let (rec, _) = self
            .post(Op::Collect, args, "/api/v1/locks/acquire", body)
            .await?;
        self.after_acquire(&rec, &res, rid, reserve, wait_ms, origin);
        Ok(())
    }

    async fn cancel(&mut self, k: usize) -> std::io::Result<()> {
        let Some(entry) = self.pending[k].entry_id.clone() else {
            return self.collect(k).await;
        };
        let res = self.pending[k].resource.clone();
        let args = Args {
            resource: Some(res.clone()),
            entry_id: Some(entry.clone()),
            ..Args::default()
        };
        let path = format!("/api/v1/queue/{entry}?{}", resource_query(&res));
        let (rec, _) = self
            .call(Op::Cancel, args, "DELETE", &path, None, 0)
            .await?;
        if rec.result.status == Status::Ok {
            self.pending.remove(k);
        } else {
            // Not found (granted meanwhile, or gone) or unknown: a collect tells.
            self.pending[k].entry_id = None;
        }
        Ok(())
    }

    async fn refresh(&mut self, res: &str) -> std::io::Result<()> {
        let lease = self.held[res].lease_id.clone();
        let ttl = self.o.ttl_ms;
        let body = json!({
            "resource": Self::resource_json(res),
            "lease_id": lease,
            "ttl": format!("{ttl}ms"),
        });
        let args = Args {
            resource: Some(res.to_owned()),
            lease_id: Some(lease),
            ttl_ms: Some(ttl),
            ..Args::default()
        };
        let (rec, _) = self
            .post(Op::Refresh, args, "/api/v1/locks/refresh", body)
            .await?;
        if rec.result.status == Status::Fail && rec.result.http.is_some() {
            self.held.remove(res);
        }
        Ok(())
    }

    async fn release(&mut self, res: &str) -> std::io::Result<()> {
        let Some(h) = self.held.remove(res) else {
            return Ok(());
        };
        let body = json!({"resource": Self::resource_json(res), "lease_id": h.lease_id});
        let args = Args {
            resource: Some(res.to_owned()),
            lease_id: Some(h.lease_id),
            owner: Some(h.owner),
            ..Args::default()
        };
        self.post(Op::Release, args, "/api/v1/locks/release", body)
            .await?;
        Ok(())
    }

    async fn transfer(&mut self, res: &str) -> std::io::Result<()> {
        let Some(h) = self.held.remove(res) else {
            return Ok(());
        };
        self.transfers += 1;
        let to = format!("{}/t{}", self.owner, self.transfers);
        let body = json!({
            "resource": Self::resource_json(res),
            "lease_id": h.lease_id,
            "to": {"owner": to, "pull": {"num": self.pull}},
        });
        let args = Args {
            resource: Some(res.to_owned()),
            lease_id: Some(h.lease_id),
            owner: Some(h.owner),
            to_owner: Some(to.clone()),
            ttl_ms: Some(self.o.ttl_ms),
            ..Args::default()
        };
        let (rec, _) = self
            .post(Op::Transfer, args, "/api/v1/locks/transfer", body)
            .await?;
        if rec.result.status == Status::Ok
            && let Some(lease) = rec.result.lease_id.clone()
        {
            self.held.insert(
                res.to_owned(),
                Held {
                    lease_id: lease,
                    owner: rec.result.owner.clone().unwrap_or(to),
                },
            );
        }
        Ok(())
    }

    async fn release_pull(&mut self) -> std::io::Result<()> {
        let body = json!({"repo": REPO, "pull": self.pull});
        let args = Args {
            pull: Some(self.pull),
            ..Args::default()
        };
        let (rec, _) = self
            .post(Op::ReleasePull, args, "/api/v1/locks/release-pull", body)
            .await?;
        // Whatever the outcome, none of our leases can be trusted any more.
        self.held.clear();
        if rec.result.status == Status::Ok {
            self.pending.clear();
        } else {
            for p in &mut self.pending {
                p.entry_id = None;
            }
        }
        Ok(())
    }

    async fn read(&mut self, res: &str) -> std::io::Result<()> {
        let args = Args {
            resource: Some(res.to_owned()),
            ..Args::default()
        };
        let path = format!("/api/v1/lock?{}", resource_query(res));
        self.call(Op::Read, args, "GET", &path, None, 0).await?;
        Ok(())
    }

    /// After the deadline: every pending call gets an ending and every lease is released,
    /// each for a bounded time (a server still recovering may refuse; then it stays
    /// unresolved in the report rather than hanging the run).
    async fn drain(&mut self) -> std::io::Result<()> {
        let stop = now_ns() + ms(60_000);
        while !self.pending.is_empty() && now_ns() < stop {
            let before = self.pending.len();
            let k = 0;
            if self.pending[k].entry_id.is_some() {
                self.cancel(k).await?;
            } else {
                self.collect(k).await?;
                // Still queued: cancel next round; lost or refused: gone from the list.
            }
            if self.pending.len() == before {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let held: Vec<String> = self.held.keys().cloned().collect();
        for res in held {
            self.release(&res).await?;
        }
        Ok(())
    }

    /// A POST that the server answers at once (no wait), recorded.
    async fn post(
        &mut self,
        op: Op,
        args: Args,
        path: &str,
        body: Value,
    ) -> std::io::Result<(Record, Option<Value>)> {
        self.call(op, args, "POST", path, Some(body), 0).await
    }

    /// One HTTP call, recorded. `wait_ms` is how long the server may hold it open.
    async fn call(
        &mut self,
        op: Op,
        mut args: Args,
        method: &str,
        path: &str,
        body: Option<Value>,
        wait_ms: u64,
    ) -> std::io::Result<(Record, Option<Value>)> {
        let server = self.server();
        args.server = Some(server);
        let url = format!("{}{path}", self.o.servers[server]);
        // The server answers within 10 s (a wait: its wait + 5 s); a bit more here so
        // the server's own answer wins when it has one.
        let timeout = Duration::from_millis(12_000 + wait_ms);
        let mut req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url),
        }
        .timeout(timeout);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let invoke = now_ns();
        let answer = req.send().await;
        let (result, value) = match answer {
            Ok(resp) => {
                let code = resp.status().as_u16();
                match resp.json::<Value>().await {
                    Ok(v) => (outcome(op, code, &v), Some(v)),
                    Err(_) => (
                        Outcome {
                            status: Status::Unknown,
                            http: Some(code),
                            message: Some("unreadable answer".into()),
                            ..Outcome::default()
                        },
                        None,
                    ),
                }
            }
            Err(e) => {
                let status = if e.is_connect() {
                    Status::Fail
                } else {
                    Status::Unknown
                };
                let message = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "connection lost"
                };
                (
                    Outcome {
                        status,
                        code: Some(message.into()),
                        message: Some(message.into()),
                        ..Outcome::default()
                    },
                    None,
                )
            }
        };
        let complete = now_ns();
        let rec = Record {
            process: format!("c{}", self.o.id),
            op,
            args,
            invoke,
            complete,
            result,
        };
        self.out.write(&rec)?;
        self.ops += 1;
        Ok((rec, value))
    }
}

/// The query string naming resource `res` of [`REPO`].
fn resource_query(res: &str) -> String {
    format!(
        "repo={}&path=.&workspace={res}&project_name=",
        REPO.replace('/', "%2F")
    )
}

/// The history's view of one HTTP answer.
fn outcome(op: Op, http: u16, v: &Value) -> Outcome {
    let mut o = Outcome {
        http: Some(http),
        ..Outcome::default()
    };
    if !(200..300).contains(&http) {
        o.code = v["error"]["code"].as_str().map(str::to_owned);
        // 503: the call may or may not have run; 500: the store answered something
        // impossible (outcome not known either). Every other error changed nothing.
        o.status = if http == 503 || http == 500 || http == 408 {
            Status::Unknown
        } else {
            Status::Fail
        };
        return o;
    }
    let lock = match op {
        Op::Release => &v["released"],
        Op::Cancel => &v["cancelled"],
        _ => &v["lock"],
    };
    o.token = lock["fencing_token"].as_u64();
    o.owner = lock["owner"].as_str().map(str::to_owned);
    o.lease_id = lock["lease_id"].as_str().map(str::to_owned);
    if matches!(op, Op::Acquire | Op::Reserve | Op::Collect) {
        o.acquired = v["acquired"].as_bool();
        o.code = v["reason"].as_str().map(str::to_owned);
        o.entry_id = v["queue"]["entry_id"].as_str().map(str::to_owned);
        if o.acquired != Some(true) {
            // The holder's public view: no lease id is ours.
            o.lease_id = None;
        }
    }
    if op == Op::Cancel {
        o.entry_id = v["cancelled"]["entry_id"].as_str().map(str::to_owned);
    }
    o
}
