//! A real etcd server for tests: started on free loopback ports with its data in a fresh
//! directory on tmpfs, stopped (and restarted on the same data) at will, removed on drop.
//! Plain HTTP, or TLS with client-certificate authentication and a CA made for the test.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::{CertFiles, TestPki};

/// A running (or stopped) etcd.
#[derive(Debug)]
pub struct EtcdServer {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` (etcd's `--listen-metrics-urls`), whatever the client port speaks.
    metrics_port: u16,
    tls: Option<EtcdTlsFiles>,
    args: Vec<String>,
    child: Option<Child>,
}

/// The files of an etcd that serves TLS and requires client certificates
/// (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`).
#[derive(Debug)]
pub struct EtcdTlsFiles {
    /// The CA that signs the server's and the clients' certificates.
    pub pki: TestPki,
    /// etcd's serving certificate.
    pub server: CertFiles,
    /// A client certificate for the user `root`.
    pub client: CertFiles,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl EtcdServer {
    /// Starts etcd and waits until it answers `/health`.
    ///
    /// # Panics
    /// When it does not start within 20 s.
    pub fn start() -> Self {
        Self::start_inner(false, &[])
    }

    /// Starts etcd with extra command-line arguments (`--auth-token-ttl 1`, ...).
    ///
    /// # Panics
    /// When it does not start within 20 s.
    pub fn start_with_args(args: &[&str]) -> Self {
        Self::start_inner(false, args)
    }

    /// Starts etcd serving TLS with client-certificate authentication, with a CA, server
    /// and client certificates made for it; see [`EtcdServer::tls`].
    ///
    /// # Panics
    /// When it does not start within 20 s.
    pub fn start_tls() -> Self {
        Self::start_inner(true, &[])
    }

    fn start_inner(tls: bool, args: &[&str]) -> Self {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "service-etcd-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("etcd data directory");
        let tls = tls.then(|| {
            let pki = TestPki::new(&dir.join("pki"), "etcd");
            EtcdTlsFiles {
                server: pki.server("etcd"),
                client: pki.client("root", &[]),
                pki,
            }
        });
        let mut server = Self {
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            tls,
            args: args.iter().map(|&a| a.to_owned()).collect(),
            child: None,
        };
        server.restart();
        server
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The TLS files, when started with [`EtcdServer::start_tls`].
    pub fn tls(&self) -> Option<&EtcdTlsFiles> {
        self.tls.as_ref()
    }

    /// Kills etcd (SIGKILL: no graceful shutdown), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data and ports, and waits until it is healthy.
    ///
    /// # Panics
    /// When it does not come up within 20 s.
    pub fn restart(&mut self) {
        self.kill();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
            command.args([
                "--cert-file",
                &path(&tls.server.cert),
                "--key-file",
                &path(&tls.server.key),
                "--trusted-ca-file",
                &path(&tls.pki.ca),
                "--client-cert-auth",
            ]);
        }
        let child = command
            .args(&self.args)
            .args([
                "--name",
                "test",
                "--data-dir",
                &self.dir.join("data").to_string_lossy(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("test={peer}"),
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", self.metrics_port),
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.healthy() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        panic!("etcd did not become healthy on {client}:\n{log}");
    }

    /// Turns on etcd's authentication with a `root` user of password `password` (plain
    /// HTTP servers only), as `etcdctl user add root && etcdctl auth enable` does.
    ///
    /// # Panics
    /// When the server is a TLS one or refuses.
    pub fn enable_auth(&self, password: &str) {
        assert!(self.tls.is_none(), "enable_auth is for plain-HTTP servers");
        for (path, body) in [
            (
                "/v3/auth/user/add",
                format!(r#"{{"name":"root","password":"{password}"}}"#),
            ),
            (
                "/v3/auth/user/grant",
                r#"{"user":"root","role":"root"}"#.to_owned(),
            ),
            ("/v3/auth/enable", "{}".to_owned()),
        ] {
            let answer = self.post(path, &body);
            assert!(
                answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
                "{path}: {answer}"
            );
        }
    }

    fn post(&self, path: &str, body: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.client_port)).expect("connect to etcd");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send to etcd");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    }

    /// Whether `/health` reports healthy.
    pub fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
