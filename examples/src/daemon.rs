//! What the daemons (`proxy`, `dns-server`) share: a wake-up their loop sleeps on, the
//! signals, and [`FileSource`], the manifest files as a [`Source`] of events.
//!
//! # How files are followed
//! The files' directories are watched with inotify (the `notify` crate), so an edit in
//! place, an atomic replace (write a temporary file, rename it over) and a delete followed
//! by a re-create are all seen. SIGHUP re-reads every file. `-` (standard input) is read
//! once, at start.
//!
//! # What is never applied
//! A read never replaces good state with a broken one; the file keeps its previous objects
//! and the problem is logged, until a later read succeeds:
//! - a file that cannot be read, or does not parse, or holds an invalid object;
//! - a file of zero bytes: that is what a writer truncating it to rewrite it leaves, so it
//!   is taken as "being written", not as "no objects";
//! - a file whose size or modification time changed while it was read (a writer is at
//!   work): it is read again 100 ms later;
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

/// One input file and what it last held.
#[derive(Debug)]
struct Input {
    name: String,
    /// `None` for standard input.
    path: Option<PathBuf>,
    good: Vec<Located<Object>>,
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
    if text.is_empty() {
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
    changed: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    wake: Wake,
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
                }),
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        let objects = combine(&inputs, controller)?;
        let changed = Arc::new(AtomicBool::new(false));
        let watcher = watch(&inputs, &changed, wake);
        let pending = diff(&Objects::default(), &objects, SystemTime::now());
        Ok(Self {
            inputs,
            objects,
            changed,
            reload,
            wake: wake.clone(),
            controller,
            _watcher: watcher,
            pending,
        })
    }

    /// The Pods of the files as last read.
    pub fn pods(&self) -> &[Pod] {
        &self.objects.pods
    }

    /// Re-reads the files (standard input excepted) and returns the events.
    fn reload(&mut self) -> Vec<TimedEvent> {
        let mut retry = false;
        let mut refused = false;
        for input in &mut self.inputs {
            let Some(path) = &input.path else { continue };
            let text = match read_stable(path) {
                Ok(t) => t,
                Err(Refused::Busy(why)) => {
                    tracing::warn!("{}: {why}; reading it again shortly", input.name);
                    retry = true;
                    continue;
                }
                Err(Refused::Bad(why)) => {
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
        if retry {
            let (changed, wake) = (self.changed.clone(), self.wake.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                changed.store(true, Ordering::SeqCst);
                wake.notify();
            });
        }
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

/// Watches the files' directories; a change to one of the files raises `changed`.
fn watch(
    inputs: &[Input],
    changed: &Arc<AtomicBool>,
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
            let ours = match &res {
                Ok(event) => event.paths.iter().any(|p| watched.contains(p)),
                // Overflowed or failed: re-read to be sure.
                Err(_) => true,
            };
            if ours {
                flag.store(true, Ordering::SeqCst);
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
    fn poll_events(&mut self) -> Result<Vec<TimedEvent>, SourceError> {
        let mut events = std::mem::take(&mut self.pending);
        let hup = self.reload.swap(false, Ordering::SeqCst);
        let changed = self.changed.swap(false, Ordering::SeqCst);
        if hup || changed {
            events.extend(self.reload());
        }
        Ok(events)
    }
}
