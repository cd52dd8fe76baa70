//! `--config FILE`: kube-proxy's `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`)
//! in YAML or JSON, and `--write-config-to FILE`.
//!
//! Every field kube-proxy 1.33 knows is accepted, with its name and type; the ones this
//! proxy does not act on (`clientConnection`, `featureGates`, `oomScoreAdj`, `winkernel`,
//! ...) are reported by [`KubeProxyConfiguration::ignored`] so the daemon can say so. A
//! field kube-proxy does not know is an error naming its path (`iptables.syncPeriod2`), as
//! kube-proxy's strict decoding does. Durations are Go's (`30s`, `1h0m0s`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `apiVersion` kube-proxy reads.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";

/// A Go duration (`30s`, `1h0m0s`, `100ms`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// Seconds.
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

/// Go's `time.Duration.String()`.
pub fn format_go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_secs(1) {
        let ns = d.as_nanos();
        return if ns < 1_000 {
            format!("{ns}ns")
        } else if ns < 1_000_000 {
            trim(format!("{}.{:03}", ns / 1_000, ns % 1_000), "µs")
        } else {
            trim(format!("{}.{:06}", ns / 1_000_000, ns % 1_000_000), "ms")
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let frac = d.subsec_nanos();
    let seconds = trim(format!("{s}.{frac:09}"), "s");
    if h > 0 {
        format!("{h}h{m}m{seconds}")
    } else if m > 0 {
        format!("{m}m{seconds}")
    } else {
        seconds
    }
}

fn trim(number: String, unit: &str) -> String {
    let n = number.trim_end_matches('0').trim_end_matches('.');
    format!("{n}{unit}")
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_go_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_go_duration(&text)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a Go duration: a sequence of decimal numbers with units `ns`, `us`, `µs`, `ms`,
/// `s`, `m`, `h` (`1h30m`, `1.5s`, `0`).
///
/// # Errors
/// Not such a duration, or a negative one.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (like 30s, 1h0m0s, 100ms)");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() || text.starts_with('-') {
        return Err(bad());
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    let mut total = 0f64;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..n_end].parse().map_err(|_| bad())?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[u_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// `iptables` and `nftables` sections.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RulesSection {
    /// `masqueradeBit` (default 14).
    #[serde(default)]
    pub masquerade_bit: Option<i32>,
    /// `masqueradeAll`.
    #[serde(default)]
    pub masquerade_all: bool,
    /// `localhostNodePorts` (iptables only; default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localhost_node_ports: Option<bool>,
    /// `syncPeriod` (default 30s).
    #[serde(default)]
    pub sync_period: GoDuration,
    /// `minSyncPeriod` (default 1s).
    #[serde(default)]
    pub min_sync_period: GoDuration,
}

/// The `ipvs` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpvsSection {
    /// `syncPeriod` (default 30s).
    #[serde(default)]
    pub sync_period: GoDuration,
    /// `minSyncPeriod` (default 0s).
    #[serde(default)]
    pub min_sync_period: GoDuration,
    /// `scheduler` (empty: rr).
    #[serde(default)]
    pub scheduler: String,
    /// `excludeCIDRs`.
    #[serde(default, rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    /// `strictARP`.
    #[serde(default, rename = "strictARP")]
    pub strict_arp: bool,
    /// `tcpTimeout` (0: the kernel's).
    #[serde(default)]
    pub tcp_timeout: GoDuration,
    /// `tcpFinTimeout`.
    #[serde(default)]
    pub tcp_fin_timeout: GoDuration,
    /// `udpTimeout`.
    #[serde(default)]
    pub udp_timeout: GoDuration,
}

/// The `conntrack` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConntrackSection {
    /// `maxPerCore` (default 32768; 0 leaves the limit).
    #[serde(default)]
    pub max_per_core: Option<i32>,
    /// `min` (default 131072).
    #[serde(default)]
    pub min: Option<i32>,
    /// `tcpEstablishedTimeout` (default 24h).
    #[serde(default)]
    pub tcp_established_timeout: Option<GoDuration>,
    /// `tcpCloseWaitTimeout` (default 1h).
    #[serde(default)]
    pub tcp_close_wait_timeout: Option<GoDuration>,
    /// `tcpBeLiberal`.
    #[serde(default)]
    pub tcp_be_liberal: bool,
    /// `udpTimeout`.
    #[serde(default)]
    pub udp_timeout: GoDuration,
    /// `udpStreamTimeout`.
    #[serde(default)]
    pub udp_stream_timeout: GoDuration,
}

/// The `detectLocal` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetectLocalSection {
    /// `bridgeInterface`.
    #[serde(default)]
    pub bridge_interface: String,
    /// `interfaceNamePrefix`.
    #[serde(default)]
    pub interface_name_prefix: String,
}

/// The `logging` section (component-base's `LoggingConfiguration`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoggingSection {
    /// `format`: `text` or `json`.
    #[serde(default)]
    pub format: String,
    /// `verbosity`.
    #[serde(default)]
    pub verbosity: u32,
    /// `flushFrequency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_frequency: Option<serde_json::Value>,
    /// `vmodule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmodule: Option<serde_json::Value>,
    /// `options`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Value>,
}

/// kube-proxy's configuration file. See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeProxyConfiguration {
    /// `kubeproxy.config.k8s.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// `KubeProxyConfiguration`.
    #[serde(default)]
    pub kind: String,
    /// `bindAddress`: picks the primary family (an IPv6 address makes IPv6 primary).
    #[serde(default)]
    pub bind_address: String,
    /// `healthzBindAddress` (`0.0.0.0:10256`; empty disables).
    #[serde(default)]
    pub healthz_bind_address: String,
    /// `metricsBindAddress` (`127.0.0.1:10249`; empty disables).
    #[serde(default)]
    pub metrics_bind_address: String,
    /// `hostnameOverride`.
    #[serde(default)]
    pub hostname_override: String,
    /// `mode`: `iptables` (default), `ipvs`, `nftables`.
    #[serde(default)]
    pub mode: String,
    /// `clusterCIDR` (a comma-separated pair for dual-stack).
    #[serde(default, rename = "clusterCIDR")]
    pub cluster_cidr: String,
    /// `nodePortAddresses`.
    #[serde(default)]
    pub node_port_addresses: Option<Vec<String>>,
    /// `detectLocalMode`: `ClusterCIDR` (or empty), `NodeCIDR`, `BridgeInterface`,
    /// `InterfaceNamePrefix`.
    #[serde(default)]
    pub detect_local_mode: String,
    /// `detectLocal`.
    #[serde(default)]
    pub detect_local: DetectLocalSection,
    /// `iptables`.
    #[serde(default)]
    pub iptables: RulesSection,
    /// `ipvs`.
    #[serde(default)]
    pub ipvs: IpvsSection,
    /// `nftables`.
    #[serde(default)]
    pub nftables: RulesSection,
    /// `conntrack`.
    #[serde(default)]
    pub conntrack: ConntrackSection,
    /// `logging`.
    #[serde(default)]
    pub logging: LoggingSection,
    // Known to kube-proxy, not acted on here (see `ignored`).
    /// `clientConnection` (ignored: this proxy reads manifest files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_connection: Option<serde_json::Value>,
    /// `featureGates` (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_gates: Option<BTreeMap<String, bool>>,
    /// `bindAddressHardFail` (ignored: a bind failure always stops the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_address_hard_fail: Option<bool>,
    /// `enableProfiling` (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_profiling: Option<bool>,
    /// `showHiddenMetricsForVersion` (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_hidden_metrics_for_version: Option<String>,
    /// `oomScoreAdj` (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    /// `configSyncPeriod` (ignored: files are followed with inotify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sync_period: Option<GoDuration>,
    /// `portRange` (ignored, as in kube-proxy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<String>,
    /// `winkernel` (ignored: Linux only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winkernel: Option<serde_json::Value>,
    /// `windowsRunAsService` (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows_run_as_service: Option<bool>,
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It is not YAML or JSON.
    #[error("{file}: not YAML or JSON: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// A field is unknown or of the wrong type.
    #[error("{file}: {path}: {message}")]
    Field {
        /// The file.
        file: String,
        /// Where, as `iptables.syncPeriod` (`.` for the document).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// It is not a `KubeProxyConfiguration` of `kubeproxy.config.k8s.io/v1alpha1`.
    #[error("{file}: {message}")]
    Kind {
        /// The file.
        file: String,
        /// What it is instead.
        message: String,
    },
}

impl KubeProxyConfiguration {
    /// kube-proxy's defaults (what `--write-config-to` writes with no flags).
    pub fn defaults() -> Self {
        let mut c = Self {
            api_version: API_VERSION.into(),
            kind: "KubeProxyConfiguration".into(),
            bind_address: "0.0.0.0".into(),
            healthz_bind_address: "0.0.0.0:10256".into(),
            metrics_bind_address: "127.0.0.1:10249".into(),
            mode: "iptables".into(),
            ..Self::default()
        };
        for section in [&mut c.iptables, &mut c.nftables] {
            section.masquerade_bit = Some(14);
            section.sync_period = GoDuration::secs(30);
            section.min_sync_period = GoDuration::secs(1);
        }
        c.iptables.localhost_node_ports = Some(true);
        c.ipvs.sync_period = GoDuration::secs(30);
        c.conntrack.max_per_core = Some(32_768);
        c.conntrack.min = Some(131_072);
        c.conntrack.tcp_established_timeout = Some(GoDuration::secs(24 * 3600));
        c.conntrack.tcp_close_wait_timeout = Some(GoDuration::secs(3600));
        c.logging.format = "text".into();
        c
    }

    /// Reads a configuration (YAML or JSON) strictly. Fields left out keep kube-proxy's
    /// defaults.
    ///
    /// # Errors
    /// The text does not parse, a field is unknown (with its path) or mistyped, or the
    /// document is not a `KubeProxyConfiguration`.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
                file: file.into(),
                message: e.to_string(),
            })?;
        let mut parsed: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Field {
                file: file.into(),
                path,
                message: e.into_inner().to_string(),
            }
        })?;
        if parsed.api_version != API_VERSION || parsed.kind != "KubeProxyConfiguration" {
            return Err(ConfigError::Kind {
                file: file.into(),
                message: format!(
                    "apiVersion {:?}, kind {:?}: a KubeProxyConfiguration of {API_VERSION} is expected",
                    parsed.api_version, parsed.kind
                ),
            });
        }
        parsed.fill_defaults();
        Ok(parsed)
    }

    /// kube-proxy's defaulting of what a file left out.
    fn fill_defaults(&mut self) {
        let d = Self::defaults();
        let fill = |s: &mut String, v: &str| {
            if s.is_empty() {
                v.clone_into(s);
            }
        };
        fill(&mut self.bind_address, &d.bind_address);
        if self.healthz_bind_address.is_empty() {
            self.healthz_bind_address = if self.bind_address.contains(':') {
                "[::]:10256".into()
            } else {
                d.healthz_bind_address.clone()
            };
        }
        if self.metrics_bind_address.is_empty() {
            self.metrics_bind_address = if self.bind_address.contains(':') {
                "[::1]:10249".into()
            } else {
                d.metrics_bind_address.clone()
            };
        }
        fill(&mut self.mode, &d.mode);
        fill(&mut self.logging.format, "text");
        for (section, default) in [
            (&mut self.iptables, &d.iptables),
            (&mut self.nftables, &d.nftables),
        ] {
            section.masquerade_bit.get_or_insert(14);
            if section.sync_period.0.is_zero() {
                section.sync_period = default.sync_period;
            }
            if section.min_sync_period.0.is_zero() {
                section.min_sync_period = default.min_sync_period;
            }
        }
        self.iptables.localhost_node_ports.get_or_insert(true);
        if self.ipvs.sync_period.0.is_zero() {
            self.ipvs.sync_period = d.ipvs.sync_period;
        }
        self.conntrack.max_per_core.get_or_insert(32_768);
        self.conntrack.min.get_or_insert(131_072);
        self.conntrack
            .tcp_established_timeout
            .get_or_insert(GoDuration::secs(24 * 3600));
        self.conntrack
            .tcp_close_wait_timeout
            .get_or_insert(GoDuration::secs(3600));
    }

    /// The fields set that this proxy does not act on, by path.
    pub fn ignored(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut note = |set: bool, path| {
            if set {
                out.push(path);
            }
        };
        note(self.client_connection.is_some(), "clientConnection");
        note(
            self.feature_gates.as_ref().is_some_and(|g| !g.is_empty()),
            "featureGates",
        );
        note(self.bind_address_hard_fail.is_some(), "bindAddressHardFail");
        note(self.enable_profiling == Some(true), "enableProfiling");
        note(
            self.show_hidden_metrics_for_version.is_some(),
            "showHiddenMetricsForVersion",
        );
        note(self.oom_score_adj.is_some(), "oomScoreAdj");
        note(self.config_sync_period.is_some(), "configSyncPeriod");
        note(
            self.port_range.as_deref().is_some_and(|p| !p.is_empty()),
            "portRange",
        );
        note(self.winkernel.is_some(), "winkernel");
        note(
            self.windows_run_as_service == Some(true),
            "windowsRunAsService",
        );
        out
    }

    /// The YAML `--write-config-to` writes: every field we act on, keys sorted as
    /// kube-proxy sorts them.
    pub fn to_yaml(&self) -> String {
        // Through a JSON value: its maps are sorted by key.
        let value = serde_json::to_value(self).unwrap_or_default();
        serde_saphyr::to_string(&value).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(24 * 3600), "24h0m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(100), "100ms"),
            (Duration::from_micros(1500), "1.5ms"),
        ] {
            assert_eq!(format_go_duration(d), text);
            assert_eq!(parse_go_duration(text).unwrap(), d, "{text}");
        }
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        for bad in ["", "5", "-1s", "1x", "s", "1.2.3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_field_round_trips() {
        let text = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 192.168.0.2
healthzBindAddress: 0.0.0.0:20256
metricsBindAddress: 127.0.0.1:20249
hostnameOverride: node-a
mode: nftables
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
nodePortAddresses: [192.168.0.0/24]
detectLocalMode: ClusterCIDR
iptables: {masqueradeBit: 13, masqueradeAll: true, localhostNodePorts: false, syncPeriod: 20s, minSyncPeriod: 2s}
nftables: {masqueradeBit: 12, masqueradeAll: true, syncPeriod: 15s, minSyncPeriod: 500ms}
ipvs: {syncPeriod: 10s, minSyncPeriod: 1s, scheduler: lc, excludeCIDRs: [10.9.0.0/16], strictARP: true, tcpTimeout: 5m0s, tcpFinTimeout: 30s, udpTimeout: 20s}
conntrack: {maxPerCore: 0, min: 100, tcpEstablishedTimeout: 2h0m0s, tcpCloseWaitTimeout: 30m0s, tcpBeLiberal: true, udpTimeout: 30s, udpStreamTimeout: 2m0s}
logging: {format: json, verbosity: 4}
"#;
        let parsed = KubeProxyConfiguration::parse("a.yaml", text).unwrap();
        assert_eq!(parsed.mode, "nftables");
        assert_eq!(
            parsed.nftables.min_sync_period.0,
            Duration::from_millis(500)
        );
        assert_eq!(parsed.conntrack.max_per_core, Some(0));
        assert_eq!(
            parsed.ipvs.exclude_cidrs.as_deref(),
            Some(&["10.9.0.0/16".to_owned()][..])
        );
        assert!(parsed.ignored().is_empty());
        let again = KubeProxyConfiguration::parse("b.yaml", &parsed.to_yaml()).unwrap();
        assert_eq!(again, parsed);
        // The defaults round-trip too.
        let d = KubeProxyConfiguration::defaults();
        assert_eq!(KubeProxyConfiguration::parse("d", &d.to_yaml()).unwrap(), d);
    }

    #[test]
    fn an_unknown_field_is_an_error_with_its_path() {
        let head = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
        for (body, path) in [
            (
                "iptables: {syncPeriod: 1s, sincPeriod: 2s}\n",
                "iptables.sincPeriod",
            ),
            ("bogus: 1\n", "bogus"),
            (
                "conntrack: {tcpEstablishedTimeout: forever}\n",
                "conntrack.tcpEstablishedTimeout",
            ),
        ] {
            let e = KubeProxyConfiguration::parse("f.yaml", &format!("{head}{body}")).unwrap_err();
            match &e {
                ConfigError::Field { path: p, .. } => assert_eq!(p, path, "{e}"),
                other => panic!("{other}"),
            }
        }
        let e =
            KubeProxyConfiguration::parse("f.yaml", "iptables: {syncPeriod: 1s, sincPeriod: 2s}\n")
                .unwrap_err();
        assert!(e.to_string().contains("sincPeriod"), "{e}");
        let e = KubeProxyConfiguration::parse("f.yaml", "apiVersion: v1\nkind: ConfigMap\n")
            .unwrap_err();
        assert!(matches!(e, ConfigError::Kind { .. }), "{e}");
        // Known to kube-proxy, not acted on: accepted and listed.
        let known = KubeProxyConfiguration::parse(
            "f.yaml",
            &format!("{head}oomScoreAdj: -999\nclientConnection: {{kubeconfig: /k}}\n"),
        )
        .unwrap();
        assert_eq!(known.ignored(), ["clientConnection", "oomScoreAdj"]);
    }
}
