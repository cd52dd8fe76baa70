//! The userspace backend (feature `userspace`): an L4 proxy as Kubernetes v1.0's
//! kube-proxy was one. Each service port gets a listening socket ("portal") on a local
//! port; connections are relayed to an endpoint chosen round robin (with ClientIP
//! affinity), a failed dial is retried on the next endpoint with growing timeouts, and UDP
//! clients get sessions that expire when idle.
//!
//! - [`Balancer`] is the endpoint choice (pure).
//! - [`UserspaceProxy`] keeps one portal per service port in step with snapshots: new ports
//!   start listening, removed ones stop (their established connections carry on), endpoint
//!   changes apply to new connections without touching established ones.
//!
//! - [`UserspaceProxier`] adds the nat rules that redirect service addresses and node
//!   ports to the portals ([`rules`]), through `iptables-restore`.
//!
//! TCP bytes move with `splice(2)` through a pipe per direction: no copy into user space,
//! no thread per connection (tasks on the tokio runtime the proxy is given).

mod balancer;
mod proxier;
pub mod rules;
mod tcp;
mod udp;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use service_core::model::{IpFamily, Protocol};
use service_core::snapshot::{ServicePortName, Snapshot};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

pub use balancer::{Balancer, DIAL_TIMEOUTS};
pub use proxier::{UserspaceError, UserspaceProxier, UserspaceReport};

/// Settings of the userspace backend.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserspaceConfig {
    /// The address portals listen on (kube-proxy: `--bind-address`, default all).
    pub listen_ip: IpAddr,
    /// The family of the service addresses served.
    pub family: IpFamily,
    /// How long a UDP session lives without traffic (kube-proxy's `--udp-timeout`).
    pub udp_idle_timeout: Duration,
    /// Socket buffer size for bulk transfers: once a connection moves to `splice`, its
    /// client side gets this receive buffer and its backend side this send buffer, so
    /// that each side runs longer between wakeups. Only used where the kernel allows
    /// buffers this large (`net.core.rmem_max` and `wmem_max`); elsewhere the kernel's
    /// buffer autotuning (which an explicit size turns off) stays. 0 never sets them.
    pub bulk_buffer: usize,
    /// TCP connections relayed at once per portal (default 10,000); a connection beyond it
    /// is accepted and closed at once, so that its client learns rather than waits.
    pub max_tcp_connections: usize,
    /// UDP sessions (client addresses) per portal (default 4,096). A new client beyond it
    /// evicts the least recently active eighth of the sessions: a flood of source addresses
    /// costs a bounded number of sockets and tasks, never the process's descriptors.
    pub max_udp_sessions: usize,
    /// A TCP connection with no byte either way for this long is closed (default one hour;
    /// zero: never).
    pub tcp_idle_timeout: Duration,
    /// TCP keepalive on both sides of a relayed connection: idle time before the first
    /// probe (default 5 minutes; zero: no keepalive). Dead peers are found in idle + 9 × 75 s
    /// at most, and their connection closed.
    pub tcp_keepalive: Duration,
    /// How often ClientIP affinity entries past their timeout are dropped (default 10 s).
    pub affinity_sweep: Duration,
}

impl Default for UserspaceConfig {
    fn default() -> Self {
        Self {
            listen_ip: IpAddr::from([0, 0, 0, 0]),
            family: IpFamily::Ipv4,
            udp_idle_timeout: Duration::from_millis(250),
            bulk_buffer: 4 << 20,
            max_tcp_connections: 10_000,
            max_udp_sessions: 4_096,
            tcp_idle_timeout: Duration::from_secs(3_600),
            tcp_keepalive: Duration::from_secs(300),
            affinity_sweep: Duration::from_secs(10),
        }
    }
}

/// Drops expired ClientIP affinities every `every`, for as long as the portal lives.
async fn sweep_affinity(balancer: Arc<Mutex<Balancer>>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Ok(mut b) = balancer.lock() {
            b.expire(std::time::Instant::now());
        }
    }
}

/// A service port's listening socket.
#[derive(Debug)]
struct Portal {
    protocol: Protocol,
    local: SocketAddr,
    balancer: Arc<Mutex<Balancer>>,
    task: JoinHandle<()>,
}

/// Where a service port is served.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortalInfo {
    /// The service port.
    pub name: ServicePortName,
    /// Its protocol.
    pub protocol: Protocol,
    /// The local socket clients are redirected to.
    pub local: SocketAddr,
}

/// What a sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserspaceSync {
    /// Portals opened.
    pub opened: usize,
    /// Portals closed.
    pub closed: usize,
    /// Portals whose endpoints changed.
    pub updated: usize,
}

/// The portals of every service port of one family.
#[derive(Debug)]
pub struct UserspaceProxy {
    config: UserspaceConfig,
    handle: Handle,
    portals: BTreeMap<ServicePortName, Portal>,
    /// `config.bulk_buffer` when the kernel allows it.
    bulk_buffer: Option<usize>,
}

/// Whether `/proc/sys/net/core/{rmem,wmem}_max` allow socket buffers of `size`.
fn kernel_allows_buffers(size: usize) -> bool {
    size > 0
        && ["rmem_max", "wmem_max"].iter().all(|k| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{k}"))
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .is_some_and(|max| max >= size)
        })
}

impl UserspaceProxy {
    /// A proxy whose tasks run on `handle`'s runtime; its sockets live in the network
    /// namespace of that runtime's worker threads.
    pub fn new(config: UserspaceConfig, handle: Handle) -> Self {
        let bulk_buffer = kernel_allows_buffers(config.bulk_buffer).then_some(config.bulk_buffer);
        Self {
            config,
            handle,
            portals: BTreeMap::new(),
            bulk_buffer,
        }
    }

    /// Opens, updates and closes portals to match `snapshot`. Call it from outside the
    /// runtime (it waits for the runtime to bind the new sockets).
    ///
    /// # Errors
    /// A portal could not listen (the ones opened before stay).
    pub fn sync(&mut self, snapshot: &Snapshot) -> io::Result<UserspaceSync> {
        let mut report = UserspaceSync::default();
        let wanted: BTreeMap<&ServicePortName, (Protocol, Vec<SocketAddr>, Option<Duration>)> =
            snapshot
                .ports
                .iter()
                .filter_map(|(name, sp)| {
                    let plan = sp.family(&self.config.family)?;
                    let protocol = sp.protocol().clone();
                    if !matches!(protocol, Protocol::Tcp | Protocol::Udp) {
                        return None;
                    }
                    let endpoints = plan
                        .selection
                        .cluster
                        .iter()
                        .map(|&i| plan.endpoints[i as usize].addr())
                        .collect();
                    let affinity = sp
                        .session_affinity_timeout
                        .map(|s| Duration::from_secs(u64::from(s)));
                    Some((name, (protocol, endpoints, affinity)))
                })
                .collect();
        let gone: Vec<ServicePortName> = self
            .portals
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(p) = self.portals.remove(&name) {
                p.task.abort();
                report.closed += 1;
            }
        }
        for (name, (protocol, endpoints, affinity)) in wanted {
            if let Some(p) = self.portals.get(name)
                && p.protocol == protocol
            {
                if let Ok(mut b) = p.balancer.lock() {
                    if b.endpoints() != endpoints.as_slice() {
                        report.updated += 1;
                    }
                    b.update(endpoints, affinity);
                }
                continue;
            }
            let balancer = Arc::new(Mutex::new(Balancer::new(endpoints, affinity)));
            let portal = self.open(protocol, balancer)?;
            if let Some(old) = self.portals.insert(name.clone(), portal) {
                old.task.abort();
            }
            report.opened += 1;
        }
        Ok(report)
    }

    /// Binds on a runtime worker, so that the socket lives in the runtime's network
    /// namespace whatever the caller's.
    fn bind<T: Send + 'static>(
        &self,
        bind: impl Future<Output = io::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        self.handle
            .block_on(self.handle.spawn(bind))
            .map_err(|e| io::Error::other(format!("the bind task failed: {e}")))?
    }

    fn open(&self, protocol: Protocol, balancer: Arc<Mutex<Balancer>>) -> io::Result<Portal> {
        let addr = SocketAddr::new(self.config.listen_ip, 0);
        match protocol {
            Protocol::Udp => {
                let socket = Arc::new(self.bind(tokio::net::UdpSocket::bind(addr))?);
                let local = socket.local_addr()?;
                let serve = udp::serve(
                    socket,
                    Arc::clone(&balancer),
                    udp::Limits {
                        idle: self.config.udp_idle_timeout,
                        max_sessions: self.config.max_udp_sessions.max(1),
                    },
                );
                let sweep = sweep_affinity(Arc::clone(&balancer), self.config.affinity_sweep);
                let task = self.handle.spawn(async move {
                    tokio::join!(serve, sweep);
                });
                Ok(Portal {
                    protocol,
                    local,
                    balancer,
                    task,
                })
            }
            _ => {
                let listener = self.bind(tokio::net::TcpListener::bind(addr))?;
                // Accepted sockets inherit TCP_NODELAY: one setsockopt per portal
                // instead of one per connection.
                nix::sys::socket::setsockopt(
                    &listener,
                    nix::sys::socket::sockopt::TcpNoDelay,
                    &true,
                )
                .map_err(io::Error::from)?;
                let local = listener.local_addr()?;
                let serve = tcp::serve(
                    listener,
                    Arc::clone(&balancer),
                    tcp::Limits {
                        bulk_buffer: self.bulk_buffer,
                        max_connections: self.config.max_tcp_connections.max(1),
                        idle: self.config.tcp_idle_timeout,
                        keepalive: self.config.tcp_keepalive,
                    },
                );
                let sweep = sweep_affinity(Arc::clone(&balancer), self.config.affinity_sweep);
                let task = self.handle.spawn(async move {
                    tokio::join!(serve, sweep);
                });
                Ok(Portal {
                    protocol,
                    local,
                    balancer,
                    task,
                })
            }
        }
    }

    /// The settings.
    pub fn config(&self) -> &UserspaceConfig {
        &self.config
    }

    /// Where each service port is served.
    pub fn portals(&self) -> Vec<PortalInfo> {
        self.portals
            .iter()
            .map(|(name, p)| PortalInfo {
                name: name.clone(),
                protocol: p.protocol.clone(),
                local: p.local,
            })
            .collect()
    }

    /// The local socket of a service port's portal.
    pub fn portal(&self, name: &ServicePortName) -> Option<SocketAddr> {
        self.portals.get(name).map(|p| p.local)
    }

    /// How many clients of a service port hold a ClientIP affinity (`None`: no such portal).
    /// Entries past their timeout are dropped every [`UserspaceConfig::affinity_sweep`].
    pub fn sticky_clients(&self, name: &ServicePortName) -> Option<usize> {
        let p = self.portals.get(name)?;
        p.balancer.lock().ok().map(|b| b.sticky_clients())
    }

    /// Stops listening everywhere (established connections carry on until they end).
    pub fn shutdown(&mut self) {
        for (_, p) in std::mem::take(&mut self.portals) {
            p.task.abort();
        }
    }
}

impl Drop for UserspaceProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}
