//! The UDP path: a session per client address, each with its own socket connected to the
//! endpoint chosen for it; replies go back from the service's socket; a session idle for
//! longer than the timeout is dropped (kube-proxy's `--udp-timeout`, 250 ms by default).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::balancer::Balancer;

/// The largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;

/// How a portal bounds its sessions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// A session without traffic for this long ends.
    pub idle: Duration,
    /// Sessions at once; beyond, the least recently active eighth is evicted.
    pub max_sessions: usize,
}

struct Session {
    upstream: UdpSocket,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: AtomicU64,
}

/// The sessions by client address, each with the task relaying its replies.
type Sessions = Arc<Mutex<HashMap<SocketAddr, (Arc<Session>, AbortHandle)>>>;

thread_local! {
    /// The buffer replies are read into: one per runtime thread, not one per session (a
    /// session waiting for a reply holds no memory but its socket).
    static REPLY_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; MAX_DATAGRAM]);
}

/// Relays datagrams for one service port forever.
pub(crate) async fn serve(socket: Arc<UdpSocket>, balancer: Arc<Mutex<Balancer>>, limits: Limits) {
    let sessions: Sessions = Arc::default();
    let epoch = Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let existing = sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&client).map(|(s, _)| Arc::clone(s)));
        let session = match existing {
            Some(s) => s,
            None => {
                let Some(s) = open(&socket, &balancer, &sessions, client, limits, epoch).await
                else {
                    continue;
                };
                s
            }
        };
        session.last.store(millis(epoch), Ordering::Relaxed);
        let _ = session.upstream.send(&buf[..n]).await;
    }
}

fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Makes room for one more session: when `max` are open, the least recently active
/// eighth (at least one) ends. Evicting in batches keeps a flood of new source addresses
/// at a constant cost per datagram rather than a scan of every session each.
fn make_room(all: &mut HashMap<SocketAddr, (Arc<Session>, AbortHandle)>, max: usize) {
    if all.len() < max {
        return;
    }
    let mut by_age: Vec<(u64, SocketAddr)> = all
        .iter()
        .map(|(c, (s, _))| (s.last.load(Ordering::Relaxed), *c))
        .collect();
    let evict = (max / 8).max(1).min(by_age.len());
    by_age.select_nth_unstable(evict - 1);
    for (_, client) in &by_age[..evict] {
        if let Some((_, task)) = all.remove(client) {
            task.abort();
        }
    }
}

/// Sends every reply waiting on `s` to `client` through the service's socket.
fn relay_replies(s: &Session, socket: &UdpSocket, client: SocketAddr, epoch: Instant) {
    REPLY_BUF.with_borrow_mut(|buf| {
        loop {
            match s.upstream.try_recv(buf) {
                Ok(n) => {
                    s.last.store(millis(epoch), Ordering::Relaxed);
                    // A full send buffer drops the datagram, as the network may.
                    let _ = socket.try_send_to(&buf[..n], client);
                }
                // Nothing more, or an ICMP error (port unreachable, say): that ends
                // nothing, the idle timeout does.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {}
            }
        }
    });
}

/// Opens a session for `client` and starts relaying its replies.
async fn open(
    socket: &Arc<UdpSocket>,
    balancer: &Arc<Mutex<Balancer>>,
    sessions: &Sessions,
    client: SocketAddr,
    limits: Limits,
    epoch: Instant,
) -> Option<Arc<Session>> {
    let endpoint = balancer
        .lock()
        .ok()?
        .pick(client.ip(), Instant::now(), false)?;
    let any: IpAddr = if endpoint.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    // Room first: the evicted sessions' sockets close before this one opens.
    if let Ok(mut all) = sessions.lock() {
        make_room(&mut all, limits.max_sessions);
    }
    let upstream = UdpSocket::bind((any, 0)).await.ok()?;
    upstream.connect(endpoint).await.ok()?;
    let session = Arc::new(Session {
        upstream,
        last: AtomicU64::new(millis(epoch)),
    });
    let (socket, all, s) = (
        Arc::clone(socket),
        Arc::clone(sessions),
        Arc::clone(&session),
    );
    let idle = limits.idle;
    let task = tokio::spawn(async move {
        // One timer per idle period, not one per datagram: when it fires, the session
        // closes if nothing passed since, or waits out the rest of the period after the
        // last datagram.
        let expiry = tokio::time::sleep(idle);
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                ready = s.upstream.readable() => {
                    if ready.is_ok() {
                        relay_replies(&s, &socket, client, epoch);
                    }
                }
                () = &mut expiry => {
                    let quiet = Duration::from_millis(
                        millis(epoch).saturating_sub(s.last.load(Ordering::Relaxed)),
                    );
                    if quiet >= idle {
                        if let Ok(mut all) = all.lock()
                            && all.get(&client).is_some_and(|(x, _)| Arc::ptr_eq(x, &s))
                        {
                            all.remove(&client);
                        }
                        return;
                    }
                    expiry.as_mut().reset(tokio::time::Instant::now() + (idle - quiet));
                }
            }
        }
    });
    let mut all = sessions.lock().ok()?;
    if let Some((_, old)) = all.insert(client, (Arc::clone(&session), task.abort_handle())) {
        old.abort();
    }
    Some(session)
}
