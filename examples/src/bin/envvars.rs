//! `envvars --namespace NS [--no-service-links] FILE...`: prints the service environment
//! variables a container in namespace `NS` gets, one `NAME=value` per line, in the order
//! documented by `service-env`.
//!
//! With `--pod NAME`, prints the whole environment of that Pod's container (from the same
//! files): its own `envFrom`/`env` first, `$(VAR)` references expanded, then the service
//! variables it does not override. ConfigMaps and Secrets are not read from the files;
//! `valueFrom` resolves `fieldRef`s only.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use service_core::snapshot::NodeInfo;
use service_env::{PodFieldsOnly, for_container, for_namespace};
use service_examples::{EXIT_INVALID, load_cluster};

/// Print the environment variables kubelet gives containers for Services.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The pod's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Behave as for a pod with `enableServiceLinks: false` (only the `kubernetes` Service
    /// of the `default` namespace).
    #[arg(long)]
    no_service_links: bool,
    /// Print the full environment of this Pod (from the files) instead.
    #[arg(long)]
    pod: Option<String>,
    /// The container of `--pod` (default: its first container).
    #[arg(long, requires = "pod")]
    container: Option<String>,
    /// Manifest files (YAML, JSON, `kind: List`); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cluster = match load_cluster(&args.files) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The node does not matter for environment variables.
    let snapshot = match cluster.snapshot(NodeInfo::new("", Vec::new())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let vars =
        match &args.pod {
            None => for_namespace(&snapshot, &args.namespace, !args.no_service_links),
            Some(name) => {
                let Some(pod) = cluster.pods.iter().find(|p| {
                    p.metadata.name() == name && p.metadata.namespace() == args.namespace
                }) else {
                    eprintln!("error: no Pod {}/{name} in the files", args.namespace);
                    return ExitCode::from(EXIT_INVALID);
                };
                let mut pod = pod.clone();
                if args.no_service_links {
                    pod.spec.enable_service_links = Some(false);
                }
                let container = match &args.container {
                    None => pod.spec.containers.first(),
                    Some(c) => pod.spec.containers.iter().find(|x| &x.name == c),
                };
                let Some(container) = container else {
                    eprintln!("error: Pod {}/{name} has no such container", args.namespace);
                    return ExitCode::from(EXIT_INVALID);
                };
                match for_container(&snapshot, &pod, container, &PodFieldsOnly) {
                    Ok(v) => v,
                    Err(e) => {
                        eprintln!("error: Pod {}/{name}: {e}", args.namespace);
                        return ExitCode::from(EXIT_INVALID);
                    }
                }
            }
        };
    let mut out = std::io::stdout().lock();
    for v in vars {
        if writeln!(out, "{v}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
