//! A TCP proxy that delays or drops the answers of the server behind it, for testing
//! clients against a bad network: a request reaches the server (and takes effect), but its
//! answer arrives late, or never (the connection is cut instead). Loopback only.

use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What happens to the server's answers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Chance (0 to 1) that an answer is dropped and its connection cut.
    pub drop: f64,
    /// Answers wait up to this long (uniformly) before they are passed on.
    pub delay: Duration,
}

#[derive(Debug)]
struct Shared {
    faults: Mutex<(Faults, u64)>,
    dropped: AtomicUsize,
    delayed: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    /// The fate of one answer: dropped, or passed on after a delay.
    fn decide(&self) -> Option<Duration> {
        let mut guard = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let (faults, state) = &mut *guard;
        let mut next = || {
            // xorshift64*: reproducible from the seed.
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        };
        if next() < faults.drop {
            return None;
        }
        Some(faults.delay.mul_f64(next()))
    }
}

/// The proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`, passing
    /// answers through untouched until [`FaultProxy::set`]. `seed` makes the faults
    /// reproducible.
    ///
    /// # Errors
    /// The port could not be opened.
    pub fn start(upstream: SocketAddr, seed: u64) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            faults: Mutex::new((Faults::default(), seed | 1)),
            dropped: AtomicUsize::new(0),
            delayed: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            if let Ok(server) = TcpStream::connect(upstream) {
                                connect(client, server, s.clone());
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })?;
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what happens to answers from now on.
    pub fn set(&self, faults: Faults) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0 = faults;
    }

    /// Answers dropped so far.
    pub fn dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// Answers delayed so far.
    pub fn delayed(&self) -> usize {
        self.shared.delayed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Pumps both ways: requests untouched, answers through [`Shared::decide`].
fn connect(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (Ok(client_r), Ok(server_w)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || pump(client_r, server_w, None));
    std::thread::spawn(move || pump(server, client, Some(shared)));
}

fn pump(mut from: TcpStream, mut to: TcpStream, faults: Option<Arc<Shared>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(shared) = &faults {
            match shared.decide() {
                None => {
                    shared.dropped.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Some(d) if !d.is_zero() => {
                    shared.delayed.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(d);
                }
                Some(_) => {}
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
