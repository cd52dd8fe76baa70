//! A UDP and TCP DNS server around a [`ZoneView`] (feature `server`).
//!
//! ```text
//!            ┌─ UDP worker × N (SO_REUSEPORT sockets) ─┐
//! clients ───┤                                         ├─ ZoneView::respond ◄── ArcSwap<ZoneView> ◄── publish()
//!            └─ TCP (tokio; limited, timed out) ───────┘        │ Forward / Chase (allowed clients)
//!                                                               ▼
//!                                         forwarder: one random socket and ID per query,
//!                                         healthy upstreams picked at random, bounded
//! ```
//!
//! - Readers never wait for an update: [`DnsServer::publish`] swaps the view atomically;
//!   a query answered during the swap sees the old or the new zone, whole.
//! - UDP answers respect the client's EDNS payload size (512 without EDNS): the records
//!   that fit, with TC set when some did not. Over TCP up to 65,535 bytes, never TC.
//! - TCP holds up against clients that misbehave: at most
//!   [`ServerConfig::tcp_max_clients`] connections (a new one evicts the least recently
//!   active), an idle timeout between messages, a timeout for the rest of a message once
//!   its length arrived (bytes are stored as they come, never allocated ahead), a write
//!   timeout (a client that does not read its answers is dropped, not waited for), and
//!   accept errors back off. Pipelined queries are answered in order.
//! - Forwarding, as CoreDNS's `forward` plugin does it: names outside the cluster zone (and
//!   reverse names the zone does not know) go to an upstream picked at random among the
//!   healthy ones, each query from a fresh socket on a random port with a random ID (both
//!   from the OS-seeded CSPRNG), its answer accepted only from that upstream with that ID
//!   and that question, cut to what the client accepts; at most
//!   [`ServerConfig::max_concurrent`] queries in flight per upstream (REFUSED beyond, as
//!   CoreDNS does); an upstream that fails [`ServerConfig::max_fails`] times in a row is
//!   probed until it answers. ExternalName targets are resolved the same way, and only
//!   records for the target name are copied into our answer. Only clients in
//!   [`ServerConfig::allow_recursion`] get any of this; the others get REFUSED for names
//!   that are not ours: the server is not an open resolver.
//!
//! UDP is served by plain blocking sockets, one thread each, not by an async runtime: a
//! DNS answer costs less than the readiness bookkeeping around it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};
use rand::RngExt as _;
use service_core::ipnet::IpNet;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::answer::{Outcome, Transport};
use crate::wire::{self, ResponseWriter, rcode, rtype};
use crate::zone::ZoneView;

/// Server settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address for UDP and TCP (port 0 picks a free port, the same for both).
    pub listen: SocketAddr,
    /// Where names outside the zone go (empty: they are refused).
    pub upstreams: Vec<SocketAddr>,
    /// Clients whose queries for names outside the zone are forwarded (default: loopback).
    pub allow_recursion: Vec<IpNet>,
    /// UDP worker threads (default: the number of CPUs).
    pub udp_workers: usize,
    /// How long an upstream answer may take.
    pub upstream_timeout: Duration,
    /// Queries in flight per upstream (CoreDNS's `max_concurrent`; default 5,000).
    pub max_concurrent: usize,
    /// Failures in a row after which an upstream is left out until a probe succeeds (2).
    pub max_fails: u32,
    /// How often an unhealthy upstream is probed (500 ms).
    pub health_check: Duration,
    /// How long a TCP connection may stay idle between messages (10 s).
    pub tcp_idle: Duration,
    /// How long the rest of a TCP message may take once its length arrived (3 s).
    pub tcp_message: Duration,
    /// How long writing an answer may take (5 s): a client that does not read is dropped.
    pub tcp_write: Duration,
    /// TCP connections at once (1,000, as Knot's `tcp-max-clients` would be with 2,000
    /// file descriptors); a new connection evicts the least recently active one.
    pub tcp_max_clients: usize,
}

impl ServerConfig {
    /// Defaults for `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            upstreams: Vec::new(),
            allow_recursion: vec![
                "127.0.0.0/8".parse().unwrap_or_else(|_| unreachable!()),
                "::1/128".parse().unwrap_or_else(|_| unreachable!()),
            ],
            udp_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            upstream_timeout: Duration::from_secs(2),
            max_concurrent: 5_000,
            max_fails: 2,
            health_check: Duration::from_millis(500),
            tcp_idle: Duration::from_secs(10),
            tcp_message: Duration::from_secs(3),
            tcp_write: Duration::from_secs(5),
            tcp_max_clients: 1_000,
        }
    }

    fn recursion_allowed(&self, client: IpAddr) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
            v4 => v4,
        };
        !self.upstreams.is_empty() && self.allow_recursion.iter().any(|n| n.contains(&client))
    }
}

/// The zone the server answers from; share it to publish new versions.
pub type ZoneHandle = Arc<ArcSwap<ZoneView>>;

/// A running server. Dropping it stops it.
#[derive(Debug)]
pub struct DnsServer {
    zone: ZoneHandle,
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    tcp_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn reuse_port_socket(addr: SocketAddr, kind: SockType) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, kind, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if kind == SockType::Datagram {
        // Room for bursts: a few thousand queries.
        let _ = socket::setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
    }
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    Ok(fd)
}

/// One upstream and what we know of it.
#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    /// Failures in a row.
    fails: AtomicU32,
    /// Queries in flight.
    permits: Arc<Semaphore>,
}

/// The upstreams, shared by every query.
#[derive(Debug)]
struct Upstreams {
    list: Vec<Upstream>,
    timeout: Duration,
    max_fails: u32,
    forwarded: AtomicU64,
}

impl Upstreams {
    fn new(config: &ServerConfig) -> Self {
        Self {
            list: config
                .upstreams
                .iter()
                .map(|&addr| Upstream {
                    addr,
                    fails: AtomicU32::new(0),
                    permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
                })
                .collect(),
            timeout: config.upstream_timeout,
            max_fails: config.max_fails.max(1),
            forwarded: AtomicU64::new(0),
        }
    }

    /// A healthy upstream at random (any, when none is healthy); `skip` one already tried.
    fn pick(&self, skip: Option<usize>) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.list.len()).filter(|&i| Some(i) != skip).collect();
        let healthy: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.list[i].fails.load(Ordering::Relaxed) < self.max_fails)
            .collect();
        let from = if healthy.is_empty() {
            candidates
        } else {
            healthy
        };
        (!from.is_empty()).then(|| from[rand::rng().random_range(0..from.len())])
    }

    fn report(&self, i: usize, ok: bool) {
        let f = &self.list[i].fails;
        if ok {
            f.store(0, Ordering::Relaxed);
        } else {
            f.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Why forwarding produced no answer.
enum ForwardError {
    /// Every upstream is at `max_concurrent`.
    Busy,
    /// No answer in time (or none usable).
    Failed,
}

/// A UDP socket on a random port (from the CSPRNG; the kernel's choice if none is free
/// after a few tries), connected to `to`.
async fn random_socket(to: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    let ip: IpAddr = if to.is_ipv4() {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    };
    for _ in 0..8 {
        let port: u16 = rand::rng().random_range(1024..=65535);
        if let Ok(s) = tokio::net::UdpSocket::bind(SocketAddr::new(ip, port)).await {
            s.connect(to).await?;
            return Ok(s);
        }
    }
    let s = tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    s.connect(to).await?;
    Ok(s)
}

/// One exchange with upstream `up` over UDP: a fresh socket and ID, the answer accepted
/// only when it matches (ID and question), within the timeout.
async fn exchange_udp(up: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut q = query.to_vec();
    let id: u16 = rand::rng().random();
    q[..2].copy_from_slice(&id.to_be_bytes());
    let sock = random_socket(up).await?;
    sock.send(&q).await?;
    let mut buf = vec![0u8; 65_535];
    tokio::time::timeout(timeout, async {
        loop {
            let n = sock.recv(&mut buf).await?;
            if wire::reply_matches(&buf[..n], &q) {
                let mut reply = buf[..n].to_vec();
                reply[..2].copy_from_slice(&query[..2]);
                return Ok(reply);
            }
            // Not the answer to our question: someone guessing; keep waiting.
        }
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// One exchange with upstream `up` over TCP.
async fn exchange_tcp(up: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut q = query.to_vec();
    let id: u16 = rand::rng().random();
    q[..2].copy_from_slice(&id.to_be_bytes());
    tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect(up).await?;
        write_message(&mut s, &q, timeout).await?;
        let reply = read_message(&mut s, timeout, timeout)
            .await?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        if !wire::reply_matches(&reply, &q) {
            return Err(io::Error::other("the upstream answered another question"));
        }
        let mut reply = reply;
        reply[..2].copy_from_slice(&query[..2]);
        Ok(reply)
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Forwards `query` to an upstream (another one once if the first fails).
async fn forward(ups: &Upstreams, query: &[u8], tcp: bool) -> Result<Vec<u8>, ForwardError> {
    let mut tried = None;
    let mut busy = false;
    for _ in 0..2 {
        let Some(i) = ups.pick(tried) else { break };
        tried = Some(i);
        let up = &ups.list[i];
        let Ok(_permit) = up.permits.clone().try_acquire_owned() else {
            busy = true;
            continue;
        };
        ups.forwarded.fetch_add(1, Ordering::Relaxed);
        let result = if tcp {
            exchange_tcp(up.addr, query, ups.timeout).await
        } else {
            exchange_udp(up.addr, query, ups.timeout).await
        };
        match result {
            Ok(reply) => {
                ups.report(i, true);
                return Ok(reply);
            }
            Err(_) => ups.report(i, false),
        }
    }
    Err(if busy {
        ForwardError::Busy
    } else {
        ForwardError::Failed
    })
}

/// An answer with no records: `code` to `msg` (REFUSED when busy, SERVFAIL when failed).
fn error_answer(msg: &[u8], code: u16, udp: bool) -> Option<Vec<u8>> {
    let req = wire::parse_request(msg).ok()?;
    let mut out = Vec::new();
    let mut w = ResponseWriter::new(&mut out, &req, code, false, true);
    if req.edns.is_some() {
        w.opt(0);
    }
    w.finish(udp);
    Some(out)
}

/// Probes unhealthy upstreams until they answer.
async fn health_checks(ups: Arc<Upstreams>, every: Duration) {
    let probe = wire::build_query(0, "", rtype::NS);
    loop {
        tokio::time::sleep(every).await;
        for (i, up) in ups.list.iter().enumerate() {
            if up.fails.load(Ordering::Relaxed) >= ups.max_fails
                && exchange_udp(up.addr, &probe, ups.timeout).await.is_ok()
            {
                ups.report(i, true);
            }
        }
    }
}

/// A UDP query for the forwarder.
struct Job {
    query: Vec<u8>,
    client: SocketAddr,
    /// `Some((target, qtype))` to resolve an ExternalName's target; `None` to relay.
    chase: Option<(String, u16)>,
    /// The answer so far (the CNAME alone), sent if the chase fails.
    fallback: Vec<u8>,
}

/// Runs forwarded UDP queries, each in its own task.
async fn forwarder(
    mut jobs: mpsc::Receiver<Job>,
    ups: Arc<Upstreams>,
    reply_sock: Arc<UdpSocket>,
    zone: ZoneHandle,
) {
    while let Some(job) = jobs.recv().await {
        let (ups, sock, zone) = (ups.clone(), reply_sock.clone(), zone.clone());
        tokio::spawn(async move {
            let Ok(req) = wire::parse_request(&job.query) else {
                return;
            };
            let limit = wire::client_limit(&req);
            let edns = req.edns.is_some();
            let answer = match &job.chase {
                None => match forward(&ups, &job.query, false).await {
                    Ok(mut reply) => {
                        wire::fit_reply(&mut reply, limit, edns);
                        Some(reply)
                    }
                    Err(ForwardError::Busy) => error_answer(&job.query, rcode::REFUSED, true),
                    Err(ForwardError::Failed) => error_answer(&job.query, rcode::SERVFAIL, true),
                },
                Some((target, qtype)) => {
                    let q = wire::build_query(0, target, *qtype);
                    match forward(&ups, &q, false).await {
                        Ok(reply) => {
                            let id = u16::from_be_bytes([reply[0], reply[1]]);
                            match wire::parse_answers(&reply, id) {
                                Some(records) => {
                                    let mut out = Vec::new();
                                    zone.load().respond_chased(
                                        &job.query,
                                        &mut out,
                                        Transport::Udp,
                                        &records,
                                    );
                                    Some(out)
                                }
                                None => Some(job.fallback),
                            }
                        }
                        Err(_) => Some(job.fallback),
                    }
                }
            };
            if let Some(a) = answer {
                let _ = sock.send_to(&a, job.client);
            }
        });
    }
}

impl DnsServer {
    /// Binds and starts serving `view`.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start(config: ServerConfig, view: ZoneView) -> io::Result<Self> {
        let zone: ZoneHandle = Arc::new(ArcSwap::from_pointee(view));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();

        // UDP: the first socket decides the port when 0 was asked for.
        let first = reuse_port_socket(config.listen, SockType::Datagram)?;
        let first = UdpSocket::from(first);
        let local = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..config.udp_workers.max(1) {
            sockets.push(UdpSocket::from(reuse_port_socket(
                local,
                SockType::Datagram,
            )?));
        }
        let ups = Arc::new(Upstreams::new(&config));
        let (jobs_tx, jobs_rx) =
            mpsc::channel::<Job>(config.max_concurrent.max(1) * config.upstreams.len().max(1));
        let reply_sock = Arc::new(sockets[0].try_clone()?);
        let config = Arc::new(config);
        for (i, sock) in sockets.into_iter().enumerate() {
            sock.set_read_timeout(Some(Duration::from_millis(200)))?;
            let (zone, stop, jobs, config) =
                (zone.clone(), stop.clone(), jobs_tx.clone(), config.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || udp_loop(&sock, &zone, &stop, &config, &jobs))?,
            );
        }
        drop(jobs_tx);

        // TCP on the same port, and the forwarder, on one runtime.
        let listener = std::net::TcpListener::from(reuse_port_socket(local, SockType::Stream)?);
        socket::listen(
            &listener,
            socket::Backlog::new(1024).map_err(io::Error::other)?,
        )?;
        listener.set_nonblocking(true)?;
        let (tcp_stop, tcp_stopped) = tokio::sync::oneshot::channel();
        let zone_tcp = zone.clone();
        threads.push(
            std::thread::Builder::new()
                .name("dns-tcp".into())
                .spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    rt.block_on(async move {
                        if !config.upstreams.is_empty() {
                            tokio::spawn(forwarder(
                                jobs_rx,
                                ups.clone(),
                                reply_sock,
                                zone_tcp.clone(),
                            ));
                            tokio::spawn(health_checks(ups.clone(), config.health_check));
                        }
                        tcp_loop(listener, zone_tcp, config, ups, tcp_stopped).await;
                    });
                })?,
        );

        Ok(Self {
            zone,
            local,
            stop,
            threads,
            tcp_stop: Some(tcp_stop),
        })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The zone handle, to publish from elsewhere.
    pub fn zone(&self) -> ZoneHandle {
        self.zone.clone()
    }

    /// Serves `view` from now on. Queries in flight finish with the view they started with.
    pub fn publish(&self, view: ZoneView) {
        self.zone.store(Arc::new(view));
    }

    /// Stops serving and waits for the threads.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.tcp_stop.take() {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Datagrams taken (and answers sent) per system call at most.
const UDP_BATCH: usize = 32;

/// Serves one UDP socket: up to [`UDP_BATCH`] queries per `recvmmsg(2)` (it returns as soon
/// as one is there, with whatever else is queued), their answers in one `sendmmsg(2)`. Under
/// load that is two system calls per batch instead of two per query, which is most of what
/// a query costs.
fn udp_loop(
    sock: &UdpSocket,
    zone: &ZoneHandle,
    stop: &AtomicBool,
    config: &ServerConfig,
    jobs: &mpsc::Sender<Job>,
) {
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd as _;

    let fd = sock.as_raw_fd();
    let mut bufs = Box::new([[0u8; 4096]; UDP_BATCH]);
    let mut outs: Vec<Vec<u8>> = (0..UDP_BATCH).map(|_| Vec::with_capacity(1500)).collect();
    let mut recv_headers = socket::MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut send_headers = socket::MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
    let mut received: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(UDP_BATCH);
    let mut replies: Vec<(usize, SockaddrStorage)> = Vec::with_capacity(UDP_BATCH);
    while !stop.load(Ordering::Relaxed) {
        received.clear();
        {
            // Arrays on the stack: no allocation per batch.
            let mut iovs = bufs.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
            // Blocks for the first datagram (up to the socket's read timeout, so that
            // `stop` is seen), then takes what is queued without waiting.
            let Ok(got) = socket::recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                socket::MsgFlags::MSG_WAITFORONE,
                None,
            ) else {
                continue;
            };
            received.extend(got.map(|m| (m.bytes, m.address)));
        }
        let view = zone.load();
        replies.clear();
        for (i, (n, from)) in received.iter().enumerate() {
            let Some(client) = from.as_ref().and_then(to_socket_addr) else {
                continue;
            };
            let msg = &bufs[i][..*n];
            let out = &mut outs[i];
            let recursion = config.recursion_allowed(client.ip());
            let send = match view.respond(msg, out, Transport::Udp, recursion) {
                Outcome::Answered => true,
                Outcome::Ignore => false,
                Outcome::Forward => {
                    let job = Job {
                        query: msg.to_vec(),
                        client,
                        chase: None,
                        fallback: Vec::new(),
                    };
                    match jobs.try_send(job) {
                        Ok(()) => false,
                        Err(_) => match error_answer(msg, rcode::REFUSED, true) {
                            Some(a) => {
                                *out = a;
                                true
                            }
                            None => false,
                        },
                    }
                }
                Outcome::Chase { target, qtype } if recursion => {
                    let job = Job {
                        query: msg.to_vec(),
                        client,
                        chase: Some((target, qtype)),
                        fallback: out.clone(),
                    };
                    jobs.try_send(job).is_err()
                }
                Outcome::Chase { .. } => true,
            };
            if send && let Some(addr) = from {
                replies.push((i, *addr));
            }
        }
        if replies.is_empty() {
            continue;
        }
        let n = replies.len();
        let iovs: [[IoSlice<'_>; 1]; UDP_BATCH] = std::array::from_fn(|k| {
            [IoSlice::new(
                replies.get(k).map_or(&[][..], |(i, _)| &outs[*i]),
            )]
        });
        let addrs: [Option<SockaddrStorage>; UDP_BATCH] =
            std::array::from_fn(|k| replies.get(k).map(|(_, a)| *a));
        let sent = socket::sendmmsg(
            fd,
            &mut send_headers,
            iovs[..n].iter(),
            &addrs[..n],
            [] as [socket::ControlMessage<'_>; 0],
            socket::MsgFlags::empty(),
        )
        .map_or(0, Iterator::count);
        // What one call did not take (a full send buffer), one by one; a failure drops the
        // answer, as the network may.
        for (i, addr) in replies.iter().skip(sent) {
            if let Some(to) = to_socket_addr(addr) {
                let _ = sock.send_to(&outs[*i], to);
            }
        }
    }
}

fn to_socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// The live TCP connections, for the limit.
#[derive(Debug, Default)]
struct Connections {
    next: u64,
    live: HashMap<u64, (Instant, Arc<Notify>)>,
}

/// Takes a connection out of the table when its task ends.
struct Registered {
    conns: Arc<Mutex<Connections>>,
    id: u64,
}

impl Registered {
    fn touch(&self) {
        if let Some(c) = lock(&self.conns).live.get_mut(&self.id) {
            c.0 = Instant::now();
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.conns).live.remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn tcp_loop(
    listener: std::net::TcpListener,
    zone: ZoneHandle,
    config: Arc<ServerConfig>,
    ups: Arc<Upstreams>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let conns = Arc::new(Mutex::new(Connections::default()));
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => {
                        backoff = Duration::from_millis(5);
                        x
                    }
                    Err(_) => {
                        // Out of descriptors and the like: wait rather than spin.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                };
                let (id, kill) = {
                    let mut c = lock(&conns);
                    if c.live.len() >= config.tcp_max_clients.max(1) {
                        // Full: the least recently active connection makes room.
                        if let Some((&oldest, _)) = c.live.iter().min_by_key(|(_, (t, _))| *t)
                            && let Some((_, k)) = c.live.remove(&oldest)
                        {
                            k.notify_one();
                        }
                    }
                    c.next += 1;
                    let id = c.next;
                    let kill = Arc::new(Notify::new());
                    c.live.insert(id, (Instant::now(), kill.clone()));
                    (id, kill)
                };
                let reg = Registered { conns: conns.clone(), id };
                let (zone, config, ups) = (zone.clone(), config.clone(), ups.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = kill.notified() => {}
                        _ = serve_tcp(stream, peer, zone, config, ups, &reg) => {}
                    }
                    drop(reg);
                });
            }
        }
    }
}

/// Reads one length-prefixed message: `None` at the end of the stream or after `idle`
/// without one. The bytes are stored as they arrive.
async fn read_message(
    stream: &mut tokio::net::TcpStream,
    idle: Duration,
    message: Duration,
) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
        Err(_) => return Ok(None),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(r) => {
            r?;
        }
    }
    let len = usize::from(u16::from_be_bytes(len));
    let mut msg = Vec::with_capacity(len.min(4096));
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(message, async {
        while msg.len() < len {
            let want = (len - msg.len()).min(chunk.len());
            let n = stream.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            msg.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    Ok(Some(msg))
}

async fn write_message(
    stream: &mut tokio::net::TcpStream,
    msg: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    tokio::time::timeout(timeout, stream.write_all(&framed))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

async fn serve_tcp(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    zone: ZoneHandle,
    config: Arc<ServerConfig>,
    ups: Arc<Upstreams>,
    reg: &Registered,
) -> io::Result<()> {
    let mut out = Vec::new();
    let recursion = config.recursion_allowed(peer.ip());
    while let Some(msg) = read_message(&mut stream, config.tcp_idle, config.tcp_message).await? {
        reg.touch();
        let outcome = zone
            .load()
            .respond(&msg, &mut out, Transport::Tcp, recursion);
        match outcome {
            Outcome::Answered => {}
            Outcome::Forward => {
                out = match forward(&ups, &msg, true).await {
                    Ok(reply) => reply,
                    Err(ForwardError::Busy) => {
                        error_answer(&msg, rcode::REFUSED, false).unwrap_or_default()
                    }
                    Err(ForwardError::Failed) => {
                        error_answer(&msg, rcode::SERVFAIL, false).unwrap_or_default()
                    }
                };
            }
            Outcome::Chase { target, qtype } if recursion => {
                let q = wire::build_query(0, &target, qtype);
                if let Ok(reply) = forward(&ups, &q, true).await {
                    let id = u16::from_be_bytes([reply[0], reply[1]]);
                    if let Some(records) = wire::parse_answers(&reply, id) {
                        zone.load()
                            .respond_chased(&msg, &mut out, Transport::Tcp, &records);
                    }
                }
            }
            Outcome::Chase { .. } => {}
            Outcome::Ignore => continue,
        }
        if !out.is_empty() {
            write_message(&mut stream, &out, config.tcp_write).await?;
            reg.touch();
        }
    }
    Ok(())
}
