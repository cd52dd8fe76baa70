//! Arbitrary bytes as what the kernel answers on the IPVS generic-netlink socket: parsing
//! must never panic, and every virtual server it reads must encode again and read back the
//! same (the applier sends what it read when it deletes one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use service_proxy::ipvs::genl::{self, Command, Reply};

const FAMILY: u16 = 0x1c;

fuzz_target!(|data: &[u8]| {
    for reply in genl::parse_replies(data, FAMILY) {
        match reply {
            Reply::Service(vs) => {
                let again = genl::service_message(FAMILY, 1, Command::NewService, &vs);
                assert_eq!(
                    genl::parse_replies(&again, FAMILY),
                    vec![Reply::Service(vs)]
                );
            }
            _ => {}
        }
    }
});
