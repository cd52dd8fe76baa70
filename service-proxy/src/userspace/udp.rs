//! The UDP path: a session per client address, each with its own socket connected to the
//! endpoint chosen for it; replies go back from the service's socket; a session idle for
//! longer than the timeout is dropped (kube-proxy's `--udp-timeout`, 250 ms by default).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::balancer::Balancer;

/// The largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;

struct Session {
    upstream: UdpSocket,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: AtomicU64,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>;

/// Relays datagrams for one service port forever.
pub(crate) async fn serve(socket: Arc<UdpSocket>, balancer: Arc<Mutex<Balancer>>, idle: Duration) {
    let sessions: Sessions = Arc::default();
    let epoch = Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let existing = sessions.lock().ok().and_then(|s| s.get(&client).cloned());
        let session = match existing {
            Some(s) => s,
            None => {
                let Some(s) = open(&socket, &balancer, &sessions, client, idle, epoch).await else {
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

/// Opens a session for `client` and starts relaying its replies.
async fn open(
    socket: &Arc<UdpSocket>,
    balancer: &Arc<Mutex<Balancer>>,
    sessions: &Sessions,
    client: SocketAddr,
    idle: Duration,
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
    let upstream = UdpSocket::bind((any, 0)).await.ok()?;
    upstream.connect(endpoint).await.ok()?;
    let session = Arc::new(Session {
        upstream,
        last: AtomicU64::new(millis(epoch)),
    });
    sessions.lock().ok()?.insert(client, Arc::clone(&session));
    let (socket, sessions, s) = (
        Arc::clone(socket),
        Arc::clone(sessions),
        Arc::clone(&session),
    );
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        // One timer per idle period, not one per datagram: when it fires, the session
        // closes if nothing passed since, or waits out the rest of the period after the
        // last datagram.
        let expiry = tokio::time::sleep(idle);
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                received = s.upstream.recv(&mut buf) => {
                    // An error (an ICMP port unreachable, say) ends nothing: the idle
                    // timeout does.
                    if let Ok(n) = received {
                        s.last.store(millis(epoch), Ordering::Relaxed);
                        let _ = socket.send_to(&buf[..n], client).await;
                    }
                }
                () = &mut expiry => {
                    let quiet = Duration::from_millis(
                        millis(epoch).saturating_sub(s.last.load(Ordering::Relaxed)),
                    );
                    if quiet >= idle {
                        if let Ok(mut all) = sessions.lock() {
                            all.remove(&client);
                        }
                        return;
                    }
                    expiry.as_mut().reset(tokio::time::Instant::now() + (idle - quiet));
                }
            }
        }
    });
    Some(session)
}
