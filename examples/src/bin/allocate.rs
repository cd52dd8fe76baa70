//! `allocate [--service-cidr CIDR]... [--node-port-range RANGE] [--etcd-servers URL,...]
//! [--etcd-cafile F --etcd-certfile F --etcd-keyfile F] FILE...`:
//! creates the files' ServiceCIDRs and Services in a registry, as `kubectl create` against
//! an API server would, and prints what each was given: cluster IPs, node ports,
//! health-check node port. With `--ip-addresses` (or a ServiceCIDR in the files) ClusterIPs
//! are Kubernetes 1.33's IPAddress objects, from every ServiceCIDR.
//! A Service the API server would refuse gets its error instead (422 invalid, 409 exists,
//! 500 range full), and the exit status is 2.
//!
//! Without `--etcd-servers` the registry lives in memory for this run. With it, the state
//! lives in etcd (keys under `--etcd-prefix`, by default `/service-registry`: never the
//! API server's `/registry`), so successive runs see each other's Services. The etcd flags
//! are kube-apiserver's; `--etcd-username`/`--etcd-password-file` are for an etcd with
//! authentication enabled.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use clap::Parser;
use ipnet::IpNet;
use service_core::alloc::PortRange;
use service_core::manifest::Object;
use service_core::model::{Service, ServiceCidr};
use service_core::random::SeededRandom;
use service_core::registry::{DEFAULT_PREFIX, MemoryStore, Registry, RegistryConfig, Store};
use service_etcd::{EtcdAuth, EtcdOptions, EtcdStore, EtcdTls};
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
    /// Allocate ClusterIPs as Kubernetes 1.33 does: every ClusterIP an `IPAddress` object,
    /// taken from the `--service-cidr` ranges (the default ServiceCIDR `kubernetes`) and
    /// from the files' ServiceCIDR objects. On by itself when the files hold a
    /// ServiceCIDR; without it, the bitmap allocator of earlier releases.
    #[arg(long)]
    ip_addresses: bool,
    /// Keep the registry in etcd instead of memory: its client URLs, comma-separated
    /// (`https://10.0.0.1:2379,https://10.0.0.2:2379`).
    #[arg(long = "etcd-servers", alias = "etcd", value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// The CA bundle that signs etcd's serving certificate.
    #[arg(long = "etcd-cafile", requires = "etcd_servers")]
    etcd_cafile: Option<PathBuf>,
    /// The client certificate presented to etcd (with `--etcd-keyfile`).
    #[arg(long = "etcd-certfile", requires_all = ["etcd_servers", "etcd_keyfile"])]
    etcd_certfile: Option<PathBuf>,
    /// The key of `--etcd-certfile`.
    #[arg(long = "etcd-keyfile", requires_all = ["etcd_servers", "etcd_certfile"])]
    etcd_keyfile: Option<PathBuf>,
    /// The key prefix of the registry in etcd.
    #[arg(long = "etcd-prefix", default_value = DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// The etcd user, when etcd has authentication enabled (with `--etcd-password-file`).
    #[arg(long = "etcd-username", requires_all = ["etcd_servers", "etcd_password_file"])]
    etcd_username: Option<String>,
    /// A file holding the etcd user's password (its first line).
    #[arg(long = "etcd-password-file", requires = "etcd_username")]
    etcd_password_file: Option<PathBuf>,
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
    mut registry: Registry<S>,
    cidrs: Vec<(String, ServiceCidr)>,
    services: Vec<(String, Service)>,
) -> ExitCode {
    let mut failed = false;
    for (at, sc) in cidrs {
        let name = sc.metadata.name().to_owned();
        match registry.create_service_cidr(sc) {
            Ok(created) => println!("servicecidr/{name}: {}", created.spec.cidrs.join(",")),
            Err(e) => {
                failed = true;
                println!("servicecidr/{name}: error {} ({at}): {e}", e.code);
            }
        }
    }
    for (at, svc) in services {
        let key = format!("{}/{}", svc.metadata.namespace(), svc.metadata.name());
        match registry.create(svc) {
            Ok(created) => println!("{}: {}", created.key, describe(&created.object)),
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
    let mut services: Vec<(String, Service)> = Vec::new();
    let mut cidrs: Vec<(String, ServiceCidr)> = Vec::new();
    for o in objects {
        match o.object {
            Object::Service(s) => services.push((o.location.to_string(), s)),
            Object::ServiceCidr(c) => cidrs.push((o.location.to_string(), c)),
            _ => {}
        }
    }
    let config = if args.ip_addresses || !cidrs.is_empty() {
        RegistryConfig::with_ip_addresses(&args.service_cidrs, args.node_port_range)
    } else {
        RegistryConfig::new(&args.service_cidrs, args.node_port_range)
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let rng = SeededRandom::new(args.seed.unwrap_or_else(rand::random));
    let result = if args.etcd_servers.is_empty() {
        Registry::new(config, MemoryStore::new(), rng)
            .map(|r| create_all(r, cidrs, services))
            .map_err(anyhow::Error::from)
    } else {
        etcd_store(&args).and_then(|store| {
            let config = config.with_prefix(&args.etcd_prefix);
            Ok(create_all(
                Registry::new(config, store, rng)?,
                cidrs,
                services,
            ))
        })
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn etcd_store(args: &Args) -> anyhow::Result<EtcdStore> {
    let mut options = EtcdOptions::default();
    options.tls = EtcdTls::from_files(
        args.etcd_cafile.as_deref(),
        args.etcd_certfile.as_deref(),
        args.etcd_keyfile.as_deref(),
    )?;
    if let (Some(user), Some(file)) = (&args.etcd_username, &args.etcd_password_file) {
        let password = std::fs::read_to_string(file)
            .with_context(|| format!("reading --etcd-password-file {}", file.display()))?;
        let password = password.lines().next().unwrap_or_default();
        options.auth = Some(EtcdAuth::new(user, password));
    }
    Ok(EtcdStore::connect(&args.etcd_servers, options)?)
}
