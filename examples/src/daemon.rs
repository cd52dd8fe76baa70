//! What the daemons (`proxy`, `dns-server`) share: a wake-up their loop sleeps on, the
//! signals, and [`FileSource`], the manifest files as a [`Source`] of events.
//!
//! # How files are followed
//! The files' directories are watched with inotify (the `notify` crate), so an edit in
//! place, an atomic replace (write a temporary file, rename it over) and a delete followed
//! by a re-create are all seen. A file is read once it has been quiet for [`SETTLE`]
//! (50 ms), so that a writer's successive writes are read as one change. SIGHUP re-reads
//! every file. `-` (standard input) is read once, at start. Writing the new content to a
//! temporary file and renaming it over the old one is the safe way to change a file.
//!
//! # What is never applied
//! A read never replaces good state with a broken one; the file keeps its previous objects
//! and the problem is logged, until a later read succeeds:
//! - a file that cannot be read, or does not parse, or holds an invalid object;
//! - a file of zero bytes or only white space: that is what a writer truncating it to
//!   rewrite it leaves, so it is taken as "being written", not as "no objects";
//! - a file whose size or modification time changed while it was read (a writer is at
//!   work).
//!
//! A file being written (empty, or changing while read) is read again every 100 ms; after
//! two seconds of that the daemon logs an error and waits for the file's next change.
//! - objects defined twice (in one file or two).
//!
//! A file that parses to no objects but is not empty (`---`, or a `kind: List` with no
//! items) is applied: it says "nothing" on purpose. That is the way to remove every object
//! of a file while the daemon runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use service_core::cluster::Cluster;
use service_core::controller::ControllerConfig;
use service_core::manifest::{Located, Object, load_str};
use service_core::model::{EndpointSlice, Endpoints, Node, Pod, Service};
use service_core::tracker::{Event, Source, SourceError, TimedEvent};
use service_core::valid::ServiceKey;

/// What the daemon's loop sleeps on: woken by file changes and signals.
#[derive(Clone, Debug, Default)]
pub struct Wake(Arc<(Mutex<bool>, Condvar)>);

impl Wake {
    /// Wakes the sleeper (or makes its next sleep return at once).
    pub fn notify(&self) {
        let (flag, cond) = &*self.0;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cond.notify_all();
    }

    /// Sleeps until woken or until `deadline` (forever without one).
    pub fn wait_until(&self, deadline: Option<Instant>) {
        let (flag, cond) = &*self.0;
        let mut woken = flag.lock().unwrap_or_else(|e| e.into_inner());
        while !*woken {
            match deadline {
                None => woken = cond.wait(woken).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    woken = cond
                        .wait_timeout(woken, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        *woken = false;
    }
}

/// One daemon per network namespace and IP family: an exclusive `flock` on
/// `RUN_DIR/PROGRAM-FAMILY-netINODE.lock` (the inode names the network namespace, so
/// daemons of other namespaces do not conflict). The kernel drops the lock when the process
/// ends, however it ends; the file holds the holder's pid for the error message.
#[derive(Debug)]
pub struct NodeLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
    path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another daemon holds it.
    #[error(
        "another {program} (pid {pid}) already runs for {family} in this network namespace: it holds {path}; stop it first"
    )]
    Held {
        /// The program.
        program: String,
        /// The family.
        family: &'static str,
        /// The holder's pid, as it wrote it (`unknown` when unreadable).
        pid: String,
        /// The lock file.
        path: String,
    },
    /// The run directory or the lock file could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

impl NodeLock {
    /// The lock file's path for `program` and `family` in this network namespace.
    ///
    /// # Errors
    /// The namespace cannot be identified (`/proc/self/ns/net`).
    pub fn path(run_dir: &Path, program: &str, family: &str) -> Result<PathBuf, LockError> {
        use std::os::unix::fs::MetadataExt as _;
        let ns = "/proc/self/ns/net";
        let inode = std::fs::metadata(ns)
            .map_err(|source| LockError::Io {
                path: ns.into(),
                source,
            })?
            .ino();
        Ok(run_dir.join(format!("{program}-{family}-net{inode}.lock")))
    }

    /// Takes the lock, creating the run directory if needed.
    ///
    /// # Errors
    /// Another daemon holds it ([`LockError::Held`]), or the file cannot be created.
    pub fn acquire(run_dir: &Path, program: &str, family: &'static str) -> Result<Self, LockError> {
        use nix::fcntl::{Flock, FlockArg};
        use std::io::{Seek as _, Write as _};
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| LockError::Io { path, source }
        };
        std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
        let path = Self::path(run_dir, program, family)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "unknown".into());
                return Err(LockError::Held {
                    program: program.into(),
                    family,
                    pid,
                    path: path.display().to_string(),
                });
            }
            Err((_, e)) => return Err(io(&path)(e.into())),
        };
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(io(&path))?;
        Ok(Self { _lock: lock, path })
    }

    /// The lock file.
    pub fn file(&self) -> &Path {
        &self.path
    }
}

/// What a daemon follows: its signals, and its files read once (then followed; SIGHUP
/// re-reads them), waking `wake` for each.
///
/// # Errors
/// The exit status and the message: failure when the signal handlers cannot be installed,
/// [`crate::EXIT_INVALID`] when a file cannot be read or holds an invalid object.
pub fn follow(
    files: &[String],
    wake: &Wake,
) -> Result<(Signals, FileSource), (std::process::ExitCode, String)> {
    let signals = Signals::install(wake).map_err(|e| {
        (
            std::process::ExitCode::FAILURE,
            format!("cannot handle signals: {e}"),
        )
    })?;
    let source = FileSource::open(
        files,
        ControllerConfig::default(),
        wake,
        signals.reload.clone(),
    )
    .map_err(|e| (std::process::ExitCode::from(crate::EXIT_INVALID), e))?;
    Ok((signals, source))
}

/// The signals a daemon acts on: SIGTERM and SIGINT stop it, SIGHUP reloads.
#[derive(Clone, Debug)]
pub struct Signals {
    /// Raised by SIGTERM or SIGINT.
    pub stop: Arc<AtomicBool>,
    /// Raised by SIGHUP.
    pub reload: Arc<AtomicBool>,
}

impl Signals {
    /// Handles the signals on a thread of its own, waking `wake` for each.
    ///
    /// # Errors
    /// The handlers could not be installed.
    pub fn install(wake: &Wake) -> std::io::Result<Self> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let signals = Self {
            stop: Arc::new(AtomicBool::new(false)),
            reload: Arc::new(AtomicBool::new(false)),
        };
        let mut iter = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])?;
        let (stop, reload, wake) = (signals.stop.clone(), signals.reload.clone(), wake.clone());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in iter.forever() {
                    if sig == SIGHUP {
                        reload.store(true, Ordering::SeqCst);
                    } else {
                        stop.store(true, Ordering::SeqCst);
                    }
                    wake.notify();
                }
            })?;
        Ok(signals)
    }
}

/// The objects of the files, by kind and `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq)]
struct Objects {
    services: BTreeMap<ServiceKey, Service>,
    slices: BTreeMap<ServiceKey, EndpointSlice>,
    endpoints: BTreeMap<ServiceKey, Endpoints>,
    nodes: BTreeMap<String, Node>,
    pods: Vec<Pod>,
}

/// How long a file must be quiet after a change before it is read.
pub const SETTLE: Duration = Duration::from_millis(50);

/// How often a file being written is read again, and how many times.
const BUSY_RETRY: Duration = Duration::from_millis(100);
const BUSY_RETRIES: u32 = 20;

/// One input file and what it last held.
#[derive(Debug)]
struct Input {
    name: String,
    /// `None` for standard input.
    path: Option<PathBuf>,
    good: Vec<Located<Object>>,
    /// Reads in a row that found the file being written.
    busy: u32,
}

/// Why a file's new content is not used.
enum Refused {
    /// Try again shortly (a writer is at work).
    Busy(String),
    /// Keep the previous objects until the file changes again.
    Bad(String),
}

fn read_stable(path: &Path) -> Result<String, Refused> {
    let before = std::fs::metadata(path).map_err(|e| Refused::Bad(format!("{e}")))?;
    let text = std::fs::read_to_string(path).map_err(|e| Refused::Bad(format!("{e}")))?;
    let after = std::fs::metadata(path).map_err(|e| Refused::Bad(format!("{e}")))?;
    if before.modified().ok() != after.modified().ok() || after.len() != text.len() as u64 {
        return Err(Refused::Busy("it changed while being read".into()));
    }
    if text.trim().is_empty() {
        return Err(Refused::Busy(
            "it is empty (a writer may be rewriting it); write `---` to mean no objects".into(),
        ));
    }
    Ok(text)
}

/// Loads and validates one source's text; every problem is in the error.
fn load_text(name: &str, text: &str) -> Result<Vec<Located<Object>>, String> {
    let loaded = load_str(name, text).map_err(|e| e.to_string())?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let (_, invalid) = Cluster::from_objects(loaded.objects.clone());
    if !invalid.is_empty() {
        let errors: Vec<String> = invalid.iter().map(ToString::to_string).collect();
        return Err(errors.join("\n"));
    }
    Ok(loaded.objects)
}

/// The manifest files as a [`Source`]. See the [module docs](self).
pub struct FileSource {
    inputs: Vec<Input>,
    objects: Objects,
    /// When the watcher last saw one of the files change (cleared once read).
    changed: Arc<Mutex<Option<Instant>>>,
    reload: Arc<AtomicBool>,
    /// When to read again files that were being written.
    retry_at: Option<Instant>,
    controller: ControllerConfig,
    _watcher: Option<notify::RecommendedWatcher>,
    pending: Vec<TimedEvent>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field(
                "files",
                &self.inputs.iter().map(|i| &i.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Combines the files' objects into the cluster the daemons see: validated, defaulted,
/// EndpointSlices derived from Pods for Services that have none.
fn combine(inputs: &[Input], controller: ControllerConfig) -> Result<Objects, String> {
    let all = inputs.iter().flat_map(|i| i.good.iter().cloned());
    let (mut cluster, invalid) = Cluster::from_objects(all);
    if let Some(i) = invalid.first() {
        return Err(i.to_string());
    }
    cluster.derive_endpoint_slices(controller);
    let mut o = Objects::default();
    for s in cluster.services {
        let key = s.key.clone();
        if o.services.insert(key.clone(), s.object).is_some() {
            return Err(format!("Service {key} is defined more than once"));
        }
    }
    for s in cluster.endpoint_slices {
        let key = ServiceKey::new(s.metadata.namespace(), s.metadata.name());
        if o.slices.insert(key.clone(), s).is_some() {
            return Err(format!("EndpointSlice {key} is defined more than once"));
        }
    }
    for e in cluster.endpoints {
        let key = ServiceKey::new(e.metadata.namespace(), e.metadata.name());
        if o.endpoints.insert(key.clone(), e).is_some() {
            return Err(format!("Endpoints {key} is defined more than once"));
        }
    }
    for n in cluster.nodes {
        o.nodes.insert(n.metadata.name().to_owned(), n);
    }
    o.pods = cluster.pods;
    Ok(o)
}

/// The events that turn `old` into `new`.
fn diff(old: &Objects, new: &Objects, at: SystemTime) -> Vec<TimedEvent> {
    fn keyed<K: Ord + Clone, V: PartialEq + Clone>(
        old: &BTreeMap<K, V>,
        new: &BTreeMap<K, V>,
        upsert: impl Fn(V) -> Event,
        delete: impl Fn(K) -> Option<Event>,
        out: &mut Vec<Event>,
    ) {
        for (k, v) in new {
            if old.get(k) != Some(v) {
                out.push(upsert(v.clone()));
            }
        }
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            out.extend(delete(k.clone()));
        }
    }
    let mut out = Vec::new();
    keyed(
        &old.nodes,
        &new.nodes,
        Event::NodeUpdated,
        |_| None,
        &mut out,
    );
    keyed(
        &old.services,
        &new.services,
        Event::ServiceUpserted,
        |k| Some(Event::ServiceDeleted(k)),
        &mut out,
    );
    keyed(
        &old.slices,
        &new.slices,
        Event::EndpointSliceUpserted,
        |k| Some(Event::EndpointSliceDeleted(k)),
        &mut out,
    );
    keyed(
        &old.endpoints,
        &new.endpoints,
        Event::EndpointsUpserted,
        |k| Some(Event::EndpointsDeleted(k)),
        &mut out,
    );
    out.into_iter().map(|e| TimedEvent::new(e, at)).collect()
}

impl FileSource {
    /// Reads every file; the first events (every object as an upsert) are ready for
    /// [`Source::poll_events`]. File changes and `reload` (SIGHUP) wake `wake`.
    ///
    /// # Errors
    /// A file cannot be read or parsed, or holds an invalid object: the message lists
    /// every problem (file, document, object, field).
    pub fn open(
        files: &[String],
        controller: ControllerConfig,
        wake: &Wake,
        reload: Arc<AtomicBool>,
    ) -> Result<Self, String> {
        let mut inputs = Vec::new();
        let mut problems = Vec::new();
        for name in files {
            let (path, text) = if name == "-" {
                match std::io::read_to_string(std::io::stdin()) {
                    Ok(t) => (None, t),
                    Err(e) => {
                        problems.push(format!("reading standard input: {e}"));
                        continue;
                    }
                }
            } else {
                let path = PathBuf::from(name);
                match std::fs::read_to_string(&path) {
                    Ok(t) => (Some(path), t),
                    Err(e) => {
                        problems.push(format!("reading {name}: {e}"));
                        continue;
                    }
                }
            };
            match load_text(name, &text) {
                Ok(good) => inputs.push(Input {
                    name: name.clone(),
                    path,
                    good,
                    busy: 0,
                }),
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        let objects = combine(&inputs, controller)?;
        let changed = Arc::new(Mutex::new(None));
        let watcher = watch(&inputs, &changed, wake);
        let pending = diff(&Objects::default(), &objects, SystemTime::now());
        Ok(Self {
            inputs,
            objects,
            changed,
            reload,
            retry_at: None,
            controller,
            _watcher: watcher,
            pending,
        })
    }

    /// When [`Source::poll_events`] has work to do next (a file to read once it is quiet,
    /// or again because it was being written); `None` when only a file change or a signal
    /// can bring work. The daemon's loop sleeps until then at most.
    pub fn next_poll(&self) -> Option<Instant> {
        let settled = lock(&self.changed).map(|t| t + SETTLE);
        match (settled, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The Pods of the files as last read.
    pub fn pods(&self) -> &[Pod] {
        &self.objects.pods
    }

    /// The Node of this name in the files as last read.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.objects.nodes.get(name)
    }

    /// Re-reads the files (standard input excepted) and returns the events.
    fn reload(&mut self, now: Instant) -> Vec<TimedEvent> {
        let mut retry = false;
        let mut refused = false;
        for input in &mut self.inputs {
            let Some(path) = &input.path else { continue };
            let text = match read_stable(path) {
                Ok(t) => {
                    input.busy = 0;
                    t
                }
                Err(Refused::Busy(why)) => {
                    input.busy += 1;
                    if input.busy == 1 {
                        tracing::warn!("{}: {why}; reading it again shortly", input.name);
                        retry = true;
                    } else if input.busy < BUSY_RETRIES {
                        retry = true;
                    } else {
                        tracing::error!(
                            "{}: {why}, for {:?} now: keeping its previous objects until it changes",
                            input.name,
                            BUSY_RETRY * BUSY_RETRIES
                        );
                        input.busy = 0;
                    }
                    continue;
                }
                Err(Refused::Bad(why)) => {
                    input.busy = 0;
                    tracing::error!(
                        "reload failed: {}: {why}; keeping its previous objects",
                        input.name
                    );
                    refused = true;
                    continue;
                }
            };
            match load_text(&input.name, &text) {
                Ok(good) => input.good = good,
                Err(e) => {
                    tracing::error!(
                        "reload failed: keeping the previous objects of {}:\n{e}",
                        input.name
                    );
                    refused = true;
                }
            }
        }
        self.retry_at = retry.then(|| now + BUSY_RETRY);
        match combine(&self.inputs, self.controller) {
            Ok(next) => {
                let events = diff(&self.objects, &next, SystemTime::now());
                if events.is_empty() {
                    if !refused {
                        tracing::debug!("files read: nothing changed");
                    }
                } else {
                    tracing::info!("files read: {} objects changed", events.len());
                }
                self.objects = next;
                events
            }
            Err(e) => {
                tracing::error!("reload failed: {e}; keeping the previous objects");
                Vec::new()
            }
        }
    }
}

fn lock<T: Copy>(m: &Mutex<T>) -> T {
    *m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Watches the files' directories; a change to one of the files sets `changed` to now.
fn watch(
    inputs: &[Input],
    changed: &Arc<Mutex<Option<Instant>>>,
    wake: &Wake,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher as _};
    let names: BTreeSet<PathBuf> = inputs
        .iter()
        .filter_map(|i| i.path.as_ref())
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    if names.is_empty() {
        return None;
    }
    let dirs: BTreeSet<PathBuf> = names
        .iter()
        .filter_map(|p| p.parent().map(Path::to_path_buf))
        .collect();
    let (flag, wake_) = (changed.clone(), wake.clone());
    let watched = names;
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            use notify::EventKind;
            use notify::event::{AccessKind, AccessMode};
            let ours = match &res {
                // Our own reads show as opens and reads: not a change.
                Ok(event)
                    if matches!(event.kind, EventKind::Access(a)
                        if a != AccessKind::Close(AccessMode::Write)) =>
                {
                    false
                }
                Ok(event) => event.paths.iter().any(|p| watched.contains(p)),
                // Overflowed or failed: re-read to be sure.
                Err(_) => true,
            };
            if ours {
                *flag.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                wake_.notify();
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!("cannot watch the files ({e}): only SIGHUP reloads them");
                return None;
            }
        };
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::error!(
                "cannot watch {}: {e}; only SIGHUP reloads its files",
                dir.display()
            );
        }
    }
    Some(watcher)
}

impl Source for FileSource {
    /// The first events; then, once a changed file has been quiet for [`SETTLE`] (or on
    /// SIGHUP, or when a file being written is due to be read again), the events that
    /// turn the objects last read into the files' new ones.
    fn poll_events(&mut self) -> Result<Vec<TimedEvent>, SourceError> {
        let mut events = std::mem::take(&mut self.pending);
        let now = Instant::now();
        let hup = self.reload.swap(false, Ordering::SeqCst);
        let settled = {
            let mut changed = self.changed.lock().unwrap_or_else(|e| e.into_inner());
            match *changed {
                Some(t) if now >= t + SETTLE => {
                    *changed = None;
                    true
                }
                _ => false,
            }
        };
        let retry = self.retry_at.is_some_and(|t| now >= t);
        if hup || settled || retry {
            events.extend(self.reload(now));
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
";

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(tag: &str) -> (Dir, PathBuf, FileSource, Wake) {
        let dir = std::env::temp_dir().join(format!("filesource-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cluster.yaml");
        std::fs::write(&file, WEB).unwrap();
        let wake = Wake::default();
        let mut source = FileSource::open(
            &[file.display().to_string()],
            ControllerConfig::default(),
            &wake,
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        let first = source.poll_events().unwrap();
        assert!(
            matches!(&first[..], [e] if matches!(&e.event, Event::ServiceUpserted(s) if s.spec.cluster_ip.as_deref() == Some("10.96.0.10")))
        );
        (Dir(dir), file, source, wake)
    }

    /// Polls as the daemon does until events come or `within` passes.
    fn events(source: &mut FileSource, wake: &Wake, within: Duration) -> Vec<Event> {
        let deadline = Instant::now() + within;
        loop {
            let out = source.poll_events().unwrap();
            if !out.is_empty() || Instant::now() >= deadline {
                return out.into_iter().map(|e| e.event).collect();
            }
            let next = source.next_poll().map_or(deadline, |t| t.min(deadline));
            wake.wait_until(Some(next));
        }
    }

    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn an_atomic_replace_is_read_once_quiet() {
        let (_dir, file, mut source, wake) = setup("replace");
        replace(&file, &WEB.replace("port: 80", "port: 81"));
        let ev = events(&mut source, &wake, Duration::from_secs(5));
        assert!(
            matches!(&ev[..], [Event::ServiceUpserted(s)] if s.spec.ports[0].port == 81),
            "{ev:?}"
        );
        // Reading the file is not a change of it: nothing more to do, no wake-up due.
        std::thread::sleep(SETTLE * 3);
        assert_eq!(source.poll_events().unwrap(), vec![]);
        assert_eq!(
            source.next_poll(),
            None,
            "the daemon would read again and again"
        );
    }

    #[test]
    fn an_emptied_file_keeps_its_objects_until_it_has_content_again() {
        let (_dir, file, mut source, wake) = setup("empty");
        for empty in ["", "  \n\n"] {
            std::fs::write(&file, empty).unwrap();
            assert_eq!(
                events(&mut source, &wake, Duration::from_millis(600)),
                vec![],
                "{empty:?}"
            );
            // Still retrying while the writer might be at work.
            assert!(source.next_poll().is_some());
        }
        // After the retries, it waits for the next change without spinning.
        assert_eq!(events(&mut source, &wake, Duration::from_secs(3)), vec![]);
        assert_eq!(source.next_poll(), None);
        // Content again: read at once.
        std::fs::write(&file, WEB.replace("port: 80", "port: 82")).unwrap();
        let ev = events(&mut source, &wake, Duration::from_secs(5));
        assert!(
            matches!(&ev[..], [Event::ServiceUpserted(s)] if s.spec.ports[0].port == 82),
            "{ev:?}"
        );
    }

    #[test]
    fn a_truncated_or_invalid_file_keeps_its_objects() {
        let (_dir, file, mut source, wake) = setup("invalid");
        for broken in [
            // Cut in the middle of a mapping.
            &WEB[..WEB.find("ports").unwrap() + 8],
            // Parses, but the object is invalid.
            &WEB.replace("10.96.0.10", "10.96.0.999"),
            // Cut inside a flow sequence.
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: sh",
        ] {
            std::fs::write(&file, broken).unwrap();
            assert_eq!(
                events(&mut source, &wake, Duration::from_millis(500)),
                vec![],
                "{broken}"
            );
        }
        // A file that is gone keeps its objects too, until it is back.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            events(&mut source, &wake, Duration::from_millis(500)),
            vec![]
        );
        replace(&file, WEB);
        assert_eq!(
            events(&mut source, &wake, Duration::from_millis(800)),
            vec![],
            "back as it was: nothing changed"
        );
    }

    #[test]
    fn a_file_that_says_nothing_on_purpose_removes_its_objects() {
        let (_dir, file, mut source, wake) = setup("nothing");
        replace(&file, "---\n");
        let ev = events(&mut source, &wake, Duration::from_secs(5));
        assert!(
            matches!(&ev[..], [Event::ServiceDeleted(k)] if k.to_string() == "shop/web"),
            "{ev:?}"
        );
    }
}
