//! A UDP and TCP DNS server around a [`ZoneView`] (feature `server`).
//!
//! ```text
//!            ┌─ UDP worker × N (SO_REUSEPORT sockets) ─┐
//! clients ───┤                                         ├─ ZoneView::respond ◄── ArcSwap<ZoneView> ◄── publish()
//!            └─ TCP (tokio, one task per connection) ──┘        │ Forward / Chase
//!                                                               ▼
//!                                                     upstream (UDP; TCP for TCP clients)
//! ```
//!
//! - Readers never wait for an update: [`DnsServer::publish`] swaps the view atomically;
//!   a query answered during the swap sees the old or the new zone, whole.
//! - UDP answers respect the client's EDNS payload size (512 without EDNS) and set TC
//!   when they do not fit; the client then asks over TCP, where nothing is truncated.
//! - With an upstream, names outside the cluster zone (and reverse names the zone does not
//!   know, as kubeadm's `fallthrough in-addr.arpa ip6.arpa` does) are relayed to it, and
//!   ExternalName targets are resolved through it. Without one they get REFUSED.
//!
//! UDP is served by plain blocking sockets, one thread each, not by an async runtime: a
//! DNS answer costs less than the readiness bookkeeping around it.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::answer::{Outcome, Transport};
use crate::wire::{self, ResponseWriter, rcode};
use crate::zone::ZoneView;

/// Server settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address for UDP and TCP (port 0 picks a free port, the same for both).
    pub listen: SocketAddr,
    /// Where names outside the zone go; `None` refuses them.
    pub upstream: Option<SocketAddr>,
    /// UDP worker threads (default: the number of CPUs).
    pub udp_workers: usize,
    /// How long an upstream answer may take.
    pub upstream_timeout: Duration,
    /// How long an idle TCP connection stays open.
    pub tcp_idle: Duration,
}

impl ServerConfig {
    /// Defaults for `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            upstream: None,
            udp_workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            upstream_timeout: Duration::from_secs(2),
            tcp_idle: Duration::from_secs(10),
        }
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

/// IDs for upstream queries: not guessable from outside, never repeated soon.
struct IdSource(AtomicU32);

impl IdSource {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() | 1);
        Self(AtomicU32::new(seed))
    }

    fn next(&self) -> u16 {
        // xorshift32 on a shared state; a lost race only repeats a value.
        let mut x = self.0.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0.store(x, Ordering::Relaxed);
        (x >> 8) as u16
    }
}

/// A query waiting for the upstream.
enum Pending {
    /// Relay the reply to `client` with its original ID.
    Relay {
        client: SocketAddr,
        id: u16,
        since: Instant,
    },
    /// Answer `request` with the CNAME and the upstream's records for its target.
    Chase {
        client: SocketAddr,
        request: Vec<u8>,
        fallback: Vec<u8>,
        since: Instant,
    },
}

impl Pending {
    fn since(&self) -> Instant {
        match self {
            Self::Relay { since, .. } | Self::Chase { since, .. } => *since,
        }
    }
}

struct Upstream {
    socket: UdpSocket,
    pending: Mutex<HashMap<u16, Pending>>,
    ids: IdSource,
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
        for (i, sock) in sockets.into_iter().enumerate() {
            sock.set_read_timeout(Some(Duration::from_millis(200)))?;
            let upstream = match config.upstream {
                Some(up) => {
                    let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                        .parse()
                        .map_err(io::Error::other)?;
                    let s = UdpSocket::bind(bind)?;
                    s.connect(up)?;
                    s.set_read_timeout(Some(Duration::from_millis(100)))?;
                    Some(Arc::new(Upstream {
                        socket: s,
                        pending: Mutex::new(HashMap::new()),
                        ids: IdSource::new(),
                    }))
                }
                None => None,
            };
            if let Some(up) = &upstream {
                let (up, reply_sock, zone, stop) =
                    (up.clone(), sock.try_clone()?, zone.clone(), stop.clone());
                let timeout = config.upstream_timeout;
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("dns-upstream-{i}"))
                        .spawn(move || upstream_loop(&up, &reply_sock, &zone, &stop, timeout))?,
                );
            }
            let (zone, stop) = (zone.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || udp_loop(&sock, &zone, &stop, upstream.as_deref()))?,
            );
        }

        // TCP on the same port.
        let listener = std::net::TcpListener::from(reuse_port_socket(local, SockType::Stream)?);
        socket::listen(
            &listener,
            socket::Backlog::new(1024).map_err(io::Error::other)?,
        )?;
        listener.set_nonblocking(true)?;
        let (tcp_stop, tcp_stopped) = tokio::sync::oneshot::channel();
        let (zone_tcp, cfg) = (zone.clone(), config);
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
                    rt.block_on(tcp_loop(listener, zone_tcp, cfg, tcp_stopped));
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

fn udp_loop(sock: &UdpSocket, zone: &ZoneHandle, stop: &AtomicBool, upstream: Option<&Upstream>) {
    let mut buf = [0u8; 4096];
    let mut out = Vec::with_capacity(1500);
    while !stop.load(Ordering::Relaxed) {
        let (n, client) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(_) => continue,
        };
        let msg = &buf[..n];
        let view = zone.load();
        match view.respond(msg, &mut out, Transport::Udp, upstream.is_some()) {
            Outcome::Answered => {
                let _ = sock.send_to(&out, client);
            }
            Outcome::Ignore => {}
            Outcome::Forward => {
                if let Some(up) = upstream {
                    forward_udp(up, msg, client, sock);
                }
            }
            Outcome::Chase { target, qtype } => match upstream {
                Some(up) => {
                    let id = up.ids.next();
                    let query = wire::build_query(id, &target, qtype);
                    up.pending
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(
                            id,
                            Pending::Chase {
                                client,
                                request: msg.to_vec(),
                                fallback: out.clone(),
                                since: Instant::now(),
                            },
                        );
                    let _ = up.socket.send(&query);
                }
                None => {
                    let _ = sock.send_to(&out, client);
                }
            },
        }
    }
}

fn forward_udp(up: &Upstream, msg: &[u8], client: SocketAddr, sock: &UdpSocket) {
    if msg.len() < 12 {
        return;
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let new_id = up.ids.next();
    let mut copy = msg.to_vec();
    copy[..2].copy_from_slice(&new_id.to_be_bytes());
    up.pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            new_id,
            Pending::Relay {
                client,
                id,
                since: Instant::now(),
            },
        );
    if up.socket.send(&copy).is_err() {
        servfail(msg, sock, client);
    }
}

fn servfail(msg: &[u8], sock: &UdpSocket, client: SocketAddr) {
    if let Ok(req) = wire::parse_request(msg) {
        let mut out = Vec::new();
        let w = ResponseWriter::new(&mut out, &req, rcode::SERVFAIL, false, true);
        w.finish(512, None);
        let _ = sock.send_to(&out, client);
    }
}

fn upstream_loop(
    up: &Upstream,
    reply_sock: &UdpSocket,
    zone: &ZoneHandle,
    stop: &AtomicBool,
    timeout: Duration,
) {
    let mut buf = [0u8; 65535];
    let mut out = Vec::new();
    let mut last_sweep = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(n) = up.socket.recv(&mut buf) {
            let reply = &buf[..n];
            if n >= 12 {
                let id = u16::from_be_bytes([reply[0], reply[1]]);
                let pending = up
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&id);
                match pending {
                    Some(Pending::Relay {
                        client, id: orig, ..
                    }) => {
                        let mut copy = reply.to_vec();
                        copy[..2].copy_from_slice(&orig.to_be_bytes());
                        let _ = reply_sock.send_to(&copy, client);
                    }
                    Some(Pending::Chase {
                        client,
                        request,
                        fallback,
                        ..
                    }) => match wire::parse_answers(reply, id) {
                        Some(records) => {
                            zone.load().respond_chased(
                                &request,
                                &mut out,
                                Transport::Udp,
                                &records,
                            );
                            let _ = reply_sock.send_to(&out, client);
                        }
                        None => {
                            let _ = reply_sock.send_to(&fallback, client);
                        }
                    },
                    None => {}
                }
            }
        }
        if last_sweep.elapsed() > Duration::from_millis(250) {
            last_sweep = Instant::now();
            let expired: Vec<Pending> = {
                let mut p = up
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let keys: Vec<u16> = p
                    .iter()
                    .filter(|(_, v)| v.since().elapsed() > timeout)
                    .map(|(k, _)| *k)
                    .collect();
                keys.into_iter().filter_map(|k| p.remove(&k)).collect()
            };
            for e in expired {
                if let Pending::Chase {
                    client, fallback, ..
                } = e
                {
                    let _ = reply_sock.send_to(&fallback, client);
                }
                // Relayed queries time out silently: the client retries.
            }
        }
    }
}

async fn tcp_loop(
    listener: std::net::TcpListener,
    zone: ZoneHandle,
    config: ServerConfig,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let (zone, config) = (zone.clone(), config.clone());
                    tokio::spawn(async move {
                        let _ = serve_tcp(stream, zone, config).await;
                    });
                }
            }
        }
    }
}

async fn read_message(
    stream: &mut tokio::net::TcpStream,
    idle: Duration,
) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
        Err(_) => return Ok(None),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(r) => {
            r?;
        }
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tokio::time::timeout(idle, stream.read_exact(&mut msg))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    Ok(Some(msg))
}

async fn write_message(stream: &mut tokio::net::TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed).await
}

/// One exchange with the upstream over TCP.
async fn upstream_tcp(up: SocketAddr, msg: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect(up).await?;
        write_message(&mut s, msg).await?;
        read_message(&mut s, timeout)
            .await?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

async fn serve_tcp(
    mut stream: tokio::net::TcpStream,
    zone: ZoneHandle,
    config: ServerConfig,
) -> io::Result<()> {
    let mut out = Vec::new();
    let ids = IdSource::new();
    while let Some(msg) = read_message(&mut stream, config.tcp_idle).await? {
        let outcome =
            zone.load()
                .respond(&msg, &mut out, Transport::Tcp, config.upstream.is_some());
        match (outcome, config.upstream) {
            (Outcome::Answered, _) => write_message(&mut stream, &out).await?,
            (Outcome::Forward, Some(up)) => match upstream_tcp(up, &msg, config.upstream_timeout)
                .await
            {
                Ok(reply) => write_message(&mut stream, &reply).await?,
                Err(_) => {
                    if let Ok(req) = wire::parse_request(&msg) {
                        let w = ResponseWriter::new(&mut out, &req, rcode::SERVFAIL, false, true);
                        w.finish(usize::from(u16::MAX), None);
                        write_message(&mut stream, &out).await?;
                    }
                }
            },
            (Outcome::Chase { target, qtype }, Some(up)) => {
                let id = ids.next();
                let query = wire::build_query(id, &target, qtype);
                if let Ok(reply) = upstream_tcp(up, &query, config.upstream_timeout).await
                    && let Some(records) = wire::parse_answers(&reply, id)
                {
                    zone.load()
                        .respond_chased(&msg, &mut out, Transport::Tcp, &records);
                }
                write_message(&mut stream, &out).await?;
            }
            (Outcome::Chase { .. }, None) => write_message(&mut stream, &out).await?,
            (Outcome::Forward | Outcome::Ignore, _) => {}
        }
    }
    Ok(())
}
