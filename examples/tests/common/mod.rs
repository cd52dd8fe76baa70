//! What the daemon tests share: manifest files to edit, the `proxy` daemon started in a
//! network namespace, stopped with SIGTERM, and `--cleanup`.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use service_testkit::netns::Netns;

/// A copy of the demo manifests the test edits.
pub struct Manifest(PathBuf);

impl Manifest {
    /// A copy of the demo manifests.
    pub fn new(tag: &str) -> Self {
        Self::with_text(
            tag,
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/demo.yaml"))
                .unwrap(),
        )
    }

    /// A file holding `text`.
    pub fn with_text(tag: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("proxy-{}-{tag}.yaml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Replaces the file's content the safe way: a temporary file renamed over it.
    pub fn replace(&self, text: &str) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    /// Truncates the file to nothing (what a writer about to rewrite it leaves).
    pub fn truncate(&self) {
        std::fs::write(&self.0, "").unwrap();
    }

    pub fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.0).unwrap();
        assert!(text.contains(from), "{from}");
        // A new modification time even within the same second as the last write.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&self.0, text.replace(from, to)).unwrap();
    }
}

impl Drop for Manifest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A running `proxy`; its log goes to a file (a pipe nobody reads would fill up and stall
/// it).
pub struct Daemon {
    pub child: Child,
    log: PathBuf,
}

impl Daemon {
    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn spawn(ns: &Netns, backend: &str, file: &str) -> Daemon {
    spawn_with(ns, backend, file, &[])
}

/// `proxy --cleanup` in the namespace: whether it succeeded, and its log.
pub fn try_cleanup(ns: &Netns, backend: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_proxy")])
        .args(["--backend", backend, "--cleanup"])
        .args(["--node-name", "node-a", "--node-ip", "192.168.0.2"])
        .args(extra)
        .output()
        .expect("run proxy --cleanup");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `proxy --cleanup` in the namespace; returns its log.
pub fn cleanup(ns: &Netns, backend: &str, extra: &[&str]) -> String {
    let (ok, log) = try_cleanup(ns, backend, extra);
    assert!(ok, "proxy --cleanup failed:\n{log}");
    log
}

pub fn spawn_with(ns: &Netns, backend: &str, file: &str, extra: &[&str]) -> Daemon {
    spawn_env(ns, backend, file, extra, &[])
}

/// [`spawn_with`], with environment variables for the daemon.
pub fn spawn_env(
    ns: &Netns,
    backend: &str,
    file: &str,
    extra: &[&str],
    env: &[(&str, String)],
) -> Daemon {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let log = std::env::temp_dir().join(format!("proxy-{}-{n}.log", std::process::id()));
    let file_log = std::fs::File::create(&log).expect("the log file");
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_proxy")])
        .args([
            "--backend",
            backend,
            "--apply",
            "--min-sync-period",
            "100ms",
        ])
        .args(["--node-name", "node-a", "--node-ip", "192.168.0.2"])
        .args(extra)
        .args(["--cluster-cidr", "10.244.0.0/16", file])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(file_log)
        .spawn()
        .expect("spawn proxy");
    Daemon { child, log }
}

/// Waits until `state()` satisfies `ok`, or fails with the last state.
pub fn eventually(what: &str, state: impl Fn() -> String, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = state();
        if ok(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the proxy with SIGTERM; returns its exit status and log.
pub fn terminate(mut daemon: Daemon) -> (bool, String) {
    let child = &mut daemon.child;
    let pid = child.id().to_string();
    // `ip netns exec` runs the proxy in place (exec), so the pid is the proxy's.
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), daemon.log())
}
