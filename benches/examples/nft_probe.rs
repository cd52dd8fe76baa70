//! Loads N services × 10 endpoints into a namespace's nftables over netlink, then times
//! small transactions of different kinds (to find what the kernel spends time on).
//! Run as root: `cargo run --release -p service-benches --example nft_probe -- 10000 NETNS`.

use std::time::Instant;

use service_proxy::nftables::apply::NftSocket;
use service_proxy::nftables::{
    Chain, Element, FixedSet, Key, L4, NftablesConfig, Op, Renderer, Rule, Stmt, Transaction,
    Verdict,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let ns = args.next().unwrap_or_else(|| "nftprobe".into());
    let mut socket =
        NftSocket::in_netns(std::path::Path::new(&format!("/run/netns/{ns}"))).expect("socket");
    let snap = service_benches::snapshot(services, 10);
    let proxy = service_benches::proxy_config();
    let rules = Renderer::new(NftablesConfig::new(proxy), false).render(&snap);
    let t = Instant::now();
    for tx in rules.create(20_000) {
        let t1 = Instant::now();
        socket.apply(&[&tx]).expect("load");
        eprint!("{:?} ", t1.elapsed());
    }
    println!("\nloaded in {:?}", t.elapsed());
    let family = rules.family;
    // The bench's one change (one endpoint address of one Service), both ways.
    {
        let (before, after, changed) = service_benches::one_change(services, 10);
        let renderer = Renderer::new(NftablesConfig::new(service_benches::proxy_config()), false);
        let mut state = renderer.render(&before);
        for (i, snap) in [&after, &before, &after, &before].into_iter().enumerate() {
            let u = renderer.update(&mut state, snap, Some(&changed));
            if i == 0 {
                println!("one change:\n{}", u.transaction);
            }
            let t = Instant::now();
            socket.apply(&[&u.transaction]).expect("one change");
            println!(
                "one change ({} ops): {:?}",
                u.transaction.ops.len(),
                t.elapsed()
            );
        }
    }
    let time = |socket: &mut NftSocket, what: &str, ops: Vec<Op>| {
        let tx = Transaction { family, ops };
        let t = Instant::now();
        socket.apply(&[&tx]).expect(what);
        println!("{what}: {:?}", t.elapsed());
    };
    let drop_elem = Element {
        set: FixedSet::NoEndpointServices,
        key: Key::AddrProtoPort("1.1.1.1".parse().unwrap(), L4::Tcp, 80),
        data: Some(Verdict::Drop.into()),
    };
    time(
        &mut socket,
        "add element (drop verdict)",
        vec![Op::AddElement(drop_elem.clone())],
    );
    time(
        &mut socket,
        "delete element",
        vec![Op::DeleteElement(drop_elem)],
    );
    let goto_elem = Element {
        set: FixedSet::ServiceIps,
        key: Key::AddrProtoPort("1.1.1.1".parse().unwrap(), L4::Tcp, 80),
        data: Some(Verdict::Goto("reject-chain".into()).into()),
    };
    time(
        &mut socket,
        "add element (goto verdict)",
        vec![Op::AddElement(goto_elem.clone())],
    );
    time(
        &mut socket,
        "delete element (goto)",
        vec![Op::DeleteElement(goto_elem)],
    );
    let mut c = Chain::new("probe");
    c.rules.push(Rule::new([Stmt::Verdict(Verdict::Accept)]));
    let c = std::sync::Arc::new(c);
    time(
        &mut socket,
        "add chain + accept rule",
        vec![Op::AddChain(c.clone()), Op::AddRules(c)],
    );
    let mut j = Chain::new("probe");
    j.rules.push(Rule::new([Stmt::Verdict(Verdict::Jump(
        "reject-chain".into(),
    ))]));
    time(
        &mut socket,
        "add jump rule",
        vec![Op::AddRules(std::sync::Arc::new(j))],
    );
    time(
        &mut socket,
        "flush + delete chain",
        vec![
            Op::FlushChain("probe".into()),
            Op::DeleteChain("probe".into()),
        ],
    );
}
