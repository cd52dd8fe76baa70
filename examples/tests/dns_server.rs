//! The `dns-server` example against real clients: `dig` over UDP and TCP for every record
//! kind and negative case, reloads, and forwarding to a real upstream (Knot DNS).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use service_testkit::netns::{E2e, require_programs};

const CLUSTER: &str = include_str!("../../service-dns/tests/fixtures/cluster.yaml");

struct Server {
    child: Child,
    addr: SocketAddr,
    log: std::sync::mpsc::Receiver<String>,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dns-server"))
            .args(["--listen", "127.0.0.1:0", "--udp-workers", "2"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dns-server");
        let (tx, log) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = log
            .recv_timeout(Duration::from_secs(20))
            .expect("dns-server output");
        let addr = first
            .strip_prefix("listening on ")
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .parse()
            .unwrap();
        Self { child, addr, log }
    }

    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(line) = self.log.recv_timeout(Duration::from_millis(100))
                && line.contains(needle)
            {
                return line;
            }
        }
        panic!("dns-server never logged {needle:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dig` at the server: (status, answer lines).
fn dig(addr: SocketAddr, tcp: bool, name: &str, qtype: &str) -> (String, Vec<String>) {
    let out = Command::new("dig")
        .args([
            format!("@{}", addr.ip()).as_str(),
            "-p",
            addr.port().to_string().as_str(),
            if tcp { "+tcp" } else { "+notcp" },
            "+norec",
            "+time=2",
            "+tries=1",
            name,
            qtype,
        ])
        .output()
        .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig output:\n{text}"))
        .to_owned();
    let mut answers = Vec::new();
    let mut in_answer = false;
    for line in text.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.is_empty() {
                break;
            }
            answers.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    (status, answers)
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("{}-{name}", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn dig_sees_every_record_kind_over_udp_and_tcp() {
    if require_programs("dig_sees_every_record_kind_over_udp_and_tcp", &["dig"]) == E2e::Skip {
        return;
    }
    let file = temp_file("cluster.yaml", CLUSTER);
    let server = Server::start(&[file.to_str().unwrap()]);
    for tcp in [false, true] {
        let q = |name: &str, t: &str| dig(server.addr, tcp, name, t);
        assert_eq!(
            q("dns-version.cluster.local", "TXT"),
            (
                "NOERROR".into(),
                vec!["dns-version.cluster.local. 28800 IN TXT \"1.1.0\"".into()]
            )
        );
        assert_eq!(
            q("web.shop.svc.cluster.local", "A").1,
            ["web.shop.svc.cluster.local. 30 IN A 10.96.10.20"]
        );
        assert_eq!(
            q("web.shop.svc.cluster.local", "AAAA").1,
            ["web.shop.svc.cluster.local. 30 IN AAAA fd00:10::20"]
        );
        assert_eq!(
            q("_http._tcp.web.shop.svc.cluster.local", "SRV").1,
            [
                "_http._tcp.web.shop.svc.cluster.local. 30 IN SRV 0 100 80 web.shop.svc.cluster.local."
            ]
        );
        assert_eq!(q("db.data.svc.cluster.local", "A").1.len(), 3);
        assert_eq!(
            q("db-1.db.data.svc.cluster.local", "A").1,
            ["db-1.db.data.svc.cluster.local. 30 IN A 10.244.2.21"]
        );
        assert_eq!(q("_pg._tcp.db.data.svc.cluster.local", "SRV").1.len(), 3);
        assert_eq!(
            q("20.10.96.10.in-addr.arpa", "PTR").1,
            ["20.10.96.10.in-addr.arpa. 30 IN PTR web.shop.svc.cluster.local."]
        );
        assert_eq!(
            q("payments.shop.svc.cluster.local", "CNAME").1,
            ["payments.shop.svc.cluster.local. 30 IN CNAME payments.example.com."]
        );
        // Negative answers.
        assert_eq!(
            q("nope.shop.svc.cluster.local", "A"),
            ("NXDOMAIN".into(), vec![])
        );
        assert_eq!(q("empty.data.svc.cluster.local", "A").0, "NXDOMAIN");
        assert_eq!(
            q("kubernetes.default.svc.cluster.local", "AAAA"),
            ("NOERROR".into(), vec![])
        );
        assert_eq!(q("shop.svc.cluster.local", "A"), ("NOERROR".into(), vec![]));
        assert_eq!(q("example.com", "A").0, "REFUSED");
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn big_answers_fall_back_to_tcp_and_reloads_apply() {
    if require_programs("big_answers_fall_back_to_tcp_and_reloads_apply", &["dig"]) == E2e::Skip {
        return;
    }
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: x}\nspec: {clusterIP: None, selector: {a: b}, ports: [{name: p, port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: big-1, namespace: x, labels: {kubernetes.io/service-name: big}}\naddressType: IPv4\nports: [{name: p, port: 80, protocol: TCP}]\nendpoints:\n",
    );
    for i in 0..120 {
        yaml.push_str(&format!("- addresses: [10.1.0.{}]\n", i + 1));
    }
    let file = temp_file("big.yaml", &yaml);
    let server = Server::start(&[file.to_str().unwrap()]);
    // dig retries over TCP by itself when the UDP answer is truncated.
    let (status, answers) = dig(server.addr, false, "big.x.svc.cluster.local", "A");
    assert_eq!((status.as_str(), answers.len()), ("NOERROR", 120));

    // Change the file: picked up without a signal.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(
        &file,
        yaml.replace("name: big,", "name: huge,")
            .replace("service-name: big}", "service-name: huge}"),
    )
    .unwrap();
    server.wait_for("reloaded (files changed)");
    assert_eq!(
        dig(server.addr, false, "big.x.svc.cluster.local", "A").0,
        "NXDOMAIN"
    );
    assert_eq!(
        dig(server.addr, true, "huge.x.svc.cluster.local", "A")
            .1
            .len(),
        120
    );

    // SIGHUP reloads too; an invalid file keeps the old records.
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: 0}]}\n",
    )
    .unwrap();
    server.wait_for("reload failed");
    assert_eq!(
        dig(server.addr, true, "huge.x.svc.cluster.local", "A")
            .1
            .len(),
        120
    );
    std::fs::write(&file, CLUSTER).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status();
    server.wait_for("reloaded");
    assert_eq!(
        dig(server.addr, false, "web.shop.svc.cluster.local", "A")
            .1
            .len(),
        1
    );
    let _ = std::fs::remove_file(file);
}

/// Knot DNS serving `example.com` on loopback, as the upstream.
struct Knot {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Knot {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("knot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            dir.join("example.com.zone"),
            "$ORIGIN example.com.\n$TTL 60\n@ SOA ns hostmaster 1 7200 1800 86400 60\n@ NS ns\nns A 127.0.0.1\npayments A 192.0.2.10\nwww A 192.0.2.80\n",
        )
        .unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("knot.conf"),
            format!("server:\n  listen: 127.0.0.1@{port}\n  rundir: {d}\ndatabase:\n  storage: {d}\nzone:\n  - domain: example.com\n    file: {d}/example.com.zone\n    storage: {d}\n"),
        )
        .unwrap();
        let child = Command::new("knotd")
            .args(["-c", &dir.join("knot.conf").to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start knotd");
        let knot = Self { child, dir, port };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "+time=1",
                    "+tries=1",
                    "www.example.com",
                ])
                .output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("192.0.2.80")) {
                return knot;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = addr;
        panic!("knotd did not start");
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn forwarding_and_external_names_through_an_upstream() {
    if require_programs(
        "forwarding_and_external_names_through_an_upstream",
        &["dig", "knotd"],
    ) == E2e::Skip
    {
        return;
    }
    let knot = Knot::start();
    let file = temp_file("fwd.yaml", CLUSTER);
    let upstream = format!("127.0.0.1:{}", knot.port);
    let server = Server::start(&["--upstream", &upstream, file.to_str().unwrap()]);
    for tcp in [false, true] {
        // Names outside the zone are relayed.
        assert_eq!(
            dig(server.addr, tcp, "www.example.com", "A").1,
            ["www.example.com. 60 IN A 192.0.2.80"]
        );
        assert_eq!(dig(server.addr, tcp, "nope.example.com", "A").0, "NXDOMAIN");
        // An ExternalName target is resolved upstream and appended to the CNAME.
        assert_eq!(
            dig(server.addr, tcp, "payments.shop.svc.cluster.local", "A").1,
            [
                "payments.shop.svc.cluster.local. 30 IN CNAME payments.example.com.",
                "payments.example.com. 60 IN A 192.0.2.10"
            ]
        );
        // Cluster names are still ours.
        assert_eq!(
            dig(server.addr, tcp, "web.shop.svc.cluster.local", "A")
                .1
                .len(),
            1
        );
    }
    let _ = std::fs::remove_file(file);
}
