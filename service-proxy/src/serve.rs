//! The HTTP side of a node agent (feature `serve`, on a tokio runtime you provide):
//! kube-proxy's `/healthz` and `/livez`, and one listener per health-check node port
//! answering what [`crate::health`] computes; [`serve_http`] serves any other handler
//! (the `proxy` daemon's `/metrics`).
//!
//! ```text
//! daemon loop ── queued / updated / sync_services(snapshot) ──► HealthState ◄── listeners
//!                                                                (Arc<Mutex>)    (tokio tasks)
//! ```
//!
//! The HTTP is the small part of HTTP/1.1 that probes and scrapers use: one request per
//! connection (`Connection: close`), any method, the path alone deciding the answer; a
//! request head must arrive within 10 s and fit in 16 KiB.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use service_core::model::IpFamily;
use service_core::snapshot::Snapshot;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::health::{ProxyHealth, Response, ServiceHealthCheck, health_checks};

/// What a handler sees of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The local address the request came in on.
    pub local: SocketAddr,
}

/// A request handler.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

const HEAD_LIMIT: usize = 16 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// `Date`'s format (RFC 9110 IMF-fixdate), from a wall time.
fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rfc = service_core::time::format_rfc3339(t);
    // 2026-12-06T04:51:22Z
    let (y, mo, d) = (&rfc[0..4], &rfc[5..7], &rfc[8..10]);
    let month = MONTHS[mo.parse::<usize>().unwrap_or(1).saturating_sub(1) % 12];
    let weekday = DAYS[usize::try_from((secs / 86_400) % 7).unwrap_or(0)];
    format!("{weekday}, {d} {month} {y} {} GMT", &rfc[11..19])
}

async fn answer(mut stream: TcpStream, handler: Handler) -> io::Result<()> {
    let local = stream.local_addr()?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > HEAD_LIMIT {
                return Ok(false);
            }
        }
    };
    let complete = tokio::time::timeout(HEAD_TIMEOUT, read)
        .await
        .unwrap_or(Ok(false))?;
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next(), parts.next());
    let response = match (complete, method, target) {
        (true, Some(m), Some(t)) => {
            let path = t.split(['?', '#']).next().unwrap_or(t);
            handler(&Request {
                method: m.to_owned(),
                path: path.to_owned(),
                local,
            })
        }
        _ => Response::text(400, "text/plain; charset=utf-8", "400 Bad Request".into()),
    };
    let head_only = method == Some("HEAD");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Date: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        http_date(SystemTime::now()),
        response.body.len()
    ));
    if !head_only {
        out.push_str(&response.body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

async fn accept_loop(listener: TcpListener, handler: Handler) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handler = handler.clone();
                tokio::spawn(async move {
                    let _ = answer(stream, handler).await;
                });
            }
            // Out of file descriptors and the like: wait a little rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Opens a listening socket (`SO_REUSEADDR`; IPv6 sockets IPv6-only, so that `0.0.0.0`
/// and `[::]` can be bound side by side).
fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Serves `handler` on `addr` on the runtime `handle`: returns the bound address (the port
/// chosen when `addr`'s is 0) and the task (abort it to close the port).
///
/// # Errors
/// The address could not be bound.
pub fn serve_http(
    handle: &Handle,
    addr: SocketAddr,
    handler: Handler,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let std_listener = listen(addr)?;
    let local = std_listener.local_addr()?;
    let _guard = handle.enter();
    let listener = TcpListener::from_std(std_listener)?;
    Ok((local, handle.spawn(accept_loop(listener, handler))))
}

/// How often each health endpoint answered, by code (kube-proxy's
/// `kubeproxy_proxy_healthz_total` and `kubeproxy_proxy_livez_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCounts {
    /// `/healthz` answers with 200.
    pub healthz_ok: u64,
    /// `/healthz` answers with 503.
    pub healthz_unhealthy: u64,
    /// `/livez` answers with 200.
    pub livez_ok: u64,
    /// `/livez` answers with 503.
    pub livez_unhealthy: u64,
}

#[derive(Debug)]
struct Inner {
    proxy: ProxyHealth,
    node_eligible: Option<bool>,
    checks: BTreeMap<u16, ServiceHealthCheck>,
    counts: HealthCounts,
}

/// The health the servers answer from, shared between the daemon's loop (which records
/// syncs) and the listeners (which read it per request). Cheap to clone.
#[derive(Clone, Debug)]
pub struct HealthState(Arc<Mutex<Inner>>);

impl HealthState {
    /// A state whose proxy health times out after `timeout` (kube-proxy: twice the sync
    /// period).
    pub fn new(timeout: Duration) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            proxy: ProxyHealth::new(timeout),
            node_eligible: None,
            checks: BTreeMap::new(),
            counts: HealthCounts::default(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// See [`ProxyHealth::queued`].
    pub fn queued(&self, family: &IpFamily, now: Instant) {
        self.lock().proxy.queued(family, now);
    }

    /// See [`ProxyHealth::updated`].
    pub fn updated(&self, family: &IpFamily, now: Instant, wall: SystemTime) {
        self.lock().proxy.updated(family, now, wall);
    }

    /// Whether the node may take load-balancer traffic (`None`: its Node is not known).
    pub fn set_node_eligible(&self, eligible: Option<bool>) {
        self.lock().node_eligible = eligible;
    }

    /// Whether the proxy is healthy now.
    pub fn is_healthy(&self) -> bool {
        self.lock().proxy.is_healthy(Instant::now())
    }

    /// The answers so far.
    pub fn counts(&self) -> HealthCounts {
        self.lock().counts
    }

    /// The health checks being answered.
    pub fn checks(&self) -> BTreeMap<u16, ServiceHealthCheck> {
        self.lock().checks.clone()
    }

    /// `/healthz`, `/livez`, or Go's 404.
    pub fn proxy_response(&self, path: &str) -> Response {
        let mut inner = self.lock();
        let (now, wall) = (Instant::now(), SystemTime::now());
        match path {
            "/healthz" => {
                let eligible = inner.node_eligible;
                let r = inner.proxy.healthz(now, wall, eligible);
                if r.status == 200 {
                    inner.counts.healthz_ok += 1;
                } else {
                    inner.counts.healthz_unhealthy += 1;
                }
                r
            }
            "/livez" => {
                let r = inner.proxy.livez(now, wall);
                if r.status == 200 {
                    inner.counts.livez_ok += 1;
                } else {
                    inner.counts.livez_unhealthy += 1;
                }
                r
            }
            _ => Response::not_found(),
        }
    }

    /// What the health-check node port `port` answers (any path, any method); an empty 200
    /// when its Service just went away, as in kube-proxy.
    pub fn service_response(&self, port: u16) -> Response {
        let inner = self.lock();
        let healthy = inner.proxy.is_healthy(Instant::now());
        match inner.checks.get(&port) {
            Some(check) => check.response(healthy),
            None => Response::text(200, "text/plain; charset=utf-8", String::new()),
        }
    }
}

/// Where health-check node ports listen: kube-proxy's `nodePortAddresses` resolved to
/// addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheckAddresses {
    /// Every address, both families (`0.0.0.0` and `[::]`).
    All,
    /// These addresses (the node's addresses within `nodePortAddresses`).
    Only(Vec<IpAddr>),
}

/// What a [`HealthServers::sync_services`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ServiceSync {
    /// Health-check node ports opened.
    pub opened: Vec<u16>,
    /// Health-check node ports closed.
    pub closed: Vec<u16>,
    /// Ports that could not be opened, with why (retried at the next call, as kube-proxy
    /// does at its next sync).
    pub failed: Vec<(u16, io::Error)>,
}

/// The health servers of one node: `/healthz` and `/livez`, and one listener per
/// health-check node port. Listeners run on the runtime given; dropping this closes the
/// health-check node ports (not the `/healthz` server, which lives as long as the runtime).
#[derive(Debug)]
pub struct HealthServers {
    handle: Handle,
    state: HealthState,
    addresses: HealthCheckAddresses,
    ports: BTreeMap<u16, Vec<JoinHandle<()>>>,
}

impl HealthServers {
    /// Servers on `handle`, answering from `state`, health-check node ports on `addresses`.
    pub fn new(handle: Handle, state: HealthState, addresses: HealthCheckAddresses) -> Self {
        Self {
            handle,
            state,
            addresses,
            ports: BTreeMap::new(),
        }
    }

    /// The state.
    pub fn state(&self) -> &HealthState {
        &self.state
    }

    /// Serves `/healthz` and `/livez` on `addr` (kube-proxy's `--healthz-bind-address`,
    /// `0.0.0.0:10256` by default); returns the bound address.
    ///
    /// # Errors
    /// The address could not be bound.
    pub fn serve_healthz(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let state = self.state.clone();
        let handler: Handler = Arc::new(move |r: &Request| state.proxy_response(&r.path));
        serve_http(&self.handle, addr, handler).map(|(a, _)| a)
    }

    fn open(&self, port: u16) -> io::Result<Vec<JoinHandle<()>>> {
        let addrs: Vec<SocketAddr> = match &self.addresses {
            HealthCheckAddresses::All => vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            ],
            HealthCheckAddresses::Only(ips) => {
                ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
            }
        };
        let mut tasks = Vec::new();
        let mut first_error = None;
        for addr in addrs {
            let state = self.state.clone();
            let handler: Handler = Arc::new(move |_: &Request| state.service_response(port));
            match serve_http(&self.handle, addr, handler) {
                Ok((_, task)) => tasks.push(task),
                // A node without IPv6 cannot bind `[::]`: IPv4 alone is fine.
                Err(e)
                    if addr.is_ipv6()
                        && self.addresses == HealthCheckAddresses::All
                        && matches!(
                            e.raw_os_error(),
                            Some(nix::libc::EAFNOSUPPORT | nix::libc::EADDRNOTAVAIL)
                        ) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => {
                for t in tasks {
                    t.abort();
                }
                Err(e)
            }
            None => Ok(tasks),
        }
    }

    /// Brings the health-check node ports to `snapshot`'s (call it after every successful
    /// sync): opens the new ones, closes those whose Service is gone or changed port, and
    /// updates every count.
    pub fn sync_services(&mut self, snapshot: &Snapshot) -> ServiceSync {
        let checks = health_checks(snapshot);
        let mut out = ServiceSync::default();
        let gone: Vec<u16> = self
            .ports
            .keys()
            .filter(|p| !checks.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            for task in self.ports.remove(&port).unwrap_or_default() {
                task.abort();
            }
            out.closed.push(port);
        }
        self.state.lock().checks = checks.clone();
        for port in checks.keys() {
            if self.ports.contains_key(port) {
                continue;
            }
            match self.open(*port) {
                Ok(tasks) => {
                    self.ports.insert(*port, tasks);
                    out.opened.push(*port);
                }
                Err(e) => out.failed.push((*port, e)),
            }
        }
        out
    }

    /// The health-check node ports open now.
    pub fn open_ports(&self) -> Vec<u16> {
        self.ports.keys().copied().collect()
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for task in self.ports.values().flatten() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdate() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[test]
    fn answers_one_request_per_connection() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handler: Handler = Arc::new(|r: &Request| match r.path.as_str() {
            "/x" => Response::text(200, "text/plain", format!("{} {}", r.method, r.path)),
            _ => Response::not_found(),
        });
        let (addr, _task) =
            serve_http(rt.handle(), "127.0.0.1:0".parse().unwrap(), handler).unwrap();
        rt.block_on(async {
            let ok = get(addr, "GET /x?a=b HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
            assert!(
                ok.contains("Content-Length: 6\r\n") && ok.ends_with("\r\n\r\nGET /x"),
                "{ok}"
            );
            let head = get(addr, "HEAD /x HTTP/1.0\r\n\r\n").await;
            assert!(
                head.contains("Content-Length: 7\r\n") && head.ends_with("\r\n\r\n"),
                "{head}"
            );
            let missing = get(addr, "GET /nope HTTP/1.1\r\n\r\n").await;
            assert!(
                missing.starts_with("HTTP/1.1 404 Not Found")
                    && missing.ends_with("404 page not found\n")
            );
            let garbage = get(addr, "\r\n\r\n").await;
            assert!(garbage.starts_with("HTTP/1.1 400 Bad Request"), "{garbage}");
        });
    }
}
