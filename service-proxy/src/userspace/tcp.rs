//! The TCP path: accept, dial an endpoint (retrying the next one with growing timeouts),
//! then move bytes both ways with `splice(2)` through a pipe, so they never enter user
//! space. A task per connection, no thread; a connection costs two pipes of kernel buffer.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, Shutdown, SockFlag, SockType, SockaddrStorage, shutdown, sockopt,
};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::balancer::{Balancer, DIAL_TIMEOUTS};

/// Bytes moved per `splice` call at most (the pipe is made this large).
const PIPE_SIZE: usize = 1 << 20;

/// How a portal bounds its connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The socket buffer size for the `splice` phase, if any (see
    /// `UserspaceConfig::bulk_buffer`).
    pub bulk_buffer: Option<usize>,
    /// Connections relayed at once.
    pub max_connections: usize,
    /// No byte either way for this long closes a connection (zero: never).
    pub idle: Duration,
    /// Keepalive idle time on both sides (zero: off).
    pub keepalive: Duration,
}

/// Accepts connections forever, each served on its own task, at most
/// `limits.max_connections` at once (one more is closed as soon as accepted).
pub(crate) async fn serve(listener: TcpListener, balancer: Arc<Mutex<Balancer>>, limits: Limits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                // Full: closing at once tells the client, where leaving it in the backlog
                // would let it wait for nothing.
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    drop(client);
                    continue;
                };
                let balancer = Arc::clone(&balancer);
                tokio::spawn(async move {
                    connection(client, peer, balancer, limits).await;
                    drop(permit);
                });
            }
            // Out of file descriptors and the like: back off a little rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Turns on TCP keepalive with `idle` before the first probe (75 s between probes, 9
/// probes: the kernel's defaults).
fn keepalive(stream: &TcpStream, idle: Duration) {
    if idle.is_zero() {
        return;
    }
    let secs = u32::try_from(idle.as_secs().max(1)).unwrap_or(u32::MAX);
    let _ = socket::setsockopt(stream, sockopt::KeepAlive, &true);
    let _ = socket::setsockopt(stream, sockopt::TcpKeepIdle, &secs);
}

/// Dials an endpoint for `peer` (up to four attempts, 250 ms to 2 s, each on the next
/// endpoint) and relays; closes the client when every attempt failed.
async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    balancer: Arc<Mutex<Balancer>>,
    limits: Limits,
) {
    keepalive(&client, limits.keepalive);
    let mut retry = false;
    for timeout in DIAL_TIMEOUTS {
        let endpoint = match balancer.lock() {
            Ok(mut b) => b.pick(peer.ip(), Instant::now(), retry),
            Err(_) => None,
        };
        let Some(endpoint) = endpoint else {
            return;
        };
        // The client side inherited TCP_NODELAY from the listener; `dial` sets it on the
        // backend side.
        if let Ok(backend) = dial(endpoint, timeout).await {
            keepalive(&backend, limits.keepalive);
            relay(client, backend, limits.bulk_buffer, limits.idle).await;
            return;
        }
        retry = true;
    }
}

/// Connects to `endpoint` (with TCP_NODELAY) within `timeout`.
///
/// To an endpoint on this node (loopback, a pod behind a veth pair) the handshake is
/// usually over when `connect(2)` returns, and a second `connect` says so: 0 once
/// established, the error once refused (`EALREADY` while in progress). Then no timer is
/// armed and no readiness event awaited: each such connection saves tokio's timer wakeup
/// (an eventfd write and an extra `epoll_wait`) and the `SO_ERROR` read. Otherwise it waits
/// for writability, as `TcpStream::connect` would, bounded by `timeout`.
async fn dial(endpoint: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let family = if endpoint.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket::socket(family, SockType::Stream, flags, None)?;
    let _ = socket::setsockopt(&fd, sockopt::TcpNoDelay, &true);
    let addr = SockaddrStorage::from(endpoint);
    let done = match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => true,
        Err(Errno::EINPROGRESS) => match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) | Err(Errno::EISCONN) => true,
            Err(Errno::EALREADY | Errno::EINPROGRESS) => false,
            Err(e) => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    let stream = TcpStream::from_std(std::net::TcpStream::from(fd))?;
    if done {
        return Ok(stream);
    }
    tokio::time::timeout(timeout, stream.writable())
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    match stream.take_error()? {
        Some(e) => Err(e),
        None => Ok(stream),
    }
}

/// Relays both ways until both directions ended, or until no byte moved either way for
/// `idle` (zero: no limit). An end of stream is passed on as a half-close; an error or the
/// idle timeout closes both connections.
/// Both sockets should have TCP_NODELAY: small exchanges go out at once.
pub(crate) async fn relay(a: TcpStream, b: TcpStream, bulk_buffer: Option<usize>, idle: Duration) {
    let ended = AtomicBool::new(false);
    let activity = Activity::new();
    let both = async {
        tokio::join!(
            pump(&a, &b, bulk_buffer, &ended, &activity),
            pump(&b, &a, bulk_buffer, &ended, &activity)
        )
    };
    let failed = tokio::select! {
        (x, y) = both => x.is_err() || y.is_err(),
        () = activity.idle_for(idle) => true,
    };
    if failed {
        let _ = shutdown(a.as_raw_fd(), Shutdown::Both);
        let _ = shutdown(b.as_raw_fd(), Shutdown::Both);
    }
}

/// When bytes last moved through a connection, either way.
struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch`.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// Completes once nothing moved for `idle`; never when `idle` is zero. One timer per
    /// idle period, not one per read.
    async fn idle_for(&self, idle: Duration) {
        if idle.is_zero() {
            return std::future::pending().await;
        }
        let mut wait = idle;
        loop {
            tokio::time::sleep(wait).await;
            let quiet =
                Duration::from_millis(self.now().saturating_sub(self.last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return;
            }
            wait = idle - quiet;
        }
    }
}

/// Passes the end of `src`'s stream on as a half-close of `dst`, unless the other
/// direction has ended already (`ended`): then both sockets are closed next, and closing
/// sends the FIN (a FIN, not a reset: both directions were read to their end). One
/// `shutdown(2)` fewer per connection.
fn half_close(dst: &TcpStream, ended: &AtomicBool) {
    if !ended.swap(true, Ordering::Relaxed) {
        let _ = shutdown(dst.as_raw_fd(), Shutdown::Write);
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) =
        nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // A larger pipe moves more per call; the default (64 KiB) still works.
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
    Ok((r, w))
}

/// Bytes copied through user space before a direction switches to `splice` (small
/// request/response exchanges never pay for the pipes).
const COPY_BUFFER: usize = 16 << 10;

/// Moves everything `src` sends to `dst`, then half-closes `dst` (see [`half_close`]).
/// Starts by copying through a small buffer; the first read that fills it switches to
/// `splice` for the rest.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    bulk_buffer: Option<usize>,
    ended: &AtomicBool,
    activity: &Activity,
) -> io::Result<u64> {
    // Read into spare capacity: no zeroing per connection.
    let mut buf: Vec<u8> = Vec::with_capacity(COPY_BUFFER);
    let mut total = 0u64;
    loop {
        src.readable().await?;
        buf.clear();
        let n = match src.try_read_buf(&mut buf) {
            Ok(0) => {
                half_close(dst, ended);
                return Ok(total);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        activity.touch();
        write_all(dst, &buf[..n]).await?;
        total += n as u64;
        if n == COPY_BUFFER {
            return splice_rest(src, dst, total, bulk_buffer, ended, activity).await;
        }
    }
}

/// Writes all of `data` to `dst`: straight to the socket first, then as tokio reports
/// room. A connection `dial` just made has room, but tokio learns that only from its
/// first event: waiting for it put a whole `epoll_wait` round (and whatever else that
/// round brought) between a client's first bytes and their forwarding.
async fn write_all(dst: &TcpStream, data: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    while sent < data.len() {
        match socket::send(dst.as_raw_fd(), &data[sent..], MsgFlags::MSG_NOSIGNAL) {
            Ok(m) => sent += m,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => break,
            Err(e) => return Err(e.into()),
        }
    }
    while sent < data.len() {
        dst.writable().await?;
        match dst.try_write(&data[sent..]) {
            Ok(m) => sent += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves the rest with `splice(2)` through a pipe, then half-closes `dst`. With
/// `bulk_buffer`, `src` gets that receive buffer and `dst` that send buffer first: on the
/// 2-core loopback benchmark a 64 MiB stream went from 0.69-0.82x (mean 0.74) of a direct
/// connection to 0.73-0.92x (mean 0.81): each side runs longer between wakeups.
async fn splice_rest(
    src: &TcpStream,
    dst: &TcpStream,
    mut total: u64,
    bulk_buffer: Option<usize>,
    ended: &AtomicBool,
    activity: &Activity,
) -> io::Result<u64> {
    if let Some(size) = bulk_buffer {
        // Best effort: the kernel may refuse, and the relay works either way.
        let _ = socket::setsockopt(src, sockopt::RcvBuf, &size);
        let _ = socket::setsockopt(dst, sockopt::SndBuf, &size);
    }
    let (pr, pw) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    loop {
        src.readable().await?;
        let n = match src.try_io(Interest::READABLE, || {
            splice(src.as_fd(), None, pw.as_fd(), None, PIPE_SIZE, flags).map_err(io::Error::from)
        }) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        activity.touch();
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pr.as_fd(), None, dst.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
    }
    half_close(dst, ended);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn dial_connects_over_both_families_and_reports_refusal() {
        let rt = runtime();
        for ip in ["127.0.0.1", "::1"] {
            let Ok(listener) = std::net::TcpListener::bind((ip, 0)) else {
                // No IPv6 loopback on this machine.
                continue;
            };
            let addr = listener.local_addr().expect("addr");
            let stream = rt
                .block_on(dial(addr, Duration::from_secs(2)))
                .expect("dial");
            assert_eq!(stream.peer_addr().expect("peer"), addr);
            assert!(stream.nodelay().expect("nodelay"), "{ip}: TCP_NODELAY");
            drop(listener);
            // Nothing listens there now: refused at once, not after the timeout.
            let started = Instant::now();
            let err = rt
                .block_on(dial(addr, Duration::from_secs(2)))
                .expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{ip}: {err}");
            assert!(started.elapsed() < Duration::from_secs(1));
        }
    }

    /// Small, spaced writes into a backend with small buffers that does not read at first:
    /// the relay's copying sends run into a full send buffer (and wait for room), then
    /// everything arrives, in order, followed by the end of stream.
    #[test]
    fn relay_waits_for_room_and_loses_nothing() {
        use std::io::{Read, Write};
        const TOTAL: usize = 2 << 20;
        let rt = runtime();
        let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        // Accepted sockets inherit it: a small window keeps the relay's sends queued.
        socket::setsockopt(&backend, sockopt::RcvBuf, &4096).expect("SO_RCVBUF");
        let backend_addr = backend.local_addr().expect("addr");
        let reader = std::thread::spawn(move || {
            let (mut c, _) = backend.accept().expect("accept");
            std::thread::sleep(Duration::from_millis(300));
            let mut got = Vec::with_capacity(TOTAL);
            c.read_to_end(&mut got).expect("read");
            got
        });
        let front = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
        let front_addr = front.local_addr().expect("addr");
        let writer = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(front_addr).expect("connect");
            let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
            // Spaced out, so that the relay reads them one by one (and keeps copying).
            for chunk in data.chunks(1000) {
                c.write_all(chunk).expect("write");
                std::thread::sleep(Duration::from_micros(20));
            }
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        });
        // A small send buffer on the relay's backend side (no autotuning up to MiBs).
        let backend = std::net::TcpStream::connect(backend_addr).expect("connect");
        socket::setsockopt(&backend, sockopt::SndBuf, &4096).expect("SO_SNDBUF");
        backend.set_nonblocking(true).expect("nonblocking");
        rt.block_on(async {
            let (client, _) = front.accept().await.expect("accept");
            let backend = TcpStream::from_std(backend).expect("register");
            relay(client, backend, None, Duration::ZERO).await;
        });
        writer.join().expect("writer");
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), TOTAL);
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    }
}
