//! `validate FILE...`: reports every validation error as the API server would (exit status
//! 2 on any), otherwise prints a table of the snapshot: service ports, IPs and endpoints.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Parser;
use service_core::snapshot::{FamilyPlan, ServicePort, Snapshot};
use service_core::valid::ClusterIps;
use service_examples::{NodeArgs, load_snapshot};

/// Validate Kubernetes manifests and show the resulting service ports.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Manifest files (YAML, JSON, `kind: List`); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<String>,
}

fn endpoints(plan: &FamilyPlan) -> String {
    if plan.endpoints.is_empty() {
        return "<none>".into();
    }
    let mut out = String::new();
    for (i, ep) in plan.endpoints.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let mut flags = Vec::new();
        if ep.ready {
            flags.push("ready");
        } else if ep.serving && ep.terminating {
            flags.push("terminating");
        } else {
            flags.push("not ready");
        }
        if ep.is_local {
            flags.push("local");
        }
        let _ = write!(out, "{} ({})", ep.addr(), flags.join(", "));
    }
    out
}

fn port_rows(snap: &Snapshot, port: &ServicePort, rows: &mut Vec<[String; 6]>) {
    let type_ = snap
        .services
        .get(&port.name.service)
        .map_or_else(String::new, |s| s.type_.to_string());
    for plan in [&port.ipv4, &port.ipv6].into_iter().flatten() {
        let mut external: Vec<String> = plan.external_ips.iter().map(ToString::to_string).collect();
        external.extend(plan.load_balancer_ips.iter().map(|ip| format!("{ip} (lb)")));
        let mut extra = Vec::new();
        if let Some(t) = port.session_affinity_timeout {
            extra.push(format!("affinity {t}s"));
        }
        if port.external_policy_local {
            extra.push("eTP=Local".into());
        }
        if port.internal_policy_local {
            extra.push("iTP=Local".into());
        }
        if !plan.load_balancer_source_ranges.is_empty() {
            let ranges: Vec<String> = plan
                .load_balancer_source_ranges
                .iter()
                .map(ToString::to_string)
                .collect();
            extra.push(format!("from {}", ranges.join(",")));
        }
        let name = if extra.is_empty() {
            port.name.to_string()
        } else {
            format!("{} [{}]", port.name, extra.join("; "))
        };
        rows.push([
            name,
            type_.clone(),
            format!("{}:{}", plan.cluster_ip, port.port),
            port.node_port.map_or_else(|| "-".into(), |p| p.to_string()),
            if external.is_empty() {
                "-".into()
            } else {
                external.join(",")
            },
            endpoints(plan),
        ]);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let snap = match load_snapshot(&args.files, &args.node) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut rows = vec![[
        "SERVICE PORT".to_string(),
        "TYPE".into(),
        "CLUSTER-IP:PORT".into(),
        "NODE-PORT".into(),
        "EXTERNAL".into(),
        "ENDPOINTS".into(),
    ]];
    for port in snap.service_ports() {
        port_rows(&snap, port, &mut rows);
    }
    for svc in snap.services.values() {
        let note = match (&svc.cluster_ips, &svc.external_name) {
            (_, Some(name)) => format!("CNAME {name}"),
            (ClusterIps::Headless, _) => {
                let eps: Vec<String> = svc
                    .endpoints
                    .iter()
                    .map(|e| match &e.hostname {
                        Some(h) => format!("{h}={}", e.ip),
                        None => e.ip.to_string(),
                    })
                    .collect();
                format!(
                    "headless: {}",
                    if eps.is_empty() {
                        "<none>".into()
                    } else {
                        eps.join(", ")
                    }
                )
            }
            (_, None) if svc.other_proxy => "handled by another proxy".into(),
            _ => continue,
        };
        rows.push([
            svc.key.to_string(),
            svc.type_.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            note,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        for (c, w) in widths.iter().enumerate() {
            let _ = write!(out, "{:<w$}  ", r[c], w = w);
        }
        out.push_str(&r[5]);
        out.push('\n');
    }
    print!("{out}");
    ExitCode::SUCCESS
}
