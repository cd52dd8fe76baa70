//! Properties: incremental updates equal full builds; arbitrary requests never panic and
//! always get a well-formed answer.

use hickory_proto::op::Message;
use proptest::prelude::*;
use service_dns::wire::{build_query, rtype};
use service_dns::{DnsConfig, Lookup, PodRecords, Rdata, Transport, Zone};
use service_testkit::fixtures;

#[derive(Clone, Debug)]
enum Kind {
    ClusterIp(u8),
    Headless(Vec<(bool, Option<u8>)>),
    External(u8),
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        (1u8..200).prop_map(Kind::ClusterIp),
        proptest::collection::vec((any::<bool>(), proptest::option::of(0u8..3)), 0..4)
            .prop_map(Kind::Headless),
        (0u8..3).prop_map(Kind::External),
    ]
}

/// A cluster: up to six Services over two namespaces.
fn cluster() -> impl Strategy<Value = Vec<Option<Kind>>> {
    proptest::collection::vec(proptest::option::of(kind()), 6)
}

fn yaml(services: &[Option<Kind>]) -> String {
    let mut y = String::new();
    for (i, k) in services.iter().enumerate() {
        let Some(k) = k else { continue };
        let (name, ns) = (format!("s{i}"), if i % 2 == 0 { "a" } else { "b" });
        match k {
            Kind::ClusterIp(ip) => y.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{clusterIP: 10.96.0.{ip}, ports: [{{name: p, port: 80}}, {{name: q, port: 81, protocol: UDP}}]}}\n"
            )),
            Kind::External(t) => y.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{type: ExternalName, externalName: t{t}.example.com}}\n"
            )),
            Kind::Headless(eps) => {
                y.push_str(&format!(
                    "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{clusterIP: None, selector: {{app: z}}, ports: [{{name: p, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: p, port: 8080, protocol: TCP}}]\nendpoints:\n"
                ));
                if eps.is_empty() {
                    y.push_str("- addresses: [10.200.0.1]\n  conditions: {ready: false}\n");
                }
                for (j, (ready, host)) in eps.iter().enumerate() {
                    y.push_str(&format!("- addresses: [10.244.{i}.{j}]\n  conditions: {{ready: {ready}}}\n"));
                    if let Some(h) = host {
                        y.push_str(&format!("  hostname: h{h}\n"));
                    }
                }
            }
        }
    }
    y
}

/// Every listed record is what a lookup of its name and type answers, and nothing else.
fn assert_lookups_match_records(zone: &Zone) -> Result<(), TestCaseError> {
    use std::collections::BTreeMap;
    let mut by: BTreeMap<(String, u16), Vec<Rdata>> = BTreeMap::new();
    for r in zone.records() {
        by.entry((r.name.clone(), r.data.rtype().code()))
            .or_default()
            .push(r.data);
    }
    for ((name, t), mut want) in by {
        let got = match zone.view().lookup(&name, t) {
            Lookup::Answer(recs, _) => {
                let mut recs = recs.to_vec();
                recs.sort();
                recs
            }
            other => return Err(TestCaseError::fail(format!("{name} {t}: {other:?}"))),
        };
        want.sort();
        prop_assert_eq!(got, want, "{} {}", name, t);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn updates_equal_full_builds(states in proptest::collection::vec(cluster(), 2..5)) {
        let snaps: Vec<_> = states.iter().map(|s| fixtures::snapshot(&yaml(s), "n", &[])).collect();
        let mut zone = Zone::from_snapshot(DnsConfig::default(), &snaps[0]);
        for w in snaps.windows(2) {
            zone.update(&w[0], &w[1]);
            let full = Zone::from_snapshot(DnsConfig::default(), &w[1]);
            prop_assert_eq!(zone.records(), full.records());
            // The incrementally updated zone answers like the fresh one, and both answer
            // exactly the records they list.
            let mut names: Vec<String> = zone.records().into_iter().map(|r| r.name).collect();
            names.extend(Zone::from_snapshot(DnsConfig::default(), &w[0]).records().into_iter().map(|r| r.name));
            names.sort();
            names.dedup();
            for name in &names {
                for t in [rtype::A, rtype::AAAA, rtype::SRV, rtype::PTR, rtype::CNAME, rtype::TXT] {
                    prop_assert_eq!(zone.view().lookup(name, t), full.view().lookup(name, t), "{} {}", name, t);
                }
            }
            assert_lookups_match_records(&full)?;
        }
    }

    #[test]
    fn arbitrary_requests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut cfg = DnsConfig::default();
        cfg.pods = PodRecords::Insecure;
        let zone = Zone::from_snapshot(cfg, &fixtures::snapshot(&yaml(&[Some(Kind::ClusterIp(5)), Some(Kind::Headless(vec![(true, Some(1))]))]), "n", &[]));
        let mut out = Vec::new();
        for t in [Transport::Udp, Transport::Tcp] {
            let _ = zone.view().respond(&bytes, &mut out, t, true);
        }
    }

    /// Every question about names near ours gets an answer an independent decoder reads.
    #[test]
    fn answers_are_well_formed(labels in proptest::collection::vec("[a-zA-Z0-9_-]{1,12}", 0..4), suffix in prop::sample::select(vec!["s0.a.svc.cluster.local", "s1.b.svc.cluster.local", "a.svc.cluster.local", "cluster.local", "in-addr.arpa", "a.pod.cluster.local"]), qtype in prop::sample::select(vec![rtype::A, rtype::AAAA, rtype::SRV, rtype::PTR, rtype::TXT, rtype::CNAME, rtype::NS, rtype::SOA, rtype::ANY, 99])) {
        let mut cfg = DnsConfig::default();
        cfg.pods = PodRecords::Insecure;
        let zone = Zone::from_snapshot(cfg, &fixtures::snapshot(&yaml(&[Some(Kind::Headless(vec![(true, Some(1)), (true, None)])), Some(Kind::ClusterIp(7)), Some(Kind::External(1))]), "n", &[]));
        let mut name = labels.join(".");
        if !name.is_empty() { name.push('.'); }
        name.push_str(suffix);
        let q = build_query(77, &name, qtype);
        let mut out = Vec::new();
        let _ = zone.view().respond(&q, &mut out, Transport::Udp, false);
        let m = Message::from_vec(&out);
        prop_assert!(m.is_ok(), "{name} {qtype}: {:?}", m.err());
        prop_assert_eq!(m.unwrap().metadata.id, 77);
    }
}
