//! Opening sockets in another network namespace without moving the caller's thread.

use std::io;
use std::path::Path;

/// Runs `open` on a short-lived thread that has entered the network namespace at `path`
/// (e.g. `/run/netns/NAME`): sockets it creates stay in that namespace.
pub(crate) fn open_in<T: Send + 'static>(
    path: &Path,
    open: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = path.to_owned();
    std::thread::spawn(move || -> io::Result<T> {
        let ns = std::fs::File::open(&path)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        open()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}
