//! Arbitrary text as manifests: whatever loads and validates becomes a zone, and every
//! name in it answers with a well-formed message (what the API server accepts must never
//! corrupt an answer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_core::cluster::Cluster;
use service_core::manifest::load_str;
use service_core::snapshot::NodeInfo;
use service_dns::wire::{build_query, rtype};
use service_dns::{DnsConfig, PodRecords, Transport, Zone};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(loaded) = load_str("fuzz.yaml", text) else {
        return;
    };
    let (mut cluster, _) = Cluster::from_objects(loaded.objects);
    cluster.derive_endpoint_slices(Default::default());
    let Ok(snap) = cluster.snapshot(NodeInfo::new("node-a", Vec::new())) else {
        return;
    };
    let mut cfg = DnsConfig::default();
    cfg.pods = PodRecords::Insecure;
    cfg.endpoint_pod_names = true;
    let zone = Zone::from_snapshot(cfg, &snap);
    let view = zone.view();
    let mut out = Vec::new();
    for record in zone.records().iter().take(64) {
        for qtype in [rtype::A, rtype::SRV, rtype::PTR, rtype::ANY] {
            let q = build_query(7, &record.name, qtype);
            for transport in [Transport::Udp, Transport::Tcp] {
                view.respond(&q, &mut out, transport, false);
                assert!(out.len() >= 12, "{}: empty answer", record.name);
                assert_eq!(&out[..2], &q[..2]);
                if transport == Transport::Udp {
                    assert!(out.len() <= 512);
                }
                // Every name in the answer is well-formed: labels of 1..=63 bytes, names
                // at most 255, pointers backwards.
                assert!(well_formed(&out), "{}: malformed answer", record.name);
            }
        }
    }
});

/// Walks the message: header, question, then every record's owner, fixed fields and data.
fn well_formed(msg: &[u8]) -> bool {
    let count = |i: usize| usize::from(u16::from_be_bytes([msg[i], msg[i + 1]]));
    let (qd, rest) = (count(4), count(6) + count(8) + count(10));
    let mut i = 12;
    for _ in 0..qd {
        let Some(end) = name_end(msg, i) else {
            return false;
        };
        i = end + 4;
    }
    for _ in 0..rest {
        let Some(end) = name_end(msg, i) else {
            return false;
        };
        i = end + 10;
        let Some(len) = msg.get(i - 2..i) else {
            return false;
        };
        i += usize::from(u16::from_be_bytes([len[0], len[1]]));
    }
    i == msg.len()
}

/// The offset after the name at `i`, if it is well-formed.
fn name_end(msg: &[u8], mut i: usize) -> Option<usize> {
    let mut total = 0;
    loop {
        let len = *msg.get(i)?;
        match len {
            0 => return Some(i + 1),
            1..=63 => {
                total += usize::from(len) + 1;
                if total > 255 {
                    return None;
                }
                i += 1 + usize::from(len);
            }
            0xc0..=0xff => {
                let at = (usize::from(len & 0x3f) << 8) | usize::from(*msg.get(i + 1)?);
                return (at < i).then_some(i + 2);
            }
            _ => return None,
        }
    }
}
