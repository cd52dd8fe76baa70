//! The node settings kube-proxy makes before it syncs (feature `apply`): the conntrack
//! table's size and timeouts (`KubeProxyConfiguration.conntrack`) and `route_localnet`
//! for node ports on `127.0.0.1` (iptables mode). Each setting is written only when the
//! kernel holds another value; each failure is reported with the file it concerns, and the
//! others are still made (a container with a read-only `/sys`, a network namespace where
//! `nf_conntrack_max` belongs to the host).
//!
//! Network sysctls are per network namespace: the settings apply to the namespace the
//! process is in.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// kube-proxy's `conntrack` settings, with its defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConntrackConfig {
    /// Entries per CPU (`maxPerCore`, default 32768); 0 leaves the limit alone.
    pub max_per_core: u32,
    /// The least limit whatever the CPU count (`min`, default 131072).
    pub min: u32,
    /// `tcpEstablishedTimeout` (default 24 h); zero leaves it alone.
    pub tcp_established_timeout: Duration,
    /// `tcpCloseWaitTimeout` (default 1 h); zero leaves it alone.
    pub tcp_close_wait_timeout: Duration,
    /// `tcpBeLiberal` (default false): only `true` is written.
    pub tcp_be_liberal: bool,
    /// `udpTimeout` (default 0: leave it alone).
    pub udp_timeout: Duration,
    /// `udpStreamTimeout` (default 0: leave it alone).
    pub udp_stream_timeout: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            max_per_core: 32_768,
            min: 131_072,
            tcp_established_timeout: Duration::from_secs(24 * 3600),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

impl ConntrackConfig {
    /// The table size to ask for on a machine with `cpus` CPUs (`None`: leave it).
    pub fn max(&self, cpus: usize) -> Option<u64> {
        (self.max_per_core > 0)
            .then(|| (u64::from(self.max_per_core) * cpus as u64).max(u64::from(self.min)))
    }
}

/// One setting made, or not.
#[derive(Debug)]
#[non_exhaustive]
pub struct Setting {
    /// The file.
    pub path: PathBuf,
    /// The value written (or that was to be written).
    pub value: String,
    /// `Ok(true)` written, `Ok(false)` already so, or why it could not be written.
    pub outcome: io::Result<bool>,
}

/// Writes `value` to `path` unless the file holds it already (or, with `only_raise`, a
/// larger number).
fn set(root: &Path, file: &str, value: String, only_raise: bool) -> Setting {
    let path = root.join(file);
    let outcome = (|| {
        let current = std::fs::read_to_string(&path)?;
        let current = current.trim();
        if current == value {
            return Ok(false);
        }
        if only_raise
            && let (Ok(c), Ok(v)) = (current.parse::<u64>(), value.parse::<u64>())
            && c >= v
        {
            return Ok(false);
        }
        std::fs::write(&path, &value)?;
        Ok(true)
    })();
    Setting {
        path,
        value,
        outcome,
    }
}

/// Where `/proc/sys` and `/sys` are (tests point them elsewhere).
#[derive(Clone, Debug)]
pub struct Roots {
    /// `/proc/sys`.
    pub proc_sys: PathBuf,
    /// `/sys`.
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc_sys: "/proc/sys".into(),
            sys: "/sys".into(),
        }
    }
}

/// Applies the conntrack settings for a machine with `cpus` CPUs, as kube-proxy does: the
/// table limit (`nf_conntrack_max`, and the hash table at a quarter of it, both only
/// raised), then each timeout that is not zero.
pub fn conntrack(config: &ConntrackConfig, cpus: usize, roots: &Roots) -> Vec<Setting> {
    let mut out = Vec::new();
    let nf = |name: &str| format!("net/netfilter/{name}");
    if let Some(max) = config.max(cpus) {
        out.push(set(
            &roots.proc_sys,
            &nf("nf_conntrack_max"),
            max.to_string(),
            false,
        ));
        out.push(set(
            &roots.sys,
            "module/nf_conntrack/parameters/hashsize",
            (max / 4).to_string(),
            true,
        ));
    }
    let timeouts = [
        (
            "nf_conntrack_tcp_timeout_established",
            config.tcp_established_timeout,
        ),
        (
            "nf_conntrack_tcp_timeout_close_wait",
            config.tcp_close_wait_timeout,
        ),
        ("nf_conntrack_udp_timeout", config.udp_timeout),
        ("nf_conntrack_udp_timeout_stream", config.udp_stream_timeout),
    ];
    for (name, timeout) in timeouts {
        if !timeout.is_zero() {
            out.push(set(
                &roots.proc_sys,
                &nf(name),
                timeout.as_secs().to_string(),
                false,
            ));
        }
    }
    if config.tcp_be_liberal {
        out.push(set(
            &roots.proc_sys,
            &nf("nf_conntrack_tcp_be_liberal"),
            "1".into(),
            false,
        ));
    }
    out
}

/// `net.ipv4.conf.all.route_localnet=1`: what node ports on `127.0.0.1` need in iptables
/// mode (kube-proxy sets it when `localhostNodePorts` is on).
pub fn route_localnet(roots: &Roots) -> Setting {
    set(
        &roots.proc_sys,
        "net/ipv4/conf/all/route_localnet",
        "1".into(),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_roots(tag: &str) -> (Roots, PathBuf) {
        let base = std::env::temp_dir().join(format!("node-setup-{}-{tag}", std::process::id()));
        let roots = Roots {
            proc_sys: base.join("proc/sys"),
            sys: base.join("sys"),
        };
        let nf = roots.proc_sys.join("net/netfilter");
        std::fs::create_dir_all(&nf).unwrap();
        std::fs::create_dir_all(roots.sys.join("module/nf_conntrack/parameters")).unwrap();
        std::fs::create_dir_all(roots.proc_sys.join("net/ipv4/conf/all")).unwrap();
        for (f, v) in [
            ("nf_conntrack_max", "65536"),
            ("nf_conntrack_tcp_timeout_established", "432000"),
            ("nf_conntrack_tcp_timeout_close_wait", "3600"),
        ] {
            std::fs::write(nf.join(f), format!("{v}\n")).unwrap();
        }
        std::fs::write(
            roots.sys.join("module/nf_conntrack/parameters/hashsize"),
            "262144\n",
        )
        .unwrap();
        std::fs::write(
            roots.proc_sys.join("net/ipv4/conf/all/route_localnet"),
            "0\n",
        )
        .unwrap();
        (roots, base)
    }

    #[test]
    fn writes_what_differs_and_reports_what_it_cannot() {
        let (roots, base) = fake_roots("conntrack");
        let settings = conntrack(&ConntrackConfig::default(), 2, &roots);
        let by_file = |name: &str| {
            settings
                .iter()
                .find(|s| s.path.ends_with(name))
                .unwrap_or_else(|| panic!("{name}"))
        };
        // max(32768 × 2, 131072).
        assert_eq!(by_file("nf_conntrack_max").value, "131072");
        assert!(matches!(by_file("nf_conntrack_max").outcome, Ok(true)));
        // The hash table is only ever raised (262144 > 131072 / 4).
        assert!(matches!(by_file("hashsize").outcome, Ok(false)));
        assert!(matches!(
            by_file("nf_conntrack_tcp_timeout_established").outcome,
            Ok(true)
        ));
        assert!(matches!(
            by_file("nf_conntrack_tcp_timeout_close_wait").outcome,
            Ok(false)
        ));
        let read = |p: &str| std::fs::read_to_string(roots.proc_sys.join(p)).unwrap();
        assert_eq!(
            read("net/netfilter/nf_conntrack_tcp_timeout_established"),
            "86400"
        );
        // Zero timeouts are left alone; a missing file is an error naming it.
        let mut c = ConntrackConfig::default();
        c.udp_timeout = Duration::from_secs(30);
        let s = conntrack(&c, 2, &roots);
        let udp = s
            .iter()
            .find(|s| s.path.ends_with("nf_conntrack_udp_timeout"))
            .unwrap();
        assert_eq!(
            udp.outcome.as_ref().unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(matches!(route_localnet(&roots).outcome, Ok(true)));
        assert!(matches!(route_localnet(&roots).outcome, Ok(false)));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn max_per_core_zero_leaves_the_limit() {
        let mut c = ConntrackConfig::default();
        assert_eq!(c.max(8), Some(262_144));
        c.max_per_core = 0;
        assert_eq!(c.max(8), None);
    }
}
