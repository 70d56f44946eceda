//! A fault-injecting TCP proxy: [`FaultProxy`] listens on a free loopback port and
//! forwards every connection to one target (a `redis-server`), and can be told at
//! runtime to break that traffic in the ways a network breaks it.
//!
//! It exists because the failures that matter for at-most-once and fencing happen
//! *between* client and server, where killing or pausing the server cannot reach:
//! a request that arrived and ran but whose reply never came back, a link that
//! stalls, a link that drops while the server lives on. The proxy owns exactly that
//! part: the sockets between the client and the target, nothing of the server.
//!
//! # Faults
//!
//! - [`forward`](FaultProxy::forward): pass bytes through (the start state); also
//!   ends a delay, a pause and a refusal.
//! - [`cut_after_write`](FaultProxy::cut_after_write) /
//!   [`cut_after_write_containing`](FaultProxy::cut_after_write_containing):
//!   one-shot. The next client-to-server chunk (or the next one containing a byte
//!   pattern, e.g. a command's argument) is written to the target; from then on no
//!   byte of the target reaches that client, and once the target has answered (or
//!   after a grace period) both sockets of that connection are shut. The request ran;
//!   its reply is lost. Other connections are untouched; afterwards the proxy
//!   forwards again, so a client that resends the request would see it succeed.
//! - [`delay`](FaultProxy::delay): every chunk, either way, waits this long before it
//!   is forwarded (added latency; `Duration::ZERO` ends it).
//! - [`cut_all`](FaultProxy::cut_all): shuts every live connection now, and new ones
//!   are accepted and closed at once (never forwarded) until [`forward`](FaultProxy::forward).
//! - [`pause`](FaultProxy::pause) / [`resume`](FaultProxy::resume): bytes are held
//!   (not read further, so they wait in the kernel's buffers; a chunk already read is
//!   held in the proxy) and flow again on resume, in order. Connections stay open.
//!
//! # Bounds
//!
//! Threads: one accepting, two per connection. Every socket read polls with a short
//! timeout so a thread notices a fault or the end within [`POLL`]. Dropping the proxy
//! shuts all its connections and joins all its threads. Only `127.0.0.1` is ever
//! listened on; the target is whatever the test gives (a loopback server).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often blocked proxy threads look at the fault state and the stop flag.
pub const POLL: Duration = Duration::from_millis(10);

/// How long a "cut after write" waits for the target's reply before cutting anyway.
const CUT_GRACE: Duration = Duration::from_secs(2);

/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The proxy's fault state, read by every connection's threads.
#[derive(Default)]
struct State {
    /// Armed "cut after write": `Some(pattern)`, an empty pattern matching any chunk.
    cut_after_write: Option<Vec<u8>>,
    delay: Duration,
    paused: bool,
    refusing: bool,
}

/// One proxied connection's two sockets.
struct Link {
    client: TcpStream,
    server: TcpStream,
    /// Set before the request that triggers a cut is written: from then on the
    /// target's bytes are dropped.
    cutting: AtomicBool,
    /// The target sent something after `cutting` was set.
    answered: AtomicBool,
    closed: AtomicBool,
}

impl Link {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    /// Signalled on every state change (pause ends, stop).
    changed: Condvar,
    stop: AtomicBool,
    links: Mutex<Vec<Arc<Link>>>,
    accepted: AtomicU64,
    cuts: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state());
        self.changed.notify_all();
    }

    /// Waits while paused; false once the proxy stops or the link closed.
    fn wait_unpaused(&self, link: &Link) -> bool {
        let mut s = self.state();
        while s.paused && !self.stopped(link) {
            s = self
                .changed
                .wait_timeout(s, POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        !self.stopped(link)
    }

    fn stopped(&self, link: &Link) -> bool {
        self.stop.load(Ordering::Acquire) || link.closed.load(Ordering::Acquire)
    }

    fn delay(&self) -> Duration {
        self.state().delay
    }
}

/// A fault-injecting TCP proxy in front of one target; see the module docs.
/// Dropping it closes every connection and stops its threads.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .finish()
    }
}

impl FaultProxy {
    /// Listens on a free `127.0.0.1` port, forwarding to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("proxy for {target}: cannot listen: {e}"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("listener address");
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
        });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(listener, s))
            .expect("spawn proxy thread");
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Forward normally: ends a delay, a pause, a refusal and an armed cut.
    pub fn forward(&self) {
        self.shared.update(|s| *s = State::default());
    }

    /// Arms a one-shot cut on the next client-to-server chunk of any connection.
    pub fn cut_after_write(&self) {
        self.cut_after_write_containing(b"");
    }

    /// Arms a one-shot cut on the next client-to-server chunk that contains
    /// `pattern` (e.g. `b"EVALSHA"`); other traffic passes meanwhile. The pattern
    /// is matched within one chunk, which a small command always is.
    pub fn cut_after_write_containing(&self, pattern: &[u8]) {
        let pattern = pattern.to_vec();
        self.shared.update(|s| s.cut_after_write = Some(pattern));
    }

    /// Whether a cut is armed and has not fired yet.
    pub fn cut_armed(&self) -> bool {
        self.shared.state().cut_after_write.is_some()
    }

    /// How many "cut after write" faults have fired (the request was written and
    /// its connection cut).
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::Acquire)
    }

    /// Delays every chunk, either way, by `delay` (`Duration::ZERO`: none).
    pub fn delay(&self, delay: Duration) {
        self.shared.update(|s| s.delay = delay);
    }

    /// Cuts every live connection now and closes new ones at once, until
    /// [`forward`](Self::forward).
    pub fn cut_all(&self) {
        self.shared.update(|s| s.refusing = true);
        self.close_links();
    }

    /// Holds all bytes until [`resume`](Self::resume) (or [`forward`](Self::forward)).
    pub fn pause(&self) {
        self.shared.update(|s| s.paused = true);
    }

    pub fn resume(&self) {
        self.shared.update(|s| s.paused = false);
    }

    /// Connections accepted so far (including refused ones).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Acquire)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        let mut links = self.shared.links.lock().unwrap_or_else(|p| p.into_inner());
        links.retain(|l| !l.closed.load(Ordering::Acquire));
        links.len()
    }

    fn close_links(&self) {
        let links =
            std::mem::take(&mut *self.shared.links.lock().unwrap_or_else(|p| p.into_inner()));
        for l in links {
            l.close();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.changed.notify_all();
        self.close_links();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::Acquire) {
        pumps.retain(|h| !h.is_finished());
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(_) => {
                std::thread::sleep(POLL);
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::AcqRel);
        if shared.state().refusing {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
            // The target is down: the client sees its connection closed.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let setup = |s: &TcpStream| {
            s.set_nonblocking(false)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(POLL))
        };
        if setup(&client).is_err() || setup(&server).is_err() {
            continue;
        }
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let link = Arc::new(Link {
            client,
            server,
            cutting: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        shared
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(link.clone());
        for upstream in [true, false] {
            let (shared, mine) = (shared.clone(), link.clone());
            let (from, to) = if upstream {
                (c2.try_clone(), s2.try_clone())
            } else {
                (s2.try_clone(), c2.try_clone())
            };
            let (Ok(from), Ok(to)) = (from, to) else {
                link.close();
                break;
            };
            if let Ok(h) = std::thread::Builder::new()
                .name("proxy-pump".into())
                .spawn(move || pump(&shared, &mine, from, to, upstream))
            {
                pumps.push(h);
            } else {
                link.close();
            }
        }
    }
    for h in pumps {
        let _ = h.join();
    }
}

/// Copies one direction of one link until either side closes, applying the faults.
fn pump(shared: &Shared, link: &Link, mut from: TcpStream, mut to: TcpStream, upstream: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !shared.wait_unpaused(link) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        if !upstream && link.cutting.load(Ordering::Acquire) {
            // The reply to the cut request (or anything after it) never reaches the client.
            link.answered.store(true, Ordering::Release);
            continue;
        }
        let delay = shared.delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        // A chunk read before a pause is held until the pause ends.
        if !shared.wait_unpaused(link) {
            break;
        }
        let cut = upstream && {
            let mut s = shared.state();
            let hit = s
                .cut_after_write
                .as_deref()
                .is_some_and(|p| p.is_empty() || chunk.windows(p.len()).any(|w| w == p));
            if hit {
                s.cut_after_write = None;
                link.cutting.store(true, Ordering::Release);
            }
            hit
        };
        if to.write_all(chunk).is_err() {
            break;
        }
        if cut {
            let deadline = Instant::now() + CUT_GRACE;
            while !link.answered.load(Ordering::Acquire)
                && Instant::now() < deadline
                && !shared.stop.load(Ordering::Acquire)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            shared.cuts.fetch_add(1, Ordering::AcqRel);
            break;
        }
    }
    // Either side ending ends the link: a half-open proxy would hide a dead peer.
    link.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RedisOptions, RedisServer};
    use std::io::BufRead;

    /// A minimal RESP client over the proxy (no dependency on a Redis crate).
    struct Client {
        stream: TcpStream,
        reader: std::io::BufReader<TcpStream>,
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let stream = TcpStream::connect(addr).expect("connect to proxy");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let reader = std::io::BufReader::new(stream.try_clone().unwrap());
            Client { stream, reader }
        }

        fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
            let mut out = format!("*{}\r\n", args.len());
            for a in args {
                out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
            self.stream.write_all(out.as_bytes())
        }

        /// One reply line (simple strings, integers, errors; bulk strings' content).
        fn reply(&mut self) -> std::io::Result<String> {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end().to_string();
            if let Some(len) = line.strip_prefix('$') {
                if len == "-1" {
                    return Ok("(nil)".into());
                }
                let mut body = String::new();
                self.reader.read_line(&mut body)?;
                return Ok(body.trim_end().to_string());
            }
            Ok(line)
        }

        fn call(&mut self, args: &[&str]) -> std::io::Result<String> {
            self.send(args)?;
            self.reply()
        }
    }

    fn server() -> RedisServer {
        RedisServer::start(RedisOptions::default())
    }

    #[test]
    fn forwards_both_ways() {
        let redis = server();
        let proxy = FaultProxy::start(redis.addr());
        let mut c = Client::connect(proxy.addr());
        assert_eq!(c.call(&["SET", "k", "v"]).unwrap(), "+OK");
        assert_eq!(c.call(&["GET", "k"]).unwrap(), "v");
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(proxy.open_connections(), 1);
    }

    #[test]
    fn cut_after_write_runs_the_request_and_loses_its_reply() {
        let redis = server();
        let proxy = FaultProxy::start(redis.addr());
        let mut c = Client::connect(proxy.addr());
        assert_eq!(c.call(&["PING"]).unwrap(), "+PONG");
        proxy.cut_after_write_containing(b"INCR");
        // Traffic without the pattern still passes.
        assert_eq!(c.call(&["GET", "n"]).unwrap(), "(nil)");
        assert!(proxy.cut_armed());
        c.send(&["INCR", "n"]).unwrap();
        assert!(c.reply().is_err(), "the reply must never arrive");
        assert_eq!(proxy.cuts(), 1);
        assert!(!proxy.cut_armed(), "one-shot");
        // It ran exactly once on the server.
        assert_eq!(redis.redis_cli(["GET", "n"]), "1");
        // The proxy forwards again: a resend would run a second time.
        let mut c = Client::connect(proxy.addr());
        assert_eq!(c.call(&["INCR", "n"]).unwrap(), ":2");
    }

    #[test]
    fn cut_after_write_cuts_only_that_connection() {
        let redis = server();
        let proxy = FaultProxy::start(redis.addr());
        let mut a = Client::connect(proxy.addr());
        let mut b = Client::connect(proxy.addr());
        assert_eq!(a.call(&["PING"]).unwrap(), "+PONG");
        assert_eq!(b.call(&["PING"]).unwrap(), "+PONG");
        proxy.cut_after_write();
        a.send(&["SET", "x", "1"]).unwrap();
        assert!(a.reply().is_err());
        assert_eq!(b.call(&["GET", "x"]).unwrap(), "1");
    }

    #[test]
    fn delay_adds_latency_both_ways() {
        let redis = server();
        let proxy = FaultProxy::start(redis.addr());
        let mut c = Client::connect(proxy.addr());
        assert_eq!(c.call(&["PING"]).unwrap(), "+PONG");
        proxy.delay(Duration::from_millis(300));
        let t = Instant::now();
        assert_eq!(c.call(&["PING"]).unwrap(), "+PONG");
        assert!(
            t.elapsed() >= Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
        proxy.forward();
        let t = Instant::now();
        assert_eq!(c.call(&["PING"]).unwrap(), "+PONG");
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn cut_all_closes_and_refuses_until_forward() {
        let redis = server();
        let proxy = FaultProxy::start(redis.addr());
        let mut c = Client::connect(proxy.addr());
        assert_eq!(c.call(&["PING"]).unwrap(), "+PONG");
        proxy.cut_all();
        assert!(c.call(&["PING"]).is_err(), "live connection cut");
        let mut refused = Client::connect(proxy.addr());
        assert!(refused.call(&["PING"]).is_err(), "new connection closed");
        assert_eq!(proxy.open_connections(), 0);
        proxy.forward();
        let mut c = Client::connect(proxy.addr());
        assert_eq!(c.call(&["PING"]).unwrap(), "+PONG");
    }

    #[test]
    fn pause_holds_bytes_and_resume_delivers_them_in_order() {
        let redis = server();
        let proxy = FaultProxy::start(redis.addr());
        let mut c = Client::connect(proxy.addr());
        assert_eq!(c.call(&["PING"]).unwrap(), "+PONG");
        proxy.pause();
        c.send(&["SET", "p", "held"]).unwrap();
        c.send(&["GET", "p"]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            redis.redis_cli(["EXISTS", "p"]),
            "0",
            "nothing passed while paused"
        );
        proxy.resume();
        assert_eq!(c.reply().unwrap(), "+OK");
        assert_eq!(c.reply().unwrap(), "held");
    }

    #[test]
    fn drop_closes_connections_and_stops() {
        let redis = server();
        let proxy = FaultProxy::start(redis.addr());
        let addr = proxy.addr();
        let mut c = Client::connect(addr);
        assert_eq!(c.call(&["PING"]).unwrap(), "+PONG");
        let t = Instant::now();
        drop(proxy);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(c.call(&["PING"]).is_err());
        assert!(TcpStream::connect(addr).is_err(), "no longer listening");
    }
}
