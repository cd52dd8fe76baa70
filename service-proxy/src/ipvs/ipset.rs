//! Keeping the ipsets of IPVS mode in step with a plan (kube-proxy's `syncIPSetEntries`):
//! read what `ipset save` shows of our sets, and write one `ipset restore` input that
//! creates missing sets and adds and deletes entries. Pure: running `ipset` is the
//! applier's job.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::plan::{IpSet, IpvsPlan};

/// An entry as `ipset save` prints it: host prefixes (`/32`, `/128`) are left out.
pub fn normalize(entry: &str) -> String {
    entry
        .split(',')
        .map(|part| {
            part.strip_suffix("/32")
                .filter(|p| p.contains('.'))
                .or_else(|| part.strip_suffix("/128").filter(|p| p.contains(':')))
                .unwrap_or(part)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The sets in `ipset save` output and their entries.
pub fn parse_save(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("create"), Some(name), _) => {
                out.entry(name.to_owned()).or_default();
            }
            (Some("add"), Some(name), Some(entry)) => {
                out.entry(name.to_owned())
                    .or_default()
                    .insert(entry.to_owned());
            }
            _ => {}
        }
    }
    out
}

/// This family's sets as the plan wants them, named and normalized as `ipset save` shows
/// them ([`parse_save`]): the target of [`restore_input`], and what the kernel holds once
/// that restore went through (the next sync can diff against it without reading).
pub fn wanted(plan: &IpvsPlan, ipv6: bool) -> BTreeMap<String, BTreeSet<String>> {
    IpSet::ALL
        .iter()
        .map(|set| {
            let entries = plan
                .ipsets
                .get(set)
                .map(|e| e.iter().map(|e| normalize(e)).collect())
                .unwrap_or_default();
            (set.name_for(ipv6), entries)
        })
        .collect()
}

/// `ipset -exist restore` input that brings our sets from `current` (as parsed from
/// `ipset save`) to `wanted` (from [`wanted`]); empty when nothing changes.
pub fn restore_input(
    wanted: &BTreeMap<String, BTreeSet<String>>,
    ipv6: bool,
    current: &BTreeMap<String, BTreeSet<String>>,
) -> String {
    let mut out = String::new();
    let empty = BTreeSet::new();
    for set in IpSet::ALL {
        let name = set.name_for(ipv6);
        let want = wanted.get(&name).unwrap_or(&empty);
        let have = match current.get(&name) {
            Some(have) => have,
            None => {
                let _ = writeln!(out, "create {name} {}", set.create_args(ipv6));
                &empty
            }
        };
        for e in have.difference(want) {
            let _ = writeln!(out, "del {name} {e}");
        }
        for e in want.difference(have) {
            let _ = writeln!(out, "add {name} {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_differences_are_written_and_missing_sets_created() {
        let mut plan = IpvsPlan::default();
        plan.ipsets.insert(
            IpSet::ClusterIp,
            ["10.96.0.1,tcp:443", "10.96.0.10,udp:53"]
                .map(String::from)
                .into(),
        );
        plan.ipsets.insert(
            IpSet::LoadBalancerSourceCidr,
            ["203.0.113.7,tcp:80,192.0.2.1/32".to_owned()].into(),
        );
        let saved = "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n\
                     add KUBE-CLUSTER-IP 10.96.0.1,tcp:443\n\
                     add KUBE-CLUSTER-IP 10.96.0.2,tcp:80\n\
                     create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet hashsize 1024 maxelem 65536\n\
                     add KUBE-LOAD-BALANCER-SOURCE-CIDR 203.0.113.7,tcp:80,192.0.2.1\n";
        let current = parse_save(saved);
        let input = restore_input(&wanted(&plan, false), false, &current);
        let lines: Vec<&str> = input.lines().collect();
        assert!(lines.contains(&"del KUBE-CLUSTER-IP 10.96.0.2,tcp:80"));
        assert!(lines.contains(&"add KUBE-CLUSTER-IP 10.96.0.10,udp:53"));
        // The /32 source is the entry ipset already shows.
        assert!(!input.contains("SOURCE-CIDR 203"));
        assert!(lines.contains(&"create KUBE-NODE-PORT-TCP bitmap:port range 0-65535"));
        assert!(!input.contains("create KUBE-CLUSTER-IP"));
        // Every set is created; nothing else is written.
        assert_eq!(lines.len(), 2 + IpSet::ALL.len() - 2);
    }

    #[test]
    fn ipv6_sets_have_their_own_names() {
        let input = restore_input(&wanted(&IpvsPlan::default(), true), true, &BTreeMap::new());
        assert!(input.contains(
            "create KUBE-6-CLUSTER-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536"
        ));
        assert_eq!(
            normalize("fd00::1,tcp:80,fd00::5/128"),
            "fd00::1,tcp:80,fd00::5"
        );
    }

    /// kube-proxy's `NewIPSet` (pkg/proxy/ipvs/ipset.go) cuts IPv6 set names to ipset's
    /// 31 characters, so one IPv6 set loses the last letter of its name.
    #[test]
    fn one_ipv6_set_name_is_cut_to_31_characters() {
        assert_eq!(
            IpSet::LoadBalancerSourceCidr.name_for(true),
            "KUBE-6-LOAD-BALANCER-SOURCE-CID"
        );
        assert_eq!(
            IpSet::LoadBalancerSourceCidr.name_for(false),
            "KUBE-LOAD-BALANCER-SOURCE-CIDR"
        );
        for set in IpSet::ALL {
            assert!(set.name_for(true).len() <= 31, "{set:?}");
        }
    }

    /// What a restore leaves is what the next diff starts from, so the wanted sets are
    /// written as `ipset save` shows them: every set of the family under its name, /32
    /// sources without their suffix.
    #[test]
    fn wanted_sets_read_as_ipset_save_shows_them() {
        let mut plan = IpvsPlan::default();
        plan.ipsets.insert(
            IpSet::LoadBalancerSourceCidr,
            ["203.0.113.7,tcp:80,192.0.2.1/32".to_owned()].into(),
        );
        plan.ipsets
            .insert(IpSet::ClusterIp, ["10.96.0.1,tcp:443".to_owned()].into());
        for ipv6 in [false, true] {
            let sets = wanted(&plan, ipv6);
            assert_eq!(sets.len(), IpSet::ALL.len());
            let saved = |set: IpSet| sets[&set.name_for(ipv6)].iter().collect::<Vec<_>>();
            assert_eq!(
                saved(IpSet::LoadBalancerSourceCidr),
                ["203.0.113.7,tcp:80,192.0.2.1"]
            );
            assert_eq!(saved(IpSet::ClusterIp), ["10.96.0.1,tcp:443"]);
            assert!(saved(IpSet::LoopBack).is_empty());
        }
    }
}
