//! The running server, end to end: the input is split into a UDP datagram and a TCP byte
//! stream (arbitrary framing included), both sent to one server on loopback; whatever they
//! hold, the server must keep answering a well-formed query afterwards, over UDP and TCP.
#![no_main]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use service_core::cluster::Cluster;
use service_core::manifest::load_str;
use service_core::snapshot::NodeInfo;
use service_dns::server::{DnsServer, ServerConfig};
use service_dns::wire::{build_query, rtype};
use service_dns::{DnsConfig, Zone};

const CLUSTER: &str = include_str!("../../service-dns/tests/fixtures/cluster.yaml");

fn server() -> SocketAddr {
    static SERVER: OnceLock<(DnsServer, SocketAddr)> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let loaded = load_str("fuzz", CLUSTER).expect("fixture");
            let (mut cluster, _) = Cluster::from_objects(loaded.objects);
            cluster.derive_endpoint_slices(Default::default());
            let snap = cluster
                .snapshot(NodeInfo::new("n", Vec::new()))
                .expect("snapshot");
            let zone = Zone::from_snapshot(DnsConfig::default(), &snap);
            let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
            config.udp_workers = 1;
            // Short, so that a stream that stops mid-message is let go quickly.
            config.tcp_idle = Duration::from_millis(100);
            config.tcp_message = Duration::from_millis(100);
            let server = DnsServer::start(config, zone.view()).expect("start");
            let addr = server.local_addr();
            (server, addr)
        })
        .1
}

fn udp_query(addr: SocketAddr, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(wait)).ok()?;
    sock.send_to(msg, addr).ok()?;
    let mut buf = vec![0u8; 65_535];
    let n = sock.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fuzz_target!(|data: &[u8]| {
    let addr = server();
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (datagram, stream) = data.split_at(split);
    // The datagram: any answer carries its ID.
    if let Some(a) = udp_query(addr, datagram, Duration::from_millis(3)) {
        assert!(a.len() >= 12 && datagram.len() >= 2 && a[..2] == datagram[..2]);
    }
    // The stream: written whole, then read until the server closes or goes quiet.
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
        let _ = s.write_all(stream);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    // Still serving, both ways.
    let q = build_query(0x5151, "web.shop.svc.cluster.local", rtype::A);
    let a = udp_query(addr, &q, Duration::from_secs(2)).expect("the server stopped answering UDP");
    assert_eq!(a[..2], q[..2]);
    let mut s = TcpStream::connect(addr).expect("the server stopped accepting TCP");
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).expect("write");
    let mut len = [0u8; 2];
    s.read_exact(&mut len).expect("the server stopped answering TCP");
});
