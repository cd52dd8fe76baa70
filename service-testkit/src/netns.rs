//! Network namespaces for kernel end-to-end tests: a node, an external client, and one
//! namespace per pod, linked with veth pairs and routed through the node (no bridge, so
//! every pod-to-pod packet crosses the node's netfilter hooks, as with routed CNIs).
//!
//! Code runs inside a namespace on a thread that entered it with `setns`, so tests need no
//! helper programs: servers and clients are plain `std::net` sockets.

use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How an end-to-end test should treat missing privileges or tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E2e {
    /// Everything needed is here: run.
    Run,
    /// Something is missing and skipping is allowed: the test returns early.
    Skip,
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty() || !o.stdout.is_empty())
}

/// Checks that the test can run: root, and every program in `programs` present. When not,
/// prints one line saying what is skipped and why, and returns [`E2e::Skip`] — or panics
/// when `SERVICE_E2E=require` (CI) is set.
pub fn require(test: &str, programs: &[&str]) -> E2e {
    let root = nix::unistd::geteuid().is_root();
    check(
        test,
        programs,
        (!root).then_some("root (CAP_NET_ADMIN and CAP_SYS_ADMIN for network namespaces)"),
    )
}

/// As [`require`], for tests that need the programs but not root (a real etcd, `dig`).
pub fn require_programs(test: &str, programs: &[&str]) -> E2e {
    check(test, programs, None)
}

pub(crate) fn check(test: &str, programs: &[&str], lacking: Option<&str>) -> E2e {
    let mut missing: Vec<String> = lacking.map(str::to_owned).into_iter().collect();
    for p in programs {
        if !have(p) {
            missing.push(format!("the `{p}` program"));
        }
    }
    if missing.is_empty() {
        return E2e::Run;
    }
    let why = format!(
        "skipping end-to-end test {test}: needs {}",
        missing.join(", ")
    );
    if std::env::var("SERVICE_E2E").as_deref() == Ok("require") {
        panic!("{why} (SERVICE_E2E=require)");
    }
    eprintln!("{why}");
    E2e::Skip
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a program, panicking with its stderr on failure.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `<prefix>-<pid>-<n>` with loopback up.
    pub fn new(prefix: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's path (`/run/netns/NAME`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a program inside the namespace (`ip netns exec NAME PROGRAM ARGS...`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Like [`Netns::exec`], returning stdout as text.
    pub fn exec_text(&self, program: &str, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.exec(program, args).stdout).into_owned()
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f)
            .join()
            .unwrap_or_else(|_| panic!("thread in {} panicked", self.name))
    }

    /// Starts `f` on a thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let file =
                std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
            f()
        })
    }

    /// Sets a sysctl under `/proc/sys` (e.g. `net/ipv4/ip_forward`) inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}")));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

static LINK: AtomicU32 = AtomicU32::new(0);

/// Links two namespaces with a veth pair; returns the interface names (a side, b side).
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    let n = LINK.fetch_add(1, Ordering::Relaxed);
    let tmp_a = format!("va{}x{n}", std::process::id() % 10000);
    let tmp_b = format!("vb{}x{n}", std::process::id() % 10000);
    run(
        "ip",
        &[
            "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
        ],
    );
    run(
        "ip",
        &["link", "set", &tmp_a, "netns", a.name(), "name", a_name],
    );
    run(
        "ip",
        &["link", "set", &tmp_b, "netns", b.name(), "name", b_name],
    );
    a.ip(&["link", "set", a_name, "up"]);
    b.ip(&["link", "set", b_name, "up"]);
}

/// A pod: its namespace, address and name.
#[derive(Debug)]
pub struct PodNs {
    /// The namespace.
    pub ns: Netns,
    /// The pod IP.
    pub ip: IpAddr,
    /// A name the pod's servers answer with.
    pub name: String,
}

/// A node with an external client and routed pods.
#[derive(Debug)]
pub struct Topology {
    /// The node under test.
    pub node: Netns,
    /// An external client, on the node's network.
    pub client: Netns,
    /// The node's address on the client network.
    pub node_ip: IpAddr,
    /// The client's main address.
    pub client_ip: IpAddr,
    /// Pods.
    pub pods: Vec<PodNs>,
}

impl Topology {
    /// A node at 192.168.0.2/24 and a client at 192.168.0.100/24 (default route via the
    /// node). `client_extra` are extra client addresses (e.g. `203.0.113.2`) that the node
    /// routes back to the client. The node forwards, and accepts `route_localnet`.
    pub fn new(client_extra: &[&str]) -> Self {
        let node = Netns::new("node");
        let client = Netns::new("client");
        veth(&node, "eth0", &client, "eth0");
        node.ip(&["addr", "add", "192.168.0.2/24", "dev", "eth0"]);
        client.ip(&["addr", "add", "192.168.0.100/24", "dev", "eth0"]);
        client.ip(&["route", "add", "default", "via", "192.168.0.2"]);
        // Like a real node, the node has a default route (its "upstream" is the client).
        node.ip(&["route", "add", "default", "via", "192.168.0.100"]);
        for extra in client_extra {
            client.ip(&["addr", "add", &format!("{extra}/32"), "dev", "eth0"]);
            node.ip(&[
                "route",
                "add",
                &format!("{extra}/32"),
                "via",
                "192.168.0.100",
            ]);
        }
        node.sysctl("net/ipv4/ip_forward", "1");
        node.sysctl("net/ipv4/conf/all/route_localnet", "1");
        Self {
            node,
            client,
            node_ip: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2)),
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 100)),
            pods: Vec::new(),
        }
    }

    /// Adds a pod namespace at `ip`, routed through the node (host route on the node,
    /// default route via a link-local gateway answered by proxy ARP).
    pub fn add_pod(&mut self, name: &str, ip: &str) -> usize {
        let ns = Netns::new("pod");
        let i = self.pods.len();
        let node_if = format!("vp{i}");
        veth(&self.node, &node_if, &ns, "eth0");
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
        // The node side answers for the pods' gateway address itself.
        self.node.ip(&[
            "addr",
            "add",
            "169.254.1.1/32",
            "dev",
            &node_if,
            "scope",
            "link",
        ]);
        self.node
            .ip(&["route", "add", &format!("{ip}/32"), "dev", &node_if]);
        self.pods.push(PodNs {
            ns,
            ip: ip.parse().unwrap_or_else(|e| panic!("pod IP {ip}: {e}")),
            name: name.to_owned(),
        });
        i
    }

    /// Gives the node, the client and every pod (present and future calls of
    /// [`Topology::add_pod_ipv6`]) IPv6 as well: the node at `fd00:1::2/64`, the client at
    /// `fd00:1::100/64` routed through the node, forwarding on.
    pub fn enable_ipv6(&mut self) {
        for ns in [&self.node, &self.client] {
            ns.sysctl("net/ipv6/conf/all/disable_ipv6", "0");
        }
        self.node
            .ip(&["-6", "addr", "add", "fd00:1::2/64", "dev", "eth0", "nodad"]);
        self.client.ip(&[
            "-6",
            "addr",
            "add",
            "fd00:1::100/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        self.client
            .ip(&["-6", "route", "add", "default", "via", "fd00:1::2"]);
        self.node
            .ip(&["-6", "route", "add", "default", "via", "fd00:1::100"]);
        self.node.sysctl("net/ipv6/conf/all/forwarding", "1");
    }

    /// Gives pod `index` an IPv6 address too, routed through the node (the node's side of
    /// the pod's link answers as `fe80::1`).
    pub fn add_pod_ipv6(&mut self, index: usize, ip: &str) {
        let node_if = format!("vp{index}");
        let pod = &self.pods[index];
        pod.ns.sysctl("net/ipv6/conf/all/disable_ipv6", "0");
        pod.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip}/128"),
            "dev",
            "eth0",
            "nodad",
        ]);
        self.node
            .ip(&["-6", "addr", "add", "fe80::1/64", "dev", &node_if, "nodad"]);
        pod.ns.ip(&[
            "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
        ]);
        self.node
            .ip(&["-6", "route", "add", &format!("{ip}/128"), "dev", &node_if]);
    }

    /// Starts a TCP and a UDP identity server on every pod (see [`serve_tcp`], [`serve_udp`]).
    pub fn serve_all(&self, tcp_port: u16, udp_port: u16) {
        for p in &self.pods {
            serve_tcp(&p.ns, tcp_port, &p.name);
            serve_udp(&p.ns, udp_port, &p.name);
        }
    }

    /// The pod with a name.
    pub fn pod(&self, name: &str) -> &PodNs {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }
}

/// Starts a TCP server in `ns` on `0.0.0.0:port`: each connection gets one line,
/// `NAME PEER_IP`, and is closed. Returns once the server listens.
pub fn serve_tcp(ns: &Netns, port: u16, name: &str) {
    serve_tcp_at(
        ns,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        name,
    );
}

/// [`serve_tcp`] on one address (an IPv6 pod address beside the IPv4 wildcard, say).
pub fn serve_tcp_at(ns: &Netns, addr: SocketAddr, name: &str) {
    let name = name.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let listener = TcpListener::bind(addr).expect("bind TCP server");
        let _ = tx.send(());
        answer_each(&listener, &name);
    });
    let _ = rx.recv_timeout(Duration::from_secs(5));
}

/// Answers each connection of `listener` with `NAME PEER_IP` and closes it.
fn answer_each(listener: &TcpListener, name: &str) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let peer = s
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let _ = s.write_all(format!("{name} {peer}\n").as_bytes());
    }
}

/// Starts an SCTP server (one-to-one style sockets) in `ns` on `0.0.0.0:port`: each
/// association gets `NAME PEER_IP` and is shut down, as [`serve_tcp`]. Needs the kernel's
/// `sctp` module. Returns once the server listens.
///
/// # Panics
/// The kernel has no SCTP.
pub fn serve_sctp(ns: &Netns, port: u16, name: &str) {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockProtocol, SockType, SockaddrStorage, bind, listen,
        setsockopt, socket, sockopt,
    };
    let name = name.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Sctp,
        )
        .expect("an SCTP socket (is the sctp module loaded?)");
        let _ = setsockopt(&fd, sockopt::ReuseAddr, &true);
        let addr = SockaddrStorage::from(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).expect("bind SCTP server");
        listen(&fd, Backlog::new(64).expect("backlog")).expect("listen SCTP");
        // accept(2), peer and read/write work on any stream socket.
        let listener = TcpListener::from(fd);
        let _ = tx.send(());
        answer_each(&listener, &name);
    });
    let _ = rx.recv_timeout(Duration::from_secs(5));
}

/// Connects over SCTP from inside `ns` and reads the server's line (see [`serve_sctp`]).
pub fn sctp_connect(ns: &Netns, dst: SocketAddr, timeout: Duration) -> Reached {
    ns.run(move || {
        let mut stream = match connect_with(None, dst, timeout, true) {
            Ok(s) => s,
            Err(e) => return classify(&e),
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let mut text = String::new();
        match stream.read_to_string(&mut text) {
            Ok(_) => parse_answer(&text),
            Err(e) => classify(&e),
        }
    })
}

/// Starts a UDP server in `ns` on `0.0.0.0:port`: each datagram is answered with
/// `NAME PEER_IP`. Returns once the server is bound.
pub fn serve_udp(ns: &Netns, port: u16, name: &str) {
    let name = name.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind UDP server");
        let _ = tx.send(());
        let mut buf = [0u8; 1500];
        while let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
        }
    });
    let _ = rx.recv_timeout(Duration::from_secs(5));
}

/// What a connection attempt observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reached {
    /// A server answered: its name and the source address it saw.
    Server(String, IpAddr),
    /// Connection refused (TCP RST or ICMP port unreachable).
    Refused,
    /// No answer within the timeout.
    Timeout,
    /// Another error (no route, ...).
    Other(String),
}

fn parse_answer(text: &str) -> Reached {
    let mut it = text.split_whitespace();
    match (it.next(), it.next().and_then(|s| s.parse().ok())) {
        (Some(n), Some(ip)) => Reached::Server(n.to_owned(), ip),
        _ => Reached::Other(format!("unexpected answer {text:?}")),
    }
}

fn classify(e: &io::Error) -> Reached {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Reached::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Reached::Timeout,
        _ => Reached::Other(e.to_string()),
    }
}

/// Connects over TCP from inside `ns`, optionally from a given source address, and
/// reads the server's line.
pub fn tcp_connect(ns: &Netns, src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> Reached {
    ns.run(move || {
        let stream = match src {
            None => TcpStream::connect_timeout(&dst, timeout),
            Some(src) => connect_from(src, dst, timeout),
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => return classify(&e),
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let mut text = String::new();
        match stream.read_to_string(&mut text) {
            Ok(_) => parse_answer(&text),
            Err(e) => classify(&e),
        }
    })
}

fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    connect_with(Some(src), dst, timeout, false)
}

/// A stream connection (TCP, or with `sctp` an SCTP association on a one-to-one socket),
/// optionally from a given source address.
fn connect_with(
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
    sctp: bool,
) -> io::Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrStorage, bind, socket,
    };
    let family = if dst.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let protocol = sctp.then_some(SockProtocol::Sctp);
    let fd =
        socket(family, SockType::Stream, SockFlag::empty(), protocol).map_err(io::Error::from)?;
    if let Some(src) = src {
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrStorage::from(SocketAddr::new(src, 0)),
        )
        .map_err(io::Error::from)?;
    }
    let std_sock = TcpStream::from(fd);
    // Connect with a timeout: non-blocking connect, then poll for writability.
    std_sock.set_nonblocking(true)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&std_sock);
    match nix::sys::socket::connect(raw, &SockaddrStorage::from(dst)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => return Err(io::Error::from(e)),
    }
    let borrowed = std::os::fd::AsFd::as_fd(&std_sock);
    let mut fds = [nix::poll::PollFd::new(
        borrowed,
        nix::poll::PollFlags::POLLOUT,
    )];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).map_err(io::Error::from)?;
    if n == 0 {
        return Err(io::Error::from(io::ErrorKind::TimedOut));
    }
    if let Some(e) = std_sock.take_error()? {
        return Err(e);
    }
    std_sock.set_nonblocking(false)?;
    Ok(std_sock)
}

/// A UDP client socket living inside a namespace (bound once, so its source port stays the
/// same across requests, as a resolver's would).
#[derive(Debug)]
pub struct UdpClient {
    sock: UdpSocket,
}

impl UdpClient {
    /// Binds a UDP socket inside `ns` on an ephemeral port.
    pub fn new(ns: &Netns) -> Self {
        let sock = ns.run(|| UdpSocket::bind(("0.0.0.0", 0)).expect("bind UDP client"));
        Self { sock }
    }

    /// Sends one datagram to `dst` and waits for the answer.
    pub fn ask(&self, dst: SocketAddr, timeout: Duration) -> Reached {
        let _ = self.sock.set_read_timeout(Some(timeout));
        if let Err(e) = self.sock.send_to(b"hello", dst) {
            return classify(&e);
        }
        let mut buf = [0u8; 1500];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => parse_answer(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => classify(&e),
        }
    }
}

/// Serves `listener` (bound wherever the caller chose, e.g. inside a namespace) on a
/// thread: every line a client sends is answered with `NAME line`, until it closes. For
/// long-lived connections and half-closes.
pub fn serve_lines(listener: TcpListener, name: &str) {
    let name = name.to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let name = name.clone();
            std::thread::spawn(move || {
                let Ok(mut w) = conn.try_clone() else { return };
                for line in io::BufRead::lines(io::BufReader::new(conn)) {
                    let Ok(line) = line else { break };
                    if w.write_all(format!("{name} {line}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
}
