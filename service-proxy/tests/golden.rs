//! Golden files: what each backend renders for each fixture, reviewed by hand.
//! A fixture's first line names the node: `# node: NAME IP[,IP] cluster-cidr CIDR[,CIDR]`.

use service_core::snapshot::Snapshot;
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

/// For every fixture: the node's settings and snapshot, rendered by `render` for IPv4 and,
/// when the node has an IPv6 address, after `separator` for IPv6; compared with the
/// snapshot called `name`.
fn goldens(name: &str, separator: &str, render: impl Fn(&ProxyConfig, &Snapshot, bool) -> String) {
    insta::glob!("fixtures/*.yaml", |path| {
        let yaml = std::fs::read_to_string(path).unwrap();
        let node = node_line(&yaml);
        let ips: Vec<&str> = node.ips.iter().map(String::as_str).collect();
        let snapshot = fixtures::snapshot(&yaml, &node.name, &ips);
        let mut proxy = ProxyConfig::default();
        proxy.cluster_cidrs = node.cidrs.iter().map(|c| c.parse().unwrap()).collect();
        proxy.local_addresses = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        let mut out = render(&proxy, &snapshot, false);
        if ips.iter().any(|ip| ip.contains(':')) {
            out.push_str(separator);
            out.push_str(&render(&proxy, &snapshot, true));
        }
        insta::assert_snapshot!(name, out);
    });
}

#[test]
fn iptables_goldens() {
    goldens(
        "iptables",
        "# ---- ip6tables ----\n",
        |proxy, snapshot, ipv6| {
            Renderer::new(IptablesConfig::new(proxy.clone()), ipv6)
                .full(snapshot)
                .to_restore_input()
        },
    );
}

#[test]
#[cfg(feature = "nftables")]
fn nftables_goldens() {
    use service_proxy::nftables::{NftablesConfig, Renderer as NftRenderer};
    goldens("nftables", "# ---- ip6 ----\n", |proxy, snapshot, ipv6| {
        NftRenderer::new(NftablesConfig::new(proxy.clone()), ipv6)
            .render(snapshot)
            .create_one()
            .to_string()
    });
}

#[test]
#[cfg(feature = "ipvs")]
fn ipvs_goldens() {
    use service_proxy::ipvs::{IpvsConfig, IpvsPlan, ipvs_text};
    goldens("ipvs", "# ---- IPv6 ----\n", |proxy, snapshot, ipv6| {
        let config = IpvsConfig::new(proxy.clone());
        ipvs_text(&IpvsPlan::build(&config, snapshot, ipv6), &config, ipv6)
    });
}
