//! poll(2) on a set of descriptors, and the eventfd [`Waker`] other threads use to end a wait.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Wait until one of `fds` has an event it asks for, or `timeout` passes (`None`: no timeout; a
/// timeout is rounded up to whole milliseconds, so that a short one never becomes a busy loop).
/// Returns how many descriptors have events in their `revents`; an interrupted wait counts as a
/// timeout (0, every `revents` empty).
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let timeout_ms = match timeout {
        None => -1,
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    for fd in fds.iter_mut() {
        fd.revents = 0;
    }
    let count = libc::nfds_t::try_from(fds.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `fds` is a live, initialised slice of pollfd structs and `count` its exact length;
    // poll(2) writes only their `revents` fields, before it returns.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout_ms) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(error) };
    }
    Ok(usize::try_from(rc).unwrap_or(0))
}

/// A pollfd asking whether `fd` is readable.
pub fn readable(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

/// An eventfd other threads write to wake a thread sleeping in poll(2) or io_uring.
#[derive(Debug)]
pub struct Waker {
    eventfd: File,
}

impl Waker {
    /// A new non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory arguments; a non-negative result is a new fd.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { eventfd: File::from(owned) })
    }

    /// The fd a waiting thread polls for readability.
    pub fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Wake the waiting thread. Never blocks; a full counter means a wake-up is already pending.
    pub fn wake(&self) {
        let _ = (&self.eventfd).write(&1u64.to_ne_bytes());
    }

    /// Reset the counter after waking; says whether a wake-up was pending.
    pub fn drain(&self) -> bool {
        let mut value = [0u8; 8];
        matches!((&self.eventfd).read(&mut value), Ok(8))
    }
}
