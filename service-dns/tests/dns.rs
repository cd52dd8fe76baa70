//! Every record kind and negative case of the specification and CoreDNS, asked as bytes
//! and read back with hickory-proto (an independent decoder).

use hickory_proto::op::{Message, ResponseCode};
use service_core::snapshot::Snapshot;
use service_dns::wire::{build_query, rtype};
use service_dns::{DnsConfig, Outcome, PodRecords, Transport, Zone};
use service_testkit::fixtures;

const CLUSTER: &str = include_str!("fixtures/cluster.yaml");

fn snapshot() -> Snapshot {
    fixtures::snapshot(CLUSTER, "node-a", &["192.168.0.2"])
}

fn zone() -> Zone {
    Zone::from_snapshot(DnsConfig::default(), &snapshot())
}

/// A decoded answer: rcode, flags and the three sections as zone-file lines.
#[derive(Debug)]
struct Reply {
    rcode: ResponseCode,
    aa: bool,
    tc: bool,
    answers: Vec<String>,
    authority: Vec<String>,
    additional: Vec<String>,
    edns: bool,
}

fn ask_bytes(zone: &Zone, query: &[u8], transport: Transport) -> (Outcome, Reply) {
    let mut out = Vec::new();
    let outcome = zone.view().respond(query, &mut out, transport, false);
    let m = Message::from_vec(&out).unwrap_or_else(|e| panic!("undecodable answer {out:?}: {e}"));
    let lines =
        |rs: &[hickory_proto::rr::Record]| rs.iter().map(ToString::to_string).collect::<Vec<_>>();
    let reply = Reply {
        rcode: m.metadata.response_code,
        aa: m.metadata.authoritative,
        tc: m.metadata.truncation,
        answers: lines(&m.answers),
        authority: lines(&m.authorities),
        additional: lines(&m.additionals),
        edns: m.edns.is_some(),
    };
    (outcome, reply)
}

fn ask(zone: &Zone, name: &str, qtype: u16) -> Reply {
    ask_bytes(zone, &build_query(0x4242, name, qtype), Transport::Udp).1
}

fn answers(zone: &Zone, name: &str, qtype: u16) -> Vec<String> {
    let r = ask(zone, name, qtype);
    assert_eq!(r.rcode, ResponseCode::NoError, "{name}: {r:?}");
    r.answers
}

const SOA: &str =
    "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30";

#[test]
fn dns_version() {
    let z = zone();
    assert_eq!(
        answers(&z, "dns-version.cluster.local", rtype::TXT),
        ["dns-version.cluster.local. 28800 IN TXT 1.1.0"]
    );
}

#[test]
fn cluster_ip_services_have_a_and_aaaa_even_without_endpoints() {
    let z = zone();
    assert_eq!(
        answers(&z, "web.shop.svc.cluster.local", rtype::A),
        ["web.shop.svc.cluster.local. 30 IN A 10.96.10.20"]
    );
    assert_eq!(
        answers(&z, "web.shop.svc.cluster.local", rtype::AAAA),
        ["web.shop.svc.cluster.local. 30 IN AAAA fd00:10::20"]
    );
    assert_eq!(
        answers(&z, "kubernetes.default.svc.cluster.local", rtype::A),
        ["kubernetes.default.svc.cluster.local. 30 IN A 10.96.0.1"]
    );
    // An IPv4-only Service has no AAAA: NODATA with the SOA.
    let r = ask(&z, "kubernetes.default.svc.cluster.local", rtype::AAAA);
    assert_eq!((r.rcode, r.answers.len()), (ResponseCode::NoError, 0));
    assert_eq!(r.authority, [SOA]);
    assert!(r.aa);
}

#[test]
fn srv_for_named_ports_with_the_targets_in_additional() {
    let z = zone();
    let r = ask(&z, "_http._tcp.web.shop.svc.cluster.local", rtype::SRV);
    assert_eq!(
        r.answers,
        ["_http._tcp.web.shop.svc.cluster.local. 30 IN SRV 0 100 80 web.shop.svc.cluster.local."]
    );
    assert_eq!(
        r.additional,
        [
            "web.shop.svc.cluster.local. 30 IN A 10.96.10.20",
            "web.shop.svc.cluster.local. 30 IN AAAA fd00:10::20"
        ]
    );
    // Underscores are optional (CoreDNS strips them); UDP and TCP ports differ.
    assert_eq!(
        answers(
            &z,
            "dns.udp.kube-dns.kube-system.svc.cluster.local",
            rtype::SRV
        )
        .len(),
        1
    );
    assert_eq!(
        answers(
            &z,
            "_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local",
            rtype::SRV
        )
        .len(),
        1
    );
    // A port that does not exist, or the wrong protocol: NXDOMAIN.
    assert_eq!(
        ask(&z, "_http._udp.web.shop.svc.cluster.local", rtype::SRV).rcode,
        ResponseCode::NXDomain
    );
    assert_eq!(
        ask(&z, "_nope._tcp.web.shop.svc.cluster.local", rtype::SRV).rcode,
        ResponseCode::NXDomain
    );
    // SRV at the Service name: every port, weight 100/2.
    assert_eq!(
        answers(&z, "web.shop.svc.cluster.local", rtype::SRV),
        [
            "web.shop.svc.cluster.local. 30 IN SRV 0 50 80 web.shop.svc.cluster.local.",
            "web.shop.svc.cluster.local. 30 IN SRV 0 50 9090 web.shop.svc.cluster.local."
        ]
    );
    // The SRV name exists: an A query there is NODATA.
    let r = ask(&z, "_http._tcp.web.shop.svc.cluster.local", rtype::A);
    assert_eq!((r.rcode, r.answers.len()), (ResponseCode::NoError, 0));
}

#[test]
fn headless_services() {
    let z = zone();
    // Ready endpoints only.
    assert_eq!(
        answers(&z, "db.data.svc.cluster.local", rtype::A),
        [
            "db.data.svc.cluster.local. 30 IN A 10.244.2.20",
            "db.data.svc.cluster.local. 30 IN A 10.244.2.21",
            "db.data.svc.cluster.local. 30 IN A 10.244.2.22"
        ]
    );
    assert_eq!(
        answers(&z, "db-0.db.data.svc.cluster.local", rtype::A),
        ["db-0.db.data.svc.cluster.local. 30 IN A 10.244.2.20"]
    );
    // Without a hostname: the dashed address.
    assert_eq!(
        answers(&z, "10-244-2-22.db.data.svc.cluster.local", rtype::A),
        ["10-244-2-22.db.data.svc.cluster.local. 30 IN A 10.244.2.22"]
    );
    // Not ready: no name.
    assert_eq!(
        ask(&z, "db-3.db.data.svc.cluster.local", rtype::A).rcode,
        ResponseCode::NXDomain
    );
    // SRV: one per ready endpoint, weight 100/3, the endpoints' addresses in additional.
    let r = ask(&z, "_pg._tcp.db.data.svc.cluster.local", rtype::SRV);
    assert_eq!(
        r.answers,
        [
            "_pg._tcp.db.data.svc.cluster.local. 30 IN SRV 0 33 5432 db-0.db.data.svc.cluster.local.",
            "_pg._tcp.db.data.svc.cluster.local. 30 IN SRV 0 33 5432 db-1.db.data.svc.cluster.local.",
            "_pg._tcp.db.data.svc.cluster.local. 30 IN SRV 0 33 5432 10-244-2-22.db.data.svc.cluster.local."
        ]
    );
    assert_eq!(r.additional.len(), 3);
    assert!(r.additional[0].starts_with("db-0.db.data.svc.cluster.local. 30 IN A 10.244.2.20"));
    // No ready endpoint at all: the name does not exist (spec 2.4.1).
    let r = ask(&z, "empty.data.svc.cluster.local", rtype::A);
    assert_eq!(r.rcode, ResponseCode::NXDomain);
    assert_eq!(r.authority, [SOA]);
}

#[test]
fn endpoint_names_of_cluster_ip_services_resolve_too() {
    // A CoreDNS extension: `<endpoint>.<svc>` for non-headless Services.
    let z = zone();
    assert_eq!(
        answers(&z, "10-244-1-10.web.shop.svc.cluster.local", rtype::A),
        ["10-244-1-10.web.shop.svc.cluster.local. 30 IN A 10.244.1.10"]
    );
}

#[test]
fn ptr_records() {
    let z = zone();
    assert_eq!(
        answers(&z, "20.10.96.10.in-addr.arpa", rtype::PTR),
        ["20.10.96.10.in-addr.arpa. 30 IN PTR web.shop.svc.cluster.local."]
    );
    assert_eq!(
        answers(
            &z,
            "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.d.f.ip6.arpa",
            rtype::PTR
        ),
        [
            "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.d.f.ip6.arpa. 30 IN PTR web.shop.svc.cluster.local."
        ]
    );
    assert_eq!(
        answers(&z, "20.2.244.10.in-addr.arpa", rtype::PTR),
        ["20.2.244.10.in-addr.arpa. 30 IN PTR db-0.db.data.svc.cluster.local."]
    );
    let r = ask(&z, "99.99.99.10.in-addr.arpa", rtype::PTR);
    assert_eq!(r.rcode, ResponseCode::NXDomain);
    assert_eq!(
        r.authority,
        [
            "in-addr.arpa. 30 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. 1 7200 1800 86400 30"
        ]
    );
}

#[test]
fn external_names() {
    let z = zone();
    // Out of the zone: just the CNAME (the server may chase it upstream).
    let mut out = Vec::new();
    let q = build_query(1, "payments.shop.svc.cluster.local", rtype::A);
    let outcome = z.view().respond(&q, &mut out, Transport::Udp, true);
    assert_eq!(
        outcome,
        Outcome::Chase {
            target: "payments.example.com".into(),
            qtype: rtype::A
        }
    );
    assert_eq!(
        answers(&z, "payments.shop.svc.cluster.local", rtype::A),
        ["payments.shop.svc.cluster.local. 30 IN CNAME payments.example.com."]
    );
    assert_eq!(
        answers(&z, "payments.shop.svc.cluster.local", rtype::CNAME).len(),
        1
    );
    // Inside the zone: chased from our own records.
    assert_eq!(
        answers(&z, "alias.shop.svc.cluster.local", rtype::A),
        [
            "alias.shop.svc.cluster.local. 30 IN CNAME web.shop.svc.cluster.local.",
            "web.shop.svc.cluster.local. 30 IN A 10.96.10.20"
        ]
    );
    // SRV for an ExternalName Service: NODATA; names below it and address targets: NXDOMAIN.
    let r = ask(&z, "payments.shop.svc.cluster.local", rtype::SRV);
    assert_eq!((r.rcode, r.answers.len()), (ResponseCode::NoError, 0));
    assert_eq!(
        ask(&z, "x.payments.shop.svc.cluster.local", rtype::A).rcode,
        ResponseCode::NXDomain
    );
    assert_eq!(
        ask(&z, "by-ip.shop.svc.cluster.local", rtype::A).rcode,
        ResponseCode::NXDomain
    );
}

#[test]
fn nxdomain_versus_nodata() {
    let z = zone();
    let nodata = |name: &str, t: u16| {
        let r = ask(&z, name, t);
        assert_eq!(
            (r.rcode, r.answers.len(), r.authority),
            (ResponseCode::NoError, 0, vec![SOA.to_owned()]),
            "{name}"
        );
    };
    let nx = |name: &str, t: u16| {
        let r = ask(&z, name, t);
        assert_eq!(
            (r.rcode, r.authority),
            (ResponseCode::NXDomain, vec![SOA.to_owned()]),
            "{name}"
        );
    };
    nodata("svc.cluster.local", rtype::A);
    nodata("pod.cluster.local", rtype::A);
    nodata("shop.svc.cluster.local", rtype::A);
    nodata("web.shop.svc.cluster.local", rtype::TXT);
    nodata("cluster.local", rtype::A);
    nx("nope.shop.svc.cluster.local", rtype::A);
    nx("web.nope.svc.cluster.local", rtype::A);
    nx("nope.svc.cluster.local", rtype::A);
    nx("a.b.c.web.shop.svc.cluster.local", rtype::A);
    nx("whatever.cluster.local", rtype::A);
    // Pod records are off by default.
    nx("10-244-1-10.shop.pod.cluster.local", rtype::A);
}

#[test]
fn apex() {
    let z = zone();
    let r = ask(&z, "cluster.local", rtype::SOA);
    assert_eq!(r.answers, [SOA]);
    let r = ask(&z, "cluster.local", rtype::NS);
    assert_eq!(r.answers, ["cluster.local. 30 IN NS ns.dns.cluster.local."]);
    // Glue: the kube-dns Service's address.
    assert_eq!(r.additional, ["ns.dns.cluster.local. 30 IN A 10.96.0.10"]);
}

#[test]
fn case_is_echoed() {
    let z = zone();
    assert_eq!(
        answers(&z, "WeB.ShOp.SvC.ClUsTeR.LoCaL", rtype::A),
        ["WeB.ShOp.SvC.ClUsTeR.LoCaL. 30 IN A 10.96.10.20"]
    );
    // SRV targets use the object's lowercase name; the additional section reuses the
    // question's spelling of the shared suffix.
    let r = ask(&z, "_HTTP._TCP.web.shop.SVC.CLUSTER.LOCAL", rtype::SRV);
    assert_eq!(
        r.answers,
        ["_HTTP._TCP.web.shop.SVC.CLUSTER.LOCAL. 30 IN SRV 0 100 80 web.shop.svc.cluster.local."]
    );
}

#[test]
fn pod_records_when_enabled() {
    let mut cfg = DnsConfig::default();
    cfg.pods = PodRecords::Insecure;
    let z = Zone::from_snapshot(cfg.clone(), &snapshot());
    assert_eq!(
        answers(&z, "10-244-9-9.shop.pod.cluster.local", rtype::A),
        ["10-244-9-9.shop.pod.cluster.local. 30 IN A 10.244.9.9"]
    );
    assert_eq!(
        answers(&z, "fd00--9.shop.pod.cluster.local", rtype::AAAA),
        ["fd00--9.shop.pod.cluster.local. 30 IN AAAA fd00::9"]
    );
    assert_eq!(
        ask(&z, "10-244-9-9.nope.pod.cluster.local", rtype::A).rcode,
        ResponseCode::NXDomain
    );
    assert_eq!(
        ask(&z, "not-an-ip.shop.pod.cluster.local", rtype::A).rcode,
        ResponseCode::NXDomain
    );
    cfg.pods = PodRecords::Verified;
    let mut z = Zone::from_snapshot(cfg, &snapshot());
    z.set_pods([("shop".to_owned(), "10.244.9.9".parse().unwrap())]);
    assert_eq!(
        answers(&z, "10-244-9-9.shop.pod.cluster.local", rtype::A).len(),
        1
    );
    assert_eq!(
        ask(&z, "10-244-9-8.shop.pod.cluster.local", rtype::A).rcode,
        ResponseCode::NXDomain
    );
}

#[test]
fn protocol_errors() {
    let z = zone();
    // Not ours, without forwarding: REFUSED.
    assert_eq!(
        ask(&z, "example.com", rtype::A).rcode,
        ResponseCode::Refused
    );
    // Zone transfers: REFUSED.
    assert_eq!(
        ask(&z, "cluster.local", rtype::AXFR).rcode,
        ResponseCode::Refused
    );
    // Another opcode: NOTIMP.
    let mut q = build_query(1, "web.shop.svc.cluster.local", rtype::A);
    q[2] |= 2 << 3;
    assert_eq!(
        ask_bytes(&z, &q, Transport::Udp).1.rcode,
        ResponseCode::NotImp
    );
    // Two questions: FORMERR.
    let mut q = build_query(1, "web.shop.svc.cluster.local", rtype::A);
    q[5] = 2;
    assert_eq!(
        ask_bytes(&z, &q, Transport::Udp).1.rcode,
        ResponseCode::FormErr
    );
    // A response is not answered.
    let mut q = build_query(1, "web.shop.svc.cluster.local", rtype::A);
    q[2] |= 0x80;
    assert_eq!(
        z.view().respond(&q, &mut Vec::new(), Transport::Udp, false),
        Outcome::Ignore
    );
    // EDNS version 1: BADVERS, with an OPT.
    let mut q = build_query(1, "web.shop.svc.cluster.local", rtype::A);
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 1, 0, 0, 0, 0]);
    q[11] = 1;
    let (_, r) = ask_bytes(&z, &q, Transport::Udp);
    // Extended rcode 16 is both BADVERS (OPT) and BADSIG (TSIG); hickory names it BADSIG.
    assert!(
        matches!(r.rcode, ResponseCode::BADVERS | ResponseCode::BADSIG),
        "{r:?}"
    );
    assert!(r.edns);
}

fn many_endpoints(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: x}\nspec: {clusterIP: None, selector: {a: b}, ports: [{name: p, port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: big-1, namespace: x, labels: {kubernetes.io/service-name: big}}\naddressType: IPv4\nports: [{name: p, port: 80, protocol: TCP}]\nendpoints:\n",
    );
    for i in 0..n {
        y.push_str(&format!(
            "- addresses: [10.1.{}.{}]\n",
            i / 250,
            i % 250 + 1
        ));
    }
    y
}

#[test]
fn large_answers_are_truncated_over_udp_and_complete_over_tcp() {
    let snap = fixtures::snapshot(&many_endpoints(100), "n", &[]);
    let z = Zone::from_snapshot(DnsConfig::default(), &snap);
    let q = build_query(9, "big.x.svc.cluster.local", rtype::A);
    let bytes = {
        let mut out = Vec::new();
        z.view().respond(&q, &mut out, Transport::Udp, false);
        out
    };
    let (_, r) = ask_bytes(&z, &q, Transport::Udp);
    // As CoreDNS does (request.Scrub, miekg/dns Msg.Truncate): TC, and the records that
    // fit in 512 bytes, in order — musl before 1.2.4 never retries over TCP, so an empty
    // truncated answer would be no answer at all. (This test expected none before.)
    assert!(r.tc && bytes.len() <= 512, "{r:?}");
    assert_eq!(r.answers.len(), 29, "{r:?}");
    assert!(r.answers[0].ends_with("A 10.1.0.1") && r.answers[28].ends_with("A 10.1.0.29"));
    let (_, r) = ask_bytes(&z, &q, Transport::Tcp);
    assert!(!r.tc);
    assert_eq!(r.answers.len(), 100);
    // With EDNS and a 1232-byte buffer, 70 A records (16 bytes each) fit.
    let snap = fixtures::snapshot(&many_endpoints(70), "n", &[]);
    let z = Zone::from_snapshot(DnsConfig::default(), &snap);
    let mut q = build_query(9, "big.x.svc.cluster.local", rtype::A);
    q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    q[11] = 1;
    let (_, r) = ask_bytes(&z, &q, Transport::Udp);
    assert!(!r.tc && r.edns);
    assert_eq!(r.answers.len(), 70);
}

/// A headless Service of 5,000 ready pods in both families.
fn huge_headless() -> Zone {
    let mut y = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: huge, namespace: x}\nspec: {clusterIP: None, ipFamilyPolicy: PreferDualStack, selector: {a: b}, ports: [{name: p, port: 80}]}\n",
    );
    for (family, name) in [("IPv4", "v4"), ("IPv6", "v6")] {
        for i in 0..5000 {
            // A slice holds at most 1,000 endpoints.
            if i % 1000 == 0 {
                y.push_str(&format!(
                    "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: huge-{name}-{}, namespace: x, labels: {{kubernetes.io/service-name: huge}}}}\naddressType: {family}\nports: [{{name: p, port: 80, protocol: TCP}}]\nendpoints:\n",
                    i / 1000
                ));
            }
            let ip = if family == "IPv4" {
                format!("10.2.{}.{}", i / 250, i % 250 + 1)
            } else {
                format!("'fd00::{:x}'", i + 1)
            };
            y.push_str(&format!("- addresses: [{ip}]\n"));
        }
    }
    let snap = fixtures::snapshot(&y, "n", &[]);
    Zone::from_snapshot(DnsConfig::default(), &snap)
}

fn raw(z: &Zone, q: &[u8], t: Transport) -> Vec<u8> {
    let mut out = Vec::new();
    z.view().respond(q, &mut out, t, false);
    out
}

#[test]
fn a_five_thousand_pod_headless_name_answers_what_fits() {
    let z = huge_headless();
    let name = "huge.x.svc.cluster.local";
    for qtype in [rtype::A, rtype::AAAA, rtype::SRV, rtype::ANY] {
        // UDP without EDNS: TC and the first records that fit in 512 bytes.
        let q = build_query(7, name, qtype);
        let udp = raw(&z, &q, Transport::Udp);
        let (_, r) = ask_bytes(&z, &q, Transport::Udp);
        assert!(
            udp.len() <= 512 && r.tc && !r.answers.is_empty(),
            "{qtype}: {r:?}"
        );
        // UDP with EDNS (4096 asked, 1232 answered).
        let mut q = build_query(7, name, qtype);
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        q[11] = 1;
        let udp = raw(&z, &q, Transport::Udp);
        let (_, r) = ask_bytes(&z, &q, Transport::Udp);
        assert!(
            udp.len() <= 1232 && r.tc && r.edns,
            "{qtype}: {}",
            udp.len()
        );
        // TCP: never TC, up to 65,535 bytes of records, in the zone's order.
        let q = build_query(7, name, qtype);
        let tcp = raw(&z, &q, Transport::Tcp);
        let (_, r) = ask_bytes(&z, &q, Transport::Tcp);
        assert!(
            !r.tc && tcp.len() <= 65_535 && tcp.len() > 60_000,
            "{qtype}: {}",
            tcp.len()
        );
        match qtype {
            rtype::A => {
                assert!(r.answers.len() > 3_500, "{}", r.answers.len());
                assert!(r.answers[0].ends_with("A 10.2.0.1"), "{}", r.answers[0]);
                assert!(r.answers[250].ends_with("A 10.2.1.1"), "{}", r.answers[250]);
            }
            rtype::AAAA => assert!(r.answers[0].ends_with("AAAA fd00::1"), "{}", r.answers[0]),
            rtype::SRV => {
                assert!(r.answers[0].contains("SRV 0 1 80 10-2-0-1.huge.x.svc.cluster.local."));
                // The additional section holds the addresses of the targets that fit.
                assert!(r.additional.is_empty() || r.additional[0].contains("10-2-0-1.huge"));
            }
            _ => {}
        }
    }
    // An endpoint's own name, found without scanning the others.
    let r = ask(&z, "10-2-19-250.huge.x.svc.cluster.local", rtype::A);
    assert_eq!(
        r.answers,
        ["10-2-19-250.huge.x.svc.cluster.local. 30 IN A 10.2.19.250"]
    );
}

#[test]
fn incremental_updates_equal_a_full_build() {
    let before = snapshot();
    let changed = CLUSTER
        .replace(
            "10.244.2.21]\n  hostname: db-1\n  conditions: {ready: true}",
            "10.244.2.21]\n  hostname: db-1\n  conditions: {ready: false}",
        )
        .replace(
            "externalName: payments.example.com",
            "externalName: pay.example.net",
        );
    let after = fixtures::snapshot(&changed, "node-a", &["192.168.0.2"]);
    let mut z = zone();
    let n = z.update(&before, &after);
    assert_eq!(n, 2);
    let full = Zone::from_snapshot(DnsConfig::default(), &after);
    assert_eq!(z.records(), full.records());
    assert_eq!(
        ask(&z, "db-1.db.data.svc.cluster.local", rtype::A).rcode,
        ResponseCode::NXDomain
    );
    assert_eq!(z.serial(), 2);
    // Removing everything leaves only the apex.
    let empty = fixtures::snapshot("", "node-a", &["192.168.0.2"]);
    z.update(&after, &empty);
    assert_eq!(
        z.records(),
        Zone::from_snapshot(DnsConfig::default(), &empty).records()
    );
}

/// A Pod hostname that is not a DNS label never reaches the wire: the API server rejects
/// it (`ValidatePodSpec`: `spec.hostname` must be a DNS-1123 label), and a snapshot built in
/// code that still carries one (here `a..b` and a 64-byte label) gets dashed-address names
/// for those endpoints, so SRV and PTR answers stay well-formed.
#[test]
fn invalid_hostnames_fall_back_to_dashed_addresses() {
    use service_core::model::{Endpoint, EndpointSlice, Service, ServicePort};
    // Through the API rules: refused, with the field and the reason.
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {hostname: a..b, subdomain: h, containers: [{name: c}]}\n";
    let loaded = service_core::manifest::load_str("pods.yaml", yaml).expect("parse");
    let (_, invalid) = service_core::cluster::Cluster::from_objects(loaded.objects);
    assert_eq!(invalid.len(), 1);
    let err = invalid[0].error.to_string();
    assert!(
        err.starts_with("Pod \"p\" is invalid: spec.hostname: Invalid value: \"a..b\""),
        "{err}"
    );

    // Built in code, around the rules.
    let mut svc = Service::headless("x", "h")
        .with_selector([("a", "b")])
        .with_port(ServicePort::tcp("p", 80));
    service_core::defaults::service(&mut svc);
    let svc = service_core::validation::validate_service(&svc).expect("valid");
    let long = "l".repeat(64);
    let slice = EndpointSlice::ipv4("x", "h-1", "h")
        .with_port("p", 80)
        .with_endpoint(Endpoint::new("10.1.0.1").with_hostname("a..b"))
        .with_endpoint(Endpoint::new("10.1.0.2").with_hostname(&long))
        .with_endpoint(Endpoint::new("10.1.0.3").with_hostname("ok"));
    let node =
        service_core::snapshot::NodeInfo::new("node-a", vec!["192.168.0.2".parse().expect("ip")]);
    let snap = Snapshot::build(node, &[svc], &[slice], &[]).expect("snapshot");
    let z = Zone::from_snapshot(DnsConfig::default(), &snap);
    let srv = answers(&z, "h.x.svc.cluster.local", rtype::SRV);
    assert_eq!(
        srv,
        [
            "h.x.svc.cluster.local. 30 IN SRV 0 33 80 10-1-0-1.h.x.svc.cluster.local.",
            "h.x.svc.cluster.local. 30 IN SRV 0 33 80 10-1-0-2.h.x.svc.cluster.local.",
            "h.x.svc.cluster.local. 30 IN SRV 0 33 80 ok.h.x.svc.cluster.local.",
        ]
    );
    assert_eq!(
        answers(&z, "1.0.1.10.in-addr.arpa", rtype::PTR),
        ["1.0.1.10.in-addr.arpa. 30 IN PTR 10-1-0-1.h.x.svc.cluster.local."]
    );
    assert_eq!(
        answers(&z, "10-1-0-2.h.x.svc.cluster.local", rtype::A),
        ["10-1-0-2.h.x.svc.cluster.local. 30 IN A 10.1.0.2"]
    );
    assert_eq!(
        ask(&z, "a..b.h.x.svc.cluster.local", rtype::A).rcode,
        ResponseCode::NXDomain
    );
}
