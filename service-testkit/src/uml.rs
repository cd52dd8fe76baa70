//! A real IPVS kernel for tests: User-Mode Linux (see
//! `../shared/reference/uml-ipvs-recipe.md`). The host kernel has no IPVS; Debian's
//! `user-mode-linux` kernel has it (and `dummy`, ipset, veth) as modules and runs as an
//! ordinary process with the host's `/` as its root file system. A test on the host calls
//! [`run_inside`], which boots UML with an init script that runs the same test binary,
//! filtered to one `#[ignore]`d test; that inner test loads the modules it needs with
//! [`load_modules`] and then works as on any kernel (network namespaces, `ip`, `ipset`,
//! `iptables-legacy`).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set inside UML by the init script.
const INSIDE: &str = "SERVICE_UML_INSIDE";
/// The line the init script prints with the inner test's exit status.
const EXIT_MARK: &str = "SERVICE-UML-EXIT";

/// The UML kernel: `$SERVICE_UML_KERNEL`, or Debian's `/usr/bin/linux.uml`.
pub fn kernel() -> Option<PathBuf> {
    let p = std::env::var_os("SERVICE_UML_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/linux.uml"));
    p.exists().then_some(p)
}

/// The UML kernel's module tree (`/usr/lib/uml/modules/<version>`), the first found.
pub fn modules_dir() -> Option<PathBuf> {
    let base = std::env::var_os("SERVICE_UML_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/uml/modules"));
    if base.join("modules.dep").exists() {
        return Some(base);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir(&base)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("modules.dep").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// Checks that a UML test can run on this host: root, the UML kernel and its modules,
/// and `programs`. As [`crate::netns::require`]: skips, or panics under
/// `SERVICE_E2E=require`.
pub fn require(test: &str, programs: &[&str]) -> crate::netns::E2e {
    let root = nix::unistd::geteuid().is_root();
    let lacking = if !root {
        Some("root")
    } else if kernel().is_none() || modules_dir().is_none() {
        Some(
            "User-Mode Linux (/usr/bin/linux.uml and /usr/lib/uml/modules: apt-get install user-mode-linux)",
        )
    } else {
        None
    };
    crate::netns::check(test, programs, lacking)
}

/// The modules a node in IPVS mode needs beyond what the UML kernel has built in: veth
/// (test namespaces), dummy, IPVS with round robin, the ipset types, and the legacy
/// iptables tables and matches of the fixed rules (and of the iptables backend, which
/// the daemon falls back to). (Debian's UML kernel has no
/// `nft_chain_nat`, so the nft variant of iptables cannot write nat rules there: use
/// `iptables-legacy`.)
pub const IPVS_NODE_MODULES: &[&str] = &[
    "veth",
    "dummy",
    "ip_vs",
    "ip_vs_rr",
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_bitmap_port",
    "xt_set",
    "ip_tables",
    "iptable_nat",
    "iptable_filter",
    "iptable_mangle",
    "ip6_tables",
    "ip6table_nat",
    "ip6table_filter",
    "ip6table_mangle",
    "ip6t_REJECT",
    "xt_comment",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_conntrack",
    "xt_physdev",
    "xt_tcpudp",
    "xt_statistic",
    "xt_recent",
    "xt_nat",
    "ipt_REJECT",
    "xt_ipvs",
    "nf_conntrack_netlink",
];

/// Whether this process runs inside UML (started by [`run_inside`]).
pub fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// Loads kernel modules by name (`ip_vs`, `xt_set`, ...) with their dependencies, in the
/// order `modules.dep` gives, with `finit_module(2)`. Already loaded ones are skipped.
///
/// # Errors
/// A module is unknown or the kernel refused it.
pub fn load_modules(names: &[&str]) -> io::Result<()> {
    let dir = modules_dir().ok_or_else(|| io::Error::other("no UML module tree"))?;
    let deps = std::fs::read_to_string(dir.join("modules.dep"))?;
    let mut loaded: BTreeSet<String> = BTreeSet::new();
    for name in names {
        let wanted = format!("/{name}.ko");
        let line = deps
            .lines()
            .find(|l| l.split(':').next().is_some_and(|p| p.ends_with(&wanted)))
            .ok_or_else(|| io::Error::other(format!("no module {name} in modules.dep")))?;
        let (path, rest) = line.split_once(':').unwrap_or((line, ""));
        // modules.dep lists dependencies before their dependants' dependencies: load from
        // the end.
        let order: Vec<&str> = rest
            .split_whitespace()
            .rev()
            .chain(std::iter::once(path))
            .collect();
        for m in order {
            if !loaded.insert(m.to_owned()) {
                continue;
            }
            let file = std::fs::File::open(dir.join(m))?;
            match nix::kmod::finit_module(
                &file,
                &CString::default(),
                nix::kmod::ModuleInitFlags::empty(),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(io::Error::other(format!("loading {m}: {e}"))),
            }
        }
    }
    Ok(())
}

/// The init script: private `/proc`, `/sys`, `/dev`, and a tmpfs on `/run` for
/// everything the test writes (temporary files go to `/run/tmp`), so nothing lands on the
/// host through hostfs. `/tmp` stays the host's: the test binary may live there.
fn init_script(exe: &Path, test: &str) -> String {
    format!(
        "#!/bin/sh\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
         mount -t tmpfs tmpfs /run\n\
         mkdir -p /dev/shm /run/netns /run/tmp && mount -t tmpfs tmpfs /dev/shm\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/run/tmp TMPDIR=/run/tmp {INSIDE}=1 RUST_BACKTRACE=1\n\
         export GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX_Fast_Unaligned_Load\n\
         cd /run/tmp\n\
         ip link set lo up\n\
         '{exe}' --exact '{test}' --include-ignored --nocapture --test-threads=1\n\
         echo {EXIT_MARK} $?\n\
         echo o > /proc/sysrq-trigger\n\
         sleep 30\n",
        exe = exe.display()
    )
}

/// Starts the UML kernel so that it keeps its guests' floating-point state with
/// `PTRACE_GETFPREGS`/`SETFPREGS` instead of the XSAVE register set.
///
/// Debian's UML kernel (6.1) writes the XSAVE area back with a buffer of the size an AVX
/// machine has; a host whose CPU has AVX-512 (a larger XSAVE area) refuses that with EFAULT
/// ("userspace - ptrace set fp regs failed, errno = 14") and UML dies at its first process.
/// UML probes for XSAVE support with `PTRACE_GETREGSET(NT_X86_XSTATE)` and falls back to
/// the legacy FXSAVE calls when the probe fails, so the kernel is started under a seccomp
/// filter that fails that probe (and its SET twin) with EIO. The filter is applied on a
/// thread of its own that only spawns the kernel, so the rest of the test process is not
/// affected. The guests' AVX upper halves are then not switched between threads of one
/// guest process: the init script turns off glibc's AVX string functions inside.
fn spawn_without_xstate(mut command: Command) -> io::Result<std::process::Child> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    const PTRACE_GETREGSET: u64 = 0x4204;
    const PTRACE_SETREGSET: u64 = 0x4205;
    const NT_X86_XSTATE: u64 = 0x202;
    std::thread::spawn(move || {
        let rule = |request| {
            SeccompRule::new(vec![
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)?,
                SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, NT_X86_XSTATE)?,
            ])
        };
        let rules = [rule(PTRACE_GETREGSET), rule(PTRACE_SETREGSET)]
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(io::Error::other)?;
        let filter: seccompiler::BpfProgram = SeccompFilter::new(
            [(nix::libc::SYS_ptrace, rules)].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(nix::libc::EIO as u32),
            TargetArch::x86_64,
        )
        .and_then(TryInto::try_into)
        .map_err(io::Error::other)?;
        seccompiler::apply_filter(&filter).map_err(io::Error::other)?;
        command.spawn()
    })
    .join()
    .map_err(|_| io::Error::other("the thread starting UML panicked"))?
}

/// Boots UML running the `#[ignore]`d test `test` of the current test binary and returns
/// its console output once it printed its exit status. Panics (with the console output)
/// if the test failed inside, or UML did not finish within `timeout`.
pub fn run_inside(test: &str, timeout: Duration) -> String {
    let kernel = kernel().expect("no UML kernel (install user-mode-linux)");
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().expect("the test binary's folder").to_owned();
    let script = dir.join(format!("uml-init-{}-{test}.sh", std::process::id()));
    std::fs::write(&script, init_script(&exe, test)).expect("write the UML init script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make the init script executable");
    // UML keeps its memory in a file under TMPDIR and a control socket under $HOME/.uml.
    let mut command = Command::new(&kernel);
    command
        .args([
            "mem=512M",
            "rootfstype=hostfs",
            "rootflags=/",
            "rw",
            "quiet",
            &format!("init={}", script.display()),
            "con=null",
            "con0=null,fd:1",
        ])
        .env("TMPDIR", "/dev/shm")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn_without_xstate(command)
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", kernel.display()));
    let mut out = child.stdout.take().expect("UML stdout");
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = io::Read::read_to_end(&mut out, &mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let start = Instant::now();
    let timed_out = loop {
        if child.try_wait().ok().flatten().is_some() {
            break false;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = reader.join().unwrap_or_default();
    let _ = std::fs::remove_file(&script);
    let status = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(EXIT_MARK))
        .map(str::trim);
    assert!(
        !timed_out || status.is_some(),
        "UML did not finish within {timeout:?}; console:\n{text}"
    );
    assert_eq!(
        status,
        Some("0"),
        "the test {test} failed inside UML; console:\n{text}"
    );
    text
}
