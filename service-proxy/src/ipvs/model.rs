//! IPVS objects: virtual servers (services) and real servers (destinations), as the
//! kernel's IPVS generic-netlink interface and `ipvsadm` know them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The protocol of a virtual server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpvsProtocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl IpvsProtocol {
    /// The IP protocol number.
    pub fn number(self) -> u16 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// `ipvsadm`'s option for a virtual service of this protocol.
    pub fn ipvsadm_flag(self) -> &'static str {
        match self {
            Self::Tcp => "-t",
            Self::Udp => "-u",
            Self::Sctp => "--sctp-service",
        }
    }

    /// The lower-case name (ipset entries).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// `IP_VS_SVC_F_PERSISTENT`: ClientIP affinity.
pub const FLAG_PERSISTENT: u32 = 0x1;
/// `IP_VS_SVC_F_HASHED`: set by the kernel in replies.
pub const FLAG_HASHED: u32 = 0x2;
/// `IP_VS_SVC_F_SCHED1`: the scheduler's fallback flag.
pub const FLAG_SCHED1: u32 = 0x8;
/// `IP_VS_SVC_F_SCHED2`: for `sh`/`mh`, hash the source port too (kube-proxy sets it for mh).
pub const FLAG_SCHED2: u32 = 0x10;

/// A scheduler kube-proxy accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheduler {
    /// Round robin (kube-proxy's default).
    Rr,
    /// Least connection.
    Lc,
    /// Destination hashing.
    Dh,
    /// Source hashing.
    Sh,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Weighted round robin.
    Wrr,
    /// Weighted least connection.
    Wlc,
    /// Maglev hashing.
    Mh,
}

impl Scheduler {
    /// The kernel's name (`ip_vs_<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rr => "rr",
            Self::Lc => "lc",
            Self::Dh => "dh",
            Self::Sh => "sh",
            Self::Sed => "sed",
            Self::Nq => "nq",
            Self::Wrr => "wrr",
            Self::Wlc => "wlc",
            Self::Mh => "mh",
        }
    }

    /// Parses a kernel scheduler name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "rr" => Self::Rr,
            "lc" => Self::Lc,
            "dh" => Self::Dh,
            "sh" => Self::Sh,
            "sed" => Self::Sed,
            "nq" => Self::Nq,
            "wrr" => Self::Wrr,
            "wlc" => Self::Wlc,
            "mh" => Self::Mh,
            _ => return None,
        })
    }

    /// The flags kube-proxy sets with this scheduler (`mh` hashes the source port too).
    pub fn flags(self) -> u32 {
        if self == Self::Mh { FLAG_SCHED2 } else { 0 }
    }
}

/// A virtual server: an address, protocol and port the kernel balances.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtualServer {
    /// The address.
    pub addr: IpAddr,
    /// The protocol.
    pub protocol: IpvsProtocol,
    /// The port.
    pub port: u16,
    /// The scheduler's kernel name.
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` flags.
    pub flags: u32,
    /// Persistence timeout in seconds (with [`FLAG_PERSISTENT`]).
    pub timeout: u32,
}

impl VirtualServer {
    /// The persistence netmask kube-proxy uses: a /32 (IPv4, as a mask) or /128 (IPv6, as a
    /// prefix length).
    pub fn netmask(&self) -> u32 {
        if self.addr.is_ipv4() { u32::MAX } else { 128 }
    }

    /// The virtual service as `ipvsadm` names it: `-t 10.0.0.1:80`.
    pub fn ipvsadm_target(&self) -> String {
        format!(
            "{} {}",
            self.protocol.ipvsadm_flag(),
            SocketAddr::new(self.addr, self.port)
        )
    }
}

/// `ipvsadm -S -n`: `-A -t ADDR:PORT -s SCHED [-p TIMEOUT] [-b FLAGS]`.
impl fmt::Display for VirtualServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} -s {}", self.ipvsadm_target(), self.scheduler)?;
        if self.flags & FLAG_PERSISTENT != 0 {
            write!(f, " -p {}", self.timeout)?;
        }
        let sched_flags: Vec<String> = [(FLAG_SCHED1, "1"), (FLAG_SCHED2, "2")]
            .iter()
            .filter(|(bit, _)| self.flags & bit != 0)
            .map(|(_, n)| match (self.scheduler.as_str(), *n) {
                ("mh" | "sh", "1") => format!("{}-fallback", self.scheduler),
                ("mh" | "sh", "2") => format!("{}-port", self.scheduler),
                (_, n) => format!("flag-{n}"),
            })
            .collect();
        if !sched_flags.is_empty() {
            write!(f, " -b {}", sched_flags.join(","))?;
        }
        Ok(())
    }
}

/// How packets reach a real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Forward {
    /// NAT (`-m`), what kube-proxy uses.
    Masquerade,
    /// Direct routing (`-g`, ipvsadm's default).
    DirectRoute,
    /// IP-in-IP tunnel (`-i`).
    Tunnel,
}

impl Forward {
    /// `IP_VS_CONN_F_*` forwarding method.
    pub fn number(self) -> u32 {
        match self {
            Self::Masquerade => 0,
            Self::Tunnel => 2,
            Self::DirectRoute => 3,
        }
    }

    fn ipvsadm_flag(self) -> &'static str {
        match self {
            Self::Masquerade => "-m",
            Self::DirectRoute => "-g",
            Self::Tunnel => "-i",
        }
    }
}

/// A real server (destination) of a virtual server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealServer {
    /// The endpoint.
    pub addr: SocketAddr,
    /// Its weight (0: draining).
    pub weight: u32,
    /// The forwarding method.
    pub forward: Forward,
}

impl RealServer {
    /// A NATed real server of weight 1, as kube-proxy adds them.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            forward: Forward::Masquerade,
        }
    }

    /// `ipvsadm -S -n`'s line for this real server of `vs`.
    pub fn save_line(&self, vs: &VirtualServer) -> String {
        format!(
            "-a {} -r {} {} -w {}",
            vs.ipvsadm_target(),
            self.addr,
            self.forward.ipvsadm_flag(),
            self.weight
        )
    }
}
