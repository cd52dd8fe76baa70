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
        loop {
            match tokio::time::timeout(idle, s.upstream.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    s.last.store(millis(epoch), Ordering::Relaxed);
                    let _ = socket.send_to(&buf[..n], client).await;
                }
                // Quiet for a whole timeout: close unless the client spoke meanwhile.
                _ => {
                    let quiet = millis(epoch).saturating_sub(s.last.load(Ordering::Relaxed));
                    if u128::from(quiet) >= idle.as_millis() {
                        if let Ok(mut all) = sessions.lock() {
                            all.remove(&client);
                        }
                        return;
                    }
                }
            }
        }
    });
    Some(session)
}
