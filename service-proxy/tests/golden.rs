//! Golden files: the rendered iptables-restore input for each fixture, reviewed by hand.
//! A fixture's first line names the node: `# node: NAME IP[,IP] cluster-cidr CIDR[,CIDR]`.

use service_proxy::ProxyConfig;
use service_proxy::iptables::{IptablesConfig, Renderer};
use service_testkit::fixtures;

struct Node {
    name: String,
    ips: Vec<String>,
    cidrs: Vec<String>,
}

fn node_line(yaml: &str) -> Node {
    let line = yaml.lines().next().unwrap_or_default();
    let words: Vec<&str> = line
        .trim_start_matches("# node:")
        .split_whitespace()
        .collect();
    assert!(
        words.len() == 4 && words[2] == "cluster-cidr",
        "bad node line: {line}"
    );
    Node {
        name: words[0].to_owned(),
        ips: words[1].split(',').map(str::to_owned).collect(),
        cidrs: words[3].split(',').map(str::to_owned).collect(),
    }
}

#[test]
fn iptables_goldens() {
    insta::glob!("fixtures/*.yaml", |path| {
        let yaml = std::fs::read_to_string(path).unwrap();
        let node = node_line(&yaml);
        let ips: Vec<&str> = node.ips.iter().map(String::as_str).collect();
        let snapshot = fixtures::snapshot(&yaml, &node.name, &ips);
        let mut proxy = ProxyConfig::default();
        proxy.cluster_cidrs = node.cidrs.iter().map(|c| c.parse().unwrap()).collect();
        proxy.local_addresses = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        let mut out = Renderer::new(IptablesConfig::new(proxy.clone()), false)
            .full(&snapshot)
            .to_restore_input();
        if ips.iter().any(|ip| ip.contains(':')) {
            out.push_str("# ---- ip6tables ----\n");
            out.push_str(
                &Renderer::new(IptablesConfig::new(proxy), true)
                    .full(&snapshot)
                    .to_restore_input(),
            );
        }
        insta::assert_snapshot!("iptables", out);
    });
}

#[test]
fn nftables_goldens() {
    use service_proxy::nftables::{NftablesConfig, Renderer as NftRenderer};
    insta::glob!("fixtures/*.yaml", |path| {
        let yaml = std::fs::read_to_string(path).unwrap();
        let node = node_line(&yaml);
        let ips: Vec<&str> = node.ips.iter().map(String::as_str).collect();
        let snapshot = fixtures::snapshot(&yaml, &node.name, &ips);
        let mut proxy = ProxyConfig::default();
        proxy.cluster_cidrs = node.cidrs.iter().map(|c| c.parse().unwrap()).collect();
        proxy.local_addresses = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        let mut out = NftRenderer::new(NftablesConfig::new(proxy.clone()), false)
            .render(&snapshot)
            .create_one()
            .to_string();
        if ips.iter().any(|ip| ip.contains(':')) {
            out.push_str("# ---- ip6 ----\n");
            out.push_str(
                &NftRenderer::new(NftablesConfig::new(proxy), true)
                    .render(&snapshot)
                    .create_one()
                    .to_string(),
            );
        }
        insta::assert_snapshot!("nftables", out);
    });
}

#[test]
fn ipvs_goldens() {
    use service_proxy::ipvs::{IpvsConfig, IpvsPlan, ipvs_text};
    insta::glob!("fixtures/*.yaml", |path| {
        let yaml = std::fs::read_to_string(path).unwrap();
        let node = node_line(&yaml);
        let ips: Vec<&str> = node.ips.iter().map(String::as_str).collect();
        let snapshot = fixtures::snapshot(&yaml, &node.name, &ips);
        let mut proxy = ProxyConfig::default();
        proxy.cluster_cidrs = node.cidrs.iter().map(|c| c.parse().unwrap()).collect();
        proxy.local_addresses = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        let config = IpvsConfig::new(proxy);
        let mut out = ipvs_text(&IpvsPlan::build(&config, &snapshot, false), &config, false);
        if ips.iter().any(|ip| ip.contains(':')) {
            out.push_str("# ---- IPv6 ----\n");
            out.push_str(&ipvs_text(
                &IpvsPlan::build(&config, &snapshot, true),
                &config,
                true,
            ));
        }
        insta::assert_snapshot!("ipvs", out);
    });
}
