//! `trace [NODE FLAGS] --src IP --dst IP:PORT [--proto tcp|udp|sctp] [--in-interface NAME]
//! FILE...`: prints where
//! the first packet of a new connection goes on this node: the endpoints it may reach (and
//! whether it is masqueraded), or REJECT, DROP, ACCEPT, or "not handled".

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;
use service_core::model::Protocol;
use service_examples::{BackendArg, NodeArgs, load_snapshot};
use service_proxy::iptables::{IptablesConfig, Renderer};
use service_proxy::nftables::{NftablesConfig, Renderer as NftRenderer};
use service_proxy::trace::{Packet, Verdict};

/// Trace a packet through the rules of one node.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Which backend's rules to trace.
    #[arg(long, value_enum, default_value = "iptables")]
    backend: BackendArg,
    /// Source address.
    #[arg(long)]
    src: IpAddr,
    /// Destination address and port (`[v6]:port` for IPv6).
    #[arg(long)]
    dst: SocketAddr,
    /// Protocol.
    #[arg(long, value_enum, default_value = "tcp")]
    proto: Proto,
    /// The interface the packet comes in on (default: none, a packet the node sends
    /// itself); matters with an interface `--detect-local-mode`.
    #[arg(long)]
    in_interface: Option<String>,
    #[command(flatten)]
    node: NodeArgs,
    /// Manifest files (YAML, JSON, `kind: List`); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let snapshot = match load_snapshot(&args.files, &args.node) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let protocol = match args.proto {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
        Proto::Sctp => Protocol::Sctp,
    };
    let packet = Packet::new(args.src, args.dst.ip(), args.dst.port(), protocol)
        .on_interface(args.in_interface.as_deref().unwrap_or_default());
    let config = match args.node.proxy_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let verdict = match args.backend {
        BackendArg::Iptables => {
            let rules = Renderer::new(IptablesConfig::new(config.clone()), args.dst.is_ipv6())
                .full(&snapshot);
            match rules.trace(&packet, &config.local_addresses) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        BackendArg::Nftables => {
            NftRenderer::new(NftablesConfig::new(config.clone()), args.dst.is_ipv6())
                .render(&snapshot)
                .trace(&packet, &config.local_addresses)
        }
        BackendArg::Ipvs => {
            let config = service_proxy::ipvs::IpvsConfig::new(config);
            service_proxy::ipvs::IpvsPlan::build(&config, &snapshot, args.dst.is_ipv6())
                .trace(&config, &packet)
        }
        BackendArg::Userspace => {
            eprintln!(
                "error: the userspace backend relays connections: there are no rules to trace"
            );
            return ExitCode::from(2);
        }
    };
    println!(
        "{} -> {} ({})",
        args.src,
        args.dst,
        packet.protocol.as_str()
    );
    match &verdict {
        Verdict::Endpoints(dests) => {
            for d in dests {
                let masq = if d.masquerade {
                    "masqueraded"
                } else {
                    "source kept"
                };
                println!("  -> {} ({masq})", d.endpoint);
            }
        }
        other => println!("  {other}"),
    }
    ExitCode::SUCCESS
}
