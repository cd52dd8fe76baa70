//! Arbitrary bytes as an upstream's answer to our forwarded query: matching, trimming to a
//! client's size and record parsing must never panic; what is trimmed fits; records parsed
//! from it and chased into our own answer still make a well-formed message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_dns::wire::{self, build_query, rtype};
use service_dns::{DnsConfig, Transport, Zone};

fuzz_target!(|data: &[u8]| {
    let query = build_query(0x1234, "www.example.com", rtype::A);
    let _ = wire::reply_matches(data, &query);
    for (limit, edns) in [(512, false), (1232, true)] {
        let mut reply = data.to_vec();
        wire::fit_reply(&mut reply, limit, edns);
        assert!(reply.len() <= limit, "{} > {limit}", reply.len());
    }
    if data.len() >= 2 {
        let id = u16::from_be_bytes([data[0], data[1]]);
        if let Some(records) = wire::parse_answers(data, id) {
            for r in &records {
                assert!(r.name.len() <= 255 + 63);
            }
            // Chased into an answer for an ExternalName: a well-formed message.
            let zone = Zone::new(DnsConfig::default());
            let mut out = Vec::new();
            zone.view()
                .respond_chased(&query, &mut out, Transport::Udp, &records);
            if !out.is_empty() {
                assert!(out.len() >= 12 && out.len() <= 512, "{}", out.len());
                assert_eq!(&out[..2], &query[..2]);
            }
        }
    }
    let _ = wire::read_name(data, 0);
});
