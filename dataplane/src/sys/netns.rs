//! Network namespaces: moving the calling thread into one (setns(2)). The node never does;
//! the veth benchmarks put their sockets and the relay node's threads in the namespaces they made.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Move the calling thread, and only it, into the network namespace at `path` (for a named
/// namespace, `/var/run/netns/NAME`). Threads it starts afterwards are created in it.
pub fn enter(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: `file` is an open descriptor for the whole call; CLONE_NEWNET restricts setns to
    // a network namespace and changes only the calling thread's.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
