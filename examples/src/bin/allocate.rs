//! `allocate [--service-cidr CIDR]... [--node-port-range RANGE] [--etcd URL] FILE...`:
//! creates the files' Services in a registry, as `kubectl create` against an API server
//! would, and prints what each was given: cluster IPs, node ports, health-check node port.
//! A Service the API server would refuse gets its error instead (422 invalid, 409 exists,
//! 500 range full), and the exit status is 2.
//!
//! Without `--etcd` the registry lives in memory for this run. With it, the state lives
//! in etcd (keys under `/registry`), so successive runs see each other's Services.

use std::process::ExitCode;

use clap::Parser;
use ipnet::IpNet;
use rand::SeedableRng;
use rand::rngs::StdRng;
use service_core::alloc::PortRange;
use service_core::manifest::Object;
use service_core::model::Service;
use service_core::registry::{MemoryStore, Registry, RegistryConfig, Store};
use service_examples::{EXIT_INVALID, load_files};

/// Allocate cluster IPs and node ports for Services, as the API server does.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// `--service-cluster-ip-range`: one CIDR, or two of different families.
    #[arg(long = "service-cidr", default_value = "10.96.0.0/12")]
    service_cidrs: Vec<IpNet>,
    /// `--service-node-port-range`.
    #[arg(long, default_value = "30000-32767")]
    node_port_range: PortRange,
    /// Keep the registry in this etcd (`http://127.0.0.1:2379`) instead of memory.
    #[arg(long)]
    etcd: Option<String>,
    /// Seed for the random choices, for reproducible output (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Manifest files (YAML, JSON, `kind: List`); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<String>,
}

fn describe(svc: &Service) -> String {
    let mut parts = Vec::new();
    let ips = &svc.spec.cluster_ips;
    if !ips.is_empty() {
        parts.push(format!("clusterIPs={}", ips.join(",")));
    }
    let families: Vec<&str> = svc.spec.ip_families.iter().map(|f| f.as_str()).collect();
    if !families.is_empty() {
        parts.push(format!("ipFamilies={}", families.join(",")));
    }
    let node_ports: Vec<String> = svc
        .spec
        .ports
        .iter()
        .filter_map(|p| {
            p.node_port.filter(|&n| n != 0).map(|n| {
                format!(
                    "{}/{}={n}",
                    p.port,
                    p.protocol.as_ref().map_or("TCP", |x| x.as_str())
                )
            })
        })
        .collect();
    if !node_ports.is_empty() {
        parts.push(format!("nodePorts={}", node_ports.join(",")));
    }
    if let Some(hc) = svc.spec.health_check_node_port.filter(|&n| n != 0) {
        parts.push(format!("healthCheckNodePort={hc}"));
    }
    if parts.is_empty() {
        parts.push("nothing to allocate".into());
    }
    parts.join(" ")
}

fn create_all<S: Store>(
    mut registry: Registry<S, StdRng>,
    services: Vec<(String, Service)>,
) -> ExitCode {
    let mut failed = false;
    for (at, svc) in services {
        let key = format!("{}/{}", svc.metadata.namespace(), svc.metadata.name());
        match registry.create(svc) {
            Ok(created) => println!(
                "{}/{}: {}",
                created.metadata.namespace(),
                created.metadata.name(),
                describe(&created)
            ),
            Err(e) => {
                failed = true;
                println!("{key}: error {} ({at}): {e}", e.code);
            }
        }
    }
    if failed {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let objects = match load_files(&args.files) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let services: Vec<(String, Service)> = objects
        .into_iter()
        .filter_map(|o| match o.object {
            Object::Service(s) => Some((o.location.to_string(), s)),
            _ => None,
        })
        .collect();
    let config = match RegistryConfig::new(&args.service_cidrs, args.node_port_range) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let rng = args
        .seed
        .map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64);
    let result = match &args.etcd {
        None => Registry::new(config, MemoryStore::new(), rng).map(|r| create_all(r, services)),
        Some(url) => service_etcd::EtcdStore::connect(
            std::slice::from_ref(url),
            service_etcd::EtcdOptions::default(),
        )
        .and_then(|store| Registry::new(config, store, rng))
        .map(|r| create_all(r, services)),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}
