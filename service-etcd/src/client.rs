//! A small synchronous client of etcd's gRPC gateway: JSON over HTTP/1.1 (TLS optional),
//! one connection pool for every endpoint, fail-over to the next endpoint when one cannot
//! be reached, and the auth token renewed when etcd stops accepting it.

use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

use crate::wire::{AuthenticateRequest, AuthenticateResponse, ErrorBody};
use crate::{ConnectError, EtcdOptions};

/// gRPC's `UNAUTHENTICATED`: the token is missing, expired or revoked.
const UNAUTHENTICATED: i32 = 16;

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Nothing was sent: no endpoint could be connected to.
    Unreachable(String),
    /// The request may have reached etcd, but no answer arrived (timeout, reset).
    Unknown(String),
    /// etcd refused the request.
    Etcd { code: i32, message: String },
    /// The answer is not what etcd's gateway sends.
    Malformed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(e) => write!(f, "no endpoint reachable: {e}"),
            Self::Unknown(e) => write!(f, "no answer (the request may have been applied): {e}"),
            Self::Etcd { code, message } => write!(f, "{message} (gRPC code {code})"),
            Self::Malformed(e) => write!(f, "unexpected answer: {e}"),
        }
    }
}

/// Whether a request is safe to send twice (reads, authentication).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Retry {
    /// A read: resent once on a broken pooled connection.
    Idempotent,
    /// A write: sent once; a lost answer is reported as [`CallError::Unknown`].
    Once,
}

/// The gateway of an etcd cluster.
pub(crate) struct Gateway {
    agent: ureq::Agent,
    endpoints: Vec<String>,
    /// The endpoint that answered last; calls start there.
    current: AtomicUsize,
    auth: Option<(String, String)>,
    token: Mutex<Option<Arc<str>>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("endpoints", &self.endpoints)
            .field("auth", &self.auth.as_ref().map(|(user, _)| user))
            .finish_non_exhaustive()
    }
}

fn tls_config(options: &EtcdOptions) -> Result<TlsConfig, ConnectError> {
    let mut tls = TlsConfig::builder();
    if let Some(ca) = &options.tls.ca_pem {
        let certs = parse_certs(ca, "CA file")?;
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    match (&options.tls.cert_pem, &options.tls.key_pem) {
        (Some(cert), Some(key)) => {
            let chain = parse_certs(cert, "client certificate file")?;
            let key = PrivateKey::from_pem(key)
                .map_err(|e| ConnectError::Tls(format!("client key file: {e}")))?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (None, None) => {}
        _ => {
            return Err(ConnectError::Tls(
                "a client certificate needs its key and a key its certificate".into(),
            ));
        }
    }
    Ok(tls.build())
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<Certificate<'static>>, ConnectError> {
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .map_err(|e| ConnectError::Tls(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(ConnectError::Tls(format!(
            "{what}: no PEM certificate in it"
        )));
    }
    Ok(certs)
}

/// Whether `e` happened before the request left this process.
fn not_sent(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::NotConnected
        ),
        _ => false,
    }
}

/// Whether `e` broke a connection that was reused from the pool (the peer closed it while
/// it was idle, e.g. etcd restarted): nothing reached etcd.
fn stale_connection(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Io(io) if matches!(
        io.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionAborted
    ))
}

impl Gateway {
    pub(crate) fn new(endpoints: &[String], options: &EtcdOptions) -> Result<Self, ConnectError> {
        if endpoints.is_empty() {
            return Err(ConnectError::InvalidEndpoint {
                endpoint: String::new(),
                reason: "at least one etcd endpoint is required".into(),
            });
        }
        let mut bases = Vec::new();
        for e in endpoints {
            let base = e.trim_end_matches('/');
            let tls = base.starts_with("https://");
            if !tls && !base.starts_with("http://") {
                return Err(ConnectError::InvalidEndpoint {
                    endpoint: e.clone(),
                    reason: "must start with http:// or https://".into(),
                });
            }
            if !tls && options.tls.is_configured() {
                return Err(ConnectError::InvalidEndpoint {
                    endpoint: e.clone(),
                    reason: "TLS files are given but the endpoint is http://".into(),
                });
            }
            bases.push(base.to_owned());
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(options.request_timeout))
            .timeout_connect(Some(options.connect_timeout))
            .tls_config(tls_config(options)?)
            .max_idle_connections_per_host(8)
            .build()
            .new_agent();
        Ok(Self {
            agent,
            endpoints: bases,
            current: AtomicUsize::new(0),
            auth: options
                .auth
                .as_ref()
                .map(|a| (a.username.clone(), a.password.clone())),
            token: Mutex::new(None),
        })
    }

    /// Whether calls carry an auth token.
    pub(crate) fn authenticates(&self) -> bool {
        self.auth.is_some()
    }

    /// POSTs `request` to `path` (`/v3/kv/range`, ...) and decodes the answer.
    pub(crate) fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
        retry: Retry,
    ) -> Result<Resp, CallError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| CallError::Malformed(format!("encoding the request: {e}")))?;
        let mut token = self.token(false)?;
        let mut renewed = false;
        loop {
            match self.post(path, &body, token.as_deref(), retry) {
                Err(CallError::Etcd { code, .. })
                    if code == UNAUTHENTICATED && self.auth.is_some() && !renewed =>
                {
                    renewed = true;
                    token = self.token(true)?;
                }
                Ok(answer) => {
                    return serde_json::from_slice(&answer).map_err(|e| {
                        CallError::Malformed(format!(
                            "{path}: {e}: {}",
                            String::from_utf8_lossy(&answer[..answer.len().min(200)])
                        ))
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The auth token (a new one when `renew`, or when there is none yet).
    fn token(&self, renew: bool) -> Result<Option<Arc<str>>, CallError> {
        let Some((name, password)) = &self.auth else {
            return Ok(None);
        };
        let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if renew || token.is_none() {
            let body = serde_json::to_vec(&AuthenticateRequest { name, password })
                .map_err(|e| CallError::Malformed(e.to_string()))?;
            let answer = self.post("/v3/auth/authenticate", &body, None, Retry::Idempotent)?;
            let AuthenticateResponse { token: t } = serde_json::from_slice(&answer)
                .map_err(|e| CallError::Malformed(format!("/v3/auth/authenticate: {e}")))?;
            *token = Some(t.into());
        }
        Ok(token.clone())
    }

    /// One POST, failing over to the next endpoint while nothing was sent.
    fn post(
        &self,
        path: &str,
        body: &[u8],
        token: Option<&str>,
        retry: Retry,
    ) -> Result<Vec<u8>, CallError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..self.endpoints.len() {
            let at = (start + i) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[at]);
            let mut resent = false;
            loop {
                let mut request = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(t) = token {
                    request = request.header("Authorization", t);
                }
                match request.send(body) {
                    Ok(mut response) => {
                        self.current.store(at, Ordering::Relaxed);
                        let status = response.status();
                        let answer = response
                            .body_mut()
                            .with_config()
                            .limit(256 << 20)
                            .read_to_vec()
                            .map_err(|e| CallError::Unknown(format!("{url}: {e}")))?;
                        if status.is_success() {
                            return Ok(answer);
                        }
                        let err: ErrorBody = serde_json::from_slice(&answer).unwrap_or_default();
                        let message = if err.message.is_empty() {
                            err.error
                        } else {
                            err.message
                        };
                        return Err(if message.is_empty() {
                            CallError::Malformed(format!(
                                "{url}: HTTP {status}: {}",
                                String::from_utf8_lossy(&answer[..answer.len().min(200)])
                            ))
                        } else {
                            CallError::Etcd {
                                code: err.code,
                                message,
                            }
                        });
                    }
                    Err(e) if not_sent(&e) => {
                        last = format!("{url}: {e}");
                        break;
                    }
                    Err(e) if stale_connection(&e) && retry == Retry::Idempotent && !resent => {
                        resent = true;
                    }
                    Err(e) => return Err(CallError::Unknown(format!("{url}: {e}"))),
                }
            }
        }
        Err(CallError::Unreachable(last))
    }
}
