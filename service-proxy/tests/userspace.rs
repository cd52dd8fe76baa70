//! The userspace proxy's data plane on loopback: portals relay TCP and UDP to endpoints on
//! 127.0.0.x, round robin and with ClientIP affinity, retry a dead endpoint, keep
//! established connections across endpoint changes, and stop listening for removed
//! Services. (Loopback endpoints are refused by API validation, so the slices here are
//! built directly.) The redirect from service addresses is tested in network namespaces.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use service_core::defaults;
use service_core::model::{
    AddressType, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, IntOrString, Protocol,
    Service, ServicePort, SessionAffinity,
};
use service_core::snapshot::{NodeInfo, ServicePortName, Snapshot};
use service_core::validation::validate_service;
use service_proxy::userspace::{UserspaceConfig, UserspaceProxy};
use service_testkit::netns::serve_lines;

/// A TCP server on `ip` that answers each line with `NAME line` and closes at EOF.
fn serve_tcp(ip: &str, port: u16, name: &'static str) -> u16 {
    let listener = TcpListener::bind((ip, port)).expect("bind backend");
    let port = listener.local_addr().unwrap().port();
    serve_lines(listener, name);
    port
}

fn serve_udp(ip: &str, port: u16, name: &'static str) {
    let sock = UdpSocket::bind((ip, port)).expect("bind UDP backend");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let text = format!("{name} {}", String::from_utf8_lossy(&buf[..n]));
            let _ = sock.send_to(text.as_bytes(), peer);
        }
    });
}

/// A free port on 127.0.0.2 that 127.0.0.3 and .4 also have free (in practice).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn snapshot(endpoints: &[&str], port: u16, protocol: Protocol, affinity: bool) -> Snapshot {
    let mut svc = Service::new("ns", "web");
    svc.spec.cluster_ip = Some("10.96.0.10".into());
    let mut sp = ServicePort::tcp("p", 80);
    sp.protocol = Some(protocol.clone());
    sp.target_port = Some(IntOrString::Int(i32::from(port)));
    svc.spec.ports.push(sp);
    if affinity {
        svc.spec.session_affinity = Some(SessionAffinity::ClientIp);
    }
    defaults::service(&mut svc);
    let svc = validate_service(&svc).unwrap();
    let mut slice = EndpointSlice::new("ns", "web-x", "web", AddressType::Ipv4);
    slice.ports = vec![EndpointPort::new("p", i32::from(port), protocol)];
    for ip in endpoints {
        let mut ep = Endpoint::new(ip);
        ep.conditions = Some(EndpointConditions::new(true, true, false));
        slice.endpoints.push(ep);
    }
    Snapshot::build(NodeInfo::new("node-a", vec![]), &[svc], &[slice], &[]).unwrap()
}

fn name(protocol: Protocol) -> ServicePortName {
    ServicePortName::new("ns", "web", "p", protocol)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The defaults, with portals on loopback.
fn loopback_config() -> UserspaceConfig {
    let mut config = UserspaceConfig::default();
    config.listen_ip = "127.0.0.1".parse().unwrap();
    config
}

fn proxy(rt: &tokio::runtime::Runtime) -> UserspaceProxy {
    let mut config = loopback_config();
    config.udp_idle_timeout = Duration::from_millis(300);
    UserspaceProxy::new(config, rt.handle().clone())
}

/// One request over a new connection: the backend's name.
fn ask(portal: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&portal, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"hi\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

#[test]
fn tcp_round_robin_affinity_retries_and_removal() {
    let port = free_port();
    serve_tcp("127.0.0.2", port, "a");
    serve_tcp("127.0.0.3", port, "b");
    serve_tcp("127.0.0.4", port, "c");
    let rt = runtime();
    let mut p = proxy(&rt);
    let all = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let r = p.sync(&snapshot(&all, port, Protocol::Tcp, false)).unwrap();
    assert_eq!(r.opened, 1);
    let portal = p.portal(&name(Protocol::Tcp)).unwrap();
    // Round robin: each endpoint in turn (the half-close reaches the backend, whose
    // answer comes back).
    let seen: Vec<String> = (0..6).map(|_| ask(portal)).collect();
    let spread: BTreeSet<&str> = seen.iter().map(String::as_str).collect();
    assert_eq!(spread, BTreeSet::from(["a", "b", "c"]));
    assert_eq!(seen[0..3], seen[3..6]);

    // A dead endpoint (nothing listens on 127.0.0.5): every connection still succeeds.
    let r = p
        .sync(&snapshot(
            &["127.0.0.2", "127.0.0.5", "127.0.0.3"],
            port,
            Protocol::Tcp,
            false,
        ))
        .unwrap();
    assert_eq!((r.opened, r.updated), (0, 1));
    for _ in 0..6 {
        let got = ask(portal);
        assert!(got == "a" || got == "b", "{got}");
    }

    // ClientIP affinity: one client, one endpoint.
    p.sync(&snapshot(&all, port, Protocol::Tcp, true)).unwrap();
    let first = ask(portal);
    for _ in 0..5 {
        assert_eq!(ask(portal), first);
    }

    // An established connection survives its endpoint leaving the Service.
    let mut long = TcpStream::connect(portal).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(long.try_clone().unwrap());
    long.write_all(b"one\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let owner = line.split_whitespace().next().unwrap().to_owned();
    let owner_ip = match owner.as_str() {
        "a" => "127.0.0.2",
        "b" => "127.0.0.3",
        _ => "127.0.0.4",
    };
    let rest: Vec<&str> = all.iter().copied().filter(|ip| *ip != owner_ip).collect();
    p.sync(&snapshot(&rest, port, Protocol::Tcp, true)).unwrap();
    long.write_all(b"two\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("{owner} two"));
    // New connections avoid the endpoint that left.
    for _ in 0..4 {
        assert_ne!(ask(portal), owner);
    }

    // A removed Service stops listening.
    let r = p
        .sync(&Snapshot::build(NodeInfo::new("node-a", vec![]), &[], &[], &[]).unwrap())
        .unwrap();
    assert_eq!(r.closed, 1);
    std::thread::sleep(Duration::from_millis(100));
    assert!(TcpStream::connect_timeout(&portal, Duration::from_secs(1)).is_err());
}

#[test]
fn udp_sessions_stick_and_expire() {
    let port = UdpSocket::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    serve_udp("127.0.0.2", port, "a");
    serve_udp("127.0.0.3", port, "b");
    let rt = runtime();
    let mut p = proxy(&rt);
    p.sync(&snapshot(
        &["127.0.0.2", "127.0.0.3"],
        port,
        Protocol::Udp,
        false,
    ))
    .unwrap();
    let portal = p.portal(&name(Protocol::Udp)).unwrap();
    let ask = |c: &UdpSocket, msg: &str| {
        c.send_to(msg.as_bytes(), portal).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = c.recv_from(&mut buf).expect("a reply");
        assert_eq!(from, portal, "replies come from the service's socket");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let first = ask(&client, "x");
    let backend = first.split_whitespace().next().unwrap().to_owned();
    assert_eq!(first, format!("{backend} x"));
    // Within the idle timeout, the session keeps the client on its endpoint.
    for i in 0..5 {
        assert_eq!(ask(&client, &i.to_string()), format!("{backend} {i}"));
    }
    // Traffic keeps it open past the timeout (250 ms): a datagram every 60 ms for 480 ms
    // stays on the same endpoint (a new session would get the next one).
    for i in 0..8 {
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(ask(&client, &format!("k{i}")), format!("{backend} k{i}"));
    }
    // Another client starts its own session: the next endpoint, round robin.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert!(!ask(&other, "y").starts_with(&backend));
    // Idle past the timeout: the session is gone, and the next datagram opens a new one.
    std::thread::sleep(Duration::from_millis(800));
    let again = ask(&client, "z");
    assert!(again.ends_with(" z"), "{again}");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// 100,000 datagrams, each from another source address (127.10.0.0/15 on loopback): the
/// portal keeps at most `max_udp_sessions` sessions (4,096 by default), so its sockets and
/// memory stay bounded, and a real client is still served afterwards. Before the limit,
/// each source cost a socket, a task and a 64 KiB buffer until its idle timeout.
#[test]
fn a_flood_of_udp_source_addresses_keeps_sockets_and_memory_bounded() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536), hard).unwrap();
    let port = UdpSocket::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    serve_udp("127.0.0.2", port, "a");
    let rt = runtime();
    let mut config = loopback_config();
    // Long enough that no session ends by itself during the flood: only the limit bounds.
    config.udp_idle_timeout = Duration::from_secs(60);
    let limit = config.max_udp_sessions;
    assert_eq!(limit, 4_096);
    let mut p = UserspaceProxy::new(config, rt.handle().clone());
    p.sync(&snapshot(&["127.0.0.2"], port, Protocol::Udp, false))
        .unwrap();
    let portal = p.portal(&name(Protocol::Udp)).unwrap();
    let (fds_before, rss_before) = (open_fds(), rss_kib());
    let mut peak_fds = 0;
    for i in 0u32..100_000 {
        let src = std::net::Ipv4Addr::new(127, 10 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let Ok(sock) = UdpSocket::bind((src, 9)) else {
            continue;
        };
        let _ = sock.send_to(b"x", portal);
        if i % 5_000 == 0 {
            // Let the proxy catch up now and then (its receive queue holds a few hundred).
            std::thread::sleep(Duration::from_millis(20));
            peak_fds = peak_fds.max(open_fds());
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    peak_fds = peak_fds.max(open_fds());
    let grown_kib = rss_kib().saturating_sub(rss_before);
    assert!(
        peak_fds <= fds_before + limit + 64,
        "{peak_fds} descriptors open (from {fds_before}; limit {limit} sessions)"
    );
    assert!(
        peak_fds >= fds_before + limit / 2,
        "the flood never reached the proxy: {peak_fds}"
    );
    assert!(
        grown_kib < 64 * 1024,
        "the flood grew the process by {grown_kib} KiB"
    );
    // A real client is still served.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    client.send_to(b"hello", portal).unwrap();
    let mut buf = [0u8; 100];
    let (n, _) = client.recv_from(&mut buf).expect("a reply after the flood");
    assert_eq!(&buf[..n], b"a hello");
}

#[test]
fn tcp_connections_beyond_the_limit_are_closed_and_idle_ones_time_out() {
    let port = free_port();
    serve_tcp("127.0.0.2", port, "a");
    let rt = runtime();
    let mut config = loopback_config();
    config.max_tcp_connections = 5;
    config.tcp_idle_timeout = Duration::from_millis(600);
    let mut p = UserspaceProxy::new(config, rt.handle().clone());
    p.sync(&snapshot(&["127.0.0.2"], port, Protocol::Tcp, false))
        .unwrap();
    let portal = p.portal(&name(Protocol::Tcp)).unwrap();
    let open = || {
        let s = TcpStream::connect(portal).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    };
    let line = |s: &mut TcpStream, text: &str| -> Option<String> {
        s.write_all(format!("{text}\n").as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        let mut out = String::new();
        (r.read_line(&mut out).ok()? > 0).then(|| out.trim().to_owned())
    };
    // Five relayed connections, held open.
    let mut held: Vec<TcpStream> = (0..5).map(|_| open()).collect();
    for (i, s) in held.iter_mut().enumerate() {
        assert_eq!(line(s, &i.to_string()).as_deref(), Some(&*format!("a {i}")));
    }
    // The sixth is closed at once: no answer, the end of the stream.
    let mut sixth = open();
    assert_eq!(line(&mut sixth, "6"), None);
    // Idle past the timeout, the held ones are closed by the proxy, and room is back.
    std::thread::sleep(Duration::from_millis(1_000));
    for s in &mut held {
        let mut b = [0u8; 1];
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "an idle connection stayed open"
        );
    }
    let mut again = open();
    assert_eq!(line(&mut again, "7").as_deref(), Some("a 7"));
    // Traffic keeps a connection open past the timeout.
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            line(&mut again, &format!("k{i}")).as_deref(),
            Some(&*format!("a k{i}"))
        );
    }
}

#[test]
fn expired_affinities_are_swept_without_new_traffic() {
    let port = free_port();
    serve_tcp("127.0.0.2", port, "a");
    let rt = runtime();
    let mut config = loopback_config();
    config.affinity_sweep = Duration::from_millis(100);
    let mut p = UserspaceProxy::new(config, rt.handle().clone());
    let mut snap = snapshot(&["127.0.0.2"], port, Protocol::Tcp, true);
    // A one-second affinity timeout.
    let names: Vec<_> = snap.ports.keys().cloned().collect();
    for name in names {
        if let Some(sp) = snap.ports.get_mut(&name) {
            std::sync::Arc::make_mut(sp).session_affinity_timeout = Some(1);
        }
    }
    p.sync(&snap).unwrap();
    let portal = p.portal(&name(Protocol::Tcp)).unwrap();
    assert_eq!(ask(portal), "a");
    assert_eq!(p.sticky_clients(&name(Protocol::Tcp)), Some(1));
    std::thread::sleep(Duration::from_millis(1_400));
    assert_eq!(p.sticky_clients(&name(Protocol::Tcp)), Some(0));
}
