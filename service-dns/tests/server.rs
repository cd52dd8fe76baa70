//! The server under clients that misbehave: stalled and flooding TCP clients, thousands of
//! forwarded queries to a slow upstream that also sends forged answers, clients outside
//! the recursion networks, dead upstreams. Everything runs on loopback, in process.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use service_core::snapshot::{NodeInfo, Snapshot};
use service_dns::server::{DnsServer, ServerConfig};
use service_dns::wire::{build_query, rtype};
use service_dns::{DnsConfig, Zone};

const HUGE: &str = "huge.x.svc.cluster.local";

/// The 5,000-endpoint headless Service (both families) and nothing else.
fn huge_zone() -> Zone {
    let (svcs, slices) = service_testkit::fixtures::huge_headless(5_000);
    let node = NodeInfo::new("node-a", vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2))]);
    let snap = Snapshot::build(node, &svcs, &slices, &[]).expect("snapshot");
    Zone::from_snapshot(DnsConfig::default(), &snap)
}

fn start(config: ServerConfig) -> DnsServer {
    DnsServer::start(config, huge_zone().view()).expect("start the server")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

/// Raises the open-file limit so that one process can hold thousands of sockets.
fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let target = want.max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, target, target).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
}

fn decode(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).unwrap_or_else(|e| panic!("undecodable answer: {e}"))
}

/// One UDP question from `from`; the decoded answer.
fn udp_ask(server: SocketAddr, from: IpAddr, name: &str, qtype: u16) -> Message {
    let sock = UdpSocket::bind(SocketAddr::new(from, 0)).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    sock.send_to(&build_query(0x1234, name, qtype), server)
        .expect("send");
    let mut buf = [0u8; 65_535];
    let (n, _) = sock
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no UDP answer for {name}: {e}"));
    decode(&buf[..n])
}

fn tcp_write(stream: &mut TcpStream, msg: &[u8]) {
    let len = u16::try_from(msg.len()).expect("message length");
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    stream.write_all(&framed).expect("write");
}

fn tcp_read(stream: &mut TcpStream) -> Message {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).expect("read length");
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).expect("read message");
    decode(&msg)
}

/// One TCP question on a fresh connection from `from`; the decoded answer.
fn tcp_ask(server: SocketAddr, from: IpAddr, name: &str, qtype: u16) -> Message {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    sock.bind(&SocketAddr::new(from, 0).into()).expect("bind");
    sock.connect_timeout(&server.into(), Duration::from_secs(5))
        .expect("connect");
    let mut stream = TcpStream::from(sock);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    tcp_write(&mut stream, &build_query(0x4321, name, qtype));
    tcp_read(&mut stream)
}

/// Both transports still answer the 5,000-endpoint name, quickly.
fn assert_serving(server: SocketAddr) {
    let t = Instant::now();
    let udp = udp_ask(server, Ipv4Addr::LOCALHOST.into(), HUGE, rtype::A);
    assert!(
        udp.metadata.truncation && !udp.answers.is_empty(),
        "{udp:?}"
    );
    let tcp = tcp_ask(server, Ipv4Addr::LOCALHOST.into(), HUGE, rtype::A);
    assert!(
        !tcp.metadata.truncation && tcp.answers.len() > 3_500,
        "{}",
        tcp.answers.len()
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn stalled_tcp_clients_do_not_stop_udp_or_fresh_tcp_clients() {
    raise_nofile(8_192);
    let mut config = ServerConfig::new(loopback());
    config.tcp_message = Duration::from_secs(2);
    let server = start(config);
    let addr = server.local_addr();

    // 1,500 clients announce a 65,535-byte message, send 10 bytes of it and stall.
    let mut stalled = Vec::new();
    for _ in 0..1_500 {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(&[0xff, 0xff]).expect("write");
        s.write_all(&[0u8; 10]).expect("write");
        stalled.push(s);
    }
    assert_serving(addr);

    // At most 1,000 of them are kept (the least recently active make room), and none for
    // longer than the message timeout: every one is closed by the server by then.
    thread::sleep(Duration::from_millis(2_500));
    let mut closed = 0;
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut b = [0u8; 1];
        if matches!(s.read(&mut b), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 1_500,
        "stalled connections still open after the timeout"
    );
    assert_serving(addr);
}

#[test]
fn eviction_keeps_at_most_tcp_max_clients_connections() {
    let mut config = ServerConfig::new(loopback());
    config.tcp_max_clients = 50;
    let server = start(config);
    let addr = server.local_addr();
    // 80 idle connections: the 30 oldest are closed by the server at once, not after the
    // idle timeout (10 s).
    let mut conns: Vec<TcpStream> = (0..80)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            // Let the server accept them in order.
            thread::sleep(Duration::from_millis(2));
            s
        })
        .collect();
    assert_serving(addr);
    thread::sleep(Duration::from_millis(300));
    let closed: Vec<usize> = conns
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| {
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let mut b = [0u8; 1];
            matches!(s.read(&mut b), Ok(0)).then_some(i)
        })
        .collect();
    // 80 + the fresh TCP client of assert_serving, 50 allowed: at least 30 evicted, the
    // oldest first; the newest are still open.
    assert!(closed.len() >= 30, "{closed:?}");
    assert!(closed.iter().take(30).copied().eq(0..30), "{closed:?}");
    assert!(!closed.contains(&79), "{closed:?}");
}

#[test]
fn pipelined_queries_are_answered_in_order_and_a_non_reader_is_dropped() {
    let mut config = ServerConfig::new(loopback());
    config.tcp_write = Duration::from_secs(1);
    let server = start(config);
    let addr = server.local_addr();

    // Ten questions in one write: ten answers, in the order asked.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut batch = Vec::new();
    for id in 0..10u16 {
        let name = format!("10-2-0-{}.{HUGE}", id + 1);
        let q = build_query(100 + id, &name, rtype::A);
        batch.extend_from_slice(&u16::try_from(q.len()).expect("len").to_be_bytes());
        batch.extend_from_slice(&q);
    }
    s.write_all(&batch).expect("write");
    for id in 0..10u16 {
        let m = tcp_read(&mut s);
        assert_eq!(m.metadata.id, 100 + id);
        assert_eq!(m.answers[0].data.to_string(), format!("10.2.0.{}", id + 1));
    }

    // A client that asks for 64 KiB answers as fast as it can and never reads.
    let flooding = Arc::new(AtomicBool::new(true));
    let flooder = {
        let flooding = flooding.clone();
        thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_write_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let q = build_query(1, HUGE, rtype::A);
            let mut framed = u16::try_from(q.len()).expect("len").to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            let mut written = 0usize;
            let started = Instant::now();
            while flooding.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(20) {
                match s.write_all(&framed) {
                    Ok(()) => written += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return (written, true),
                }
            }
            (written, false)
        })
    };
    thread::sleep(Duration::from_millis(300));
    assert_serving(addr);
    // The server gave up on it within the write timeout (and then some): its writes fail.
    let (written, dropped) = flooder.join().expect("flooder");
    flooding.store(false, Ordering::Relaxed);
    assert!(
        dropped,
        "the non-reading client was kept ({written} queries written)"
    );
    assert_serving(addr);
}

/// A slow upstream: answers every A question after `delay`, preceded by two forged
/// answers (another question with the right ID, the right question with another ID).
/// The address it answers is derived from the name: `q<n>.example.` gets `10.9.<n/256>.<n%256>`.
struct SlowUpstream {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl SlowUpstream {
    fn start(delay: Duration, answer: bool) -> Self {
        let sock = UdpSocket::bind(loopback()).expect("bind upstream");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, SocketAddr, Vec<u8>)>();
        let reply_sock = sock.try_clone().expect("clone");
        {
            let (received, stop) = (received.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        received.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send((Instant::now(), from, buf[..n].to_vec()));
                    }
                }
            });
        }
        thread::spawn(move || {
            while let Ok((at, from, q)) = rx.recv() {
                if !answer {
                    continue;
                }
                if let Some(wait) = (at + delay).checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let Ok(query) = Message::from_vec(&q) else {
                    continue;
                };
                let name = query.queries[0].name().to_string();
                // Forgery 1: the right ID, another question.
                let mut forged = Message::from_vec(&build_query(
                    query.metadata.id,
                    "q999999.example.",
                    rtype::A,
                ))
                .expect("query");
                forged.metadata.message_type = hickory_proto::op::MessageType::Response;
                forged.add_answer(a_record("q999999.example.", Ipv4Addr::new(6, 6, 6, 6)));
                let _ = reply_sock.send_to(&forged.to_vec().expect("encode"), from);
                // Forgery 2: the right question, another ID.
                let mut forged = query.clone();
                forged.metadata.id = query.metadata.id.wrapping_add(1);
                forged.metadata.message_type = hickory_proto::op::MessageType::Response;
                forged.add_answer(a_record(&name, Ipv4Addr::new(6, 6, 6, 6)));
                let _ = reply_sock.send_to(&forged.to_vec().expect("encode"), from);
                // The real answer.
                let mut real = query.clone();
                real.metadata.message_type = hickory_proto::op::MessageType::Response;
                real.metadata.recursion_available = true;
                real.add_answer(a_record(&name, address_for(&name)));
                let _ = reply_sock.send_to(&real.to_vec().expect("encode"), from);
            }
        });
        Self {
            addr,
            received,
            stop,
        }
    }
}

impl Drop for SlowUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn a_record(name: &str, ip: Ipv4Addr) -> hickory_proto::rr::Record {
    let name = hickory_proto::rr::Name::from_ascii(name).expect("name");
    hickory_proto::rr::Record::from_rdata(name, 60, hickory_proto::rr::RData::A(ip.into()))
}

fn address_for(name: &str) -> Ipv4Addr {
    let n: u32 = name
        .trim_start_matches('q')
        .split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ipv4Addr::new(10, 9, (n / 256) as u8, (n % 256) as u8)
}

#[test]
fn two_thousand_concurrent_forwarded_queries_each_get_their_own_answer() {
    raise_nofile(16_384);
    let upstream = SlowUpstream::start(Duration::from_millis(300), true);
    let mut config = ServerConfig::new(loopback());
    config.upstreams = vec![upstream.addr];
    config.upstream_timeout = Duration::from_secs(5);
    let server = start(config);
    let addr = server.local_addr();

    let clients: Vec<UdpSocket> = (0..2_000)
        .map(|_| UdpSocket::bind(loopback()).expect("bind"))
        .collect();
    for (i, c) in clients.iter().enumerate() {
        let id = u16::try_from(i).expect("id");
        c.send_to(&build_query(id, &format!("q{i}.example."), rtype::A), addr)
            .expect("send");
    }
    let mut buf = [0u8; 4096];
    for (i, c) in clients.iter().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let (n, _) = c
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("query {i}: no answer: {e}"));
        let m = decode(&buf[..n]);
        let name = format!("q{i}.example.");
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{i}: {m:?}"
        );
        assert_eq!(m.metadata.id, u16::try_from(i).expect("id"));
        assert_eq!(m.queries[0].name().to_string(), name);
        let got: Vec<String> = m.answers.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            got,
            [format!("{name} 60 IN A {}", address_for(&name))],
            "query {i} got someone else's or a forged answer"
        );
    }
    // Exactly one answer per query: the forgeries were not relayed.
    thread::sleep(Duration::from_millis(200));
    for (i, c) in clients.iter().enumerate() {
        c.set_nonblocking(true).expect("nonblocking");
        assert!(c.recv_from(&mut buf).is_err(), "query {i}: a second answer");
    }
    assert_eq!(upstream.received.load(Ordering::Relaxed), 2_000);
}

#[test]
fn queries_beyond_max_concurrent_are_refused_at_once() {
    // An upstream that never answers; ten queries may wait for it.
    let upstream = SlowUpstream::start(Duration::ZERO, false);
    let mut config = ServerConfig::new(loopback());
    config.upstreams = vec![upstream.addr];
    config.max_concurrent = 10;
    config.upstream_timeout = Duration::from_millis(1_500);
    // No health probe during the test: it would count as a query received.
    config.health_check = Duration::from_secs(60);
    let server = start(config);
    let addr = server.local_addr();

    let clients: Vec<UdpSocket> = (0..40)
        .map(|_| UdpSocket::bind(loopback()).expect("bind"))
        .collect();
    let t = Instant::now();
    for (i, c) in clients.iter().enumerate() {
        c.send_to(&build_query(1, &format!("q{i}.example."), rtype::A), addr)
            .expect("send");
        // In order: the first ten take the permits.
        thread::sleep(Duration::from_millis(2));
    }
    let mut buf = [0u8; 512];
    let mut answer = |c: &UdpSocket| {
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let (n, _) = c.recv_from(&mut buf).expect("an answer");
        (decode(&buf[..n]).metadata.response_code, t.elapsed())
    };
    // The thirty beyond the limit were refused without waiting for the upstream...
    for (i, c) in clients.iter().enumerate().skip(10) {
        let (code, at) = answer(c);
        assert_eq!(code, ResponseCode::Refused, "{i}");
        assert!(at < Duration::from_millis(1_000), "{i}: {at:?}");
    }
    // ...the first ten waited for it and failed (SERVFAIL after the timeout).
    for (i, c) in clients.iter().enumerate().take(10) {
        let (code, at) = answer(c);
        assert_eq!(code, ResponseCode::ServFail, "{i}");
        assert!(at >= Duration::from_millis(1_400), "{i}: {at:?}");
    }
    assert_eq!(upstream.received.load(Ordering::Relaxed), 10);
}

#[test]
fn clients_outside_allow_recursion_are_refused_for_names_not_ours() {
    let upstream = SlowUpstream::start(Duration::ZERO, true);
    let mut config = ServerConfig::new(loopback());
    config.upstreams = vec![upstream.addr];
    config.allow_recursion = vec!["127.0.0.1/32".parse().expect("cidr")];
    let server = start(config);
    let addr = server.local_addr();
    let inside: IpAddr = Ipv4Addr::new(127, 0, 0, 1).into();
    let outside: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();

    let m = udp_ask(addr, inside, "q7.example.", rtype::A);
    assert_eq!(m.answers[0].to_string(), "q7.example. 60 IN A 10.9.0.7");
    for m in [
        udp_ask(addr, outside, "q7.example.", rtype::A),
        tcp_ask(addr, outside, "q7.example.", rtype::A),
    ] {
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{m:?}");
        assert!(m.answers.is_empty());
    }
    // Our own names are answered for everyone.
    let m = udp_ask(addr, outside, "10-2-0-1.huge.x.svc.cluster.local", rtype::A);
    assert_eq!(m.answers[0].data.to_string(), "10.2.0.1");
    // Only the allowed client's question reached the upstream.
    assert_eq!(upstream.received.load(Ordering::Relaxed), 1);
}

#[test]
fn a_dead_upstream_is_skipped_and_the_live_one_answers() {
    // A port with nothing behind it: every query to it fails (ICMP port unreachable or
    // the timeout).
    let dead = UdpSocket::bind(loopback()).expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let live = SlowUpstream::start(Duration::ZERO, true);
    let mut config = ServerConfig::new(loopback());
    config.upstreams = vec![dead_addr, live.addr];
    config.upstream_timeout = Duration::from_millis(500);
    config.health_check = Duration::from_secs(60);
    let server = start(config);
    let addr = server.local_addr();
    // Every query is answered, by the live upstream, whichever was picked first.
    for i in 0..20 {
        let name = format!("q{i}.example.");
        let m = udp_ask(addr, Ipv4Addr::LOCALHOST.into(), &name, rtype::A);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{i}: {m:?}"
        );
        assert_eq!(
            m.answers[0].data.to_string(),
            address_for(&name).to_string()
        );
    }
    // After max_fails failures the dead upstream is left out: answers come at once.
    let t = Instant::now();
    for i in 20..40 {
        let m = udp_ask(
            addr,
            Ipv4Addr::LOCALHOST.into(),
            &format!("q{i}.example."),
            rtype::A,
        );
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(live.received.load(Ordering::Relaxed), 40);
}
