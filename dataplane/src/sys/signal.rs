//! Signals taken synchronously: blocked in the calling thread (and so in every thread it starts
//! afterwards), then waited for with `sigwaitinfo`/`sigtimedwait` instead of a handler.

use std::io;
use std::time::Duration;

/// A set of signals blocked in the thread that created it, to be taken with [`Self::wait`].
#[derive(Clone, Copy)]
pub struct BlockedSignals {
    set: libc::sigset_t,
}

impl std::fmt::Debug for BlockedSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockedSignals").finish_non_exhaustive()
    }
}

impl BlockedSignals {
    /// Block `signals` in the calling thread; threads it starts afterwards inherit the mask, so
    /// none of them dies of a signal's default action.
    pub fn block(signals: &[libc::c_int]) -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live sigset_t; sigemptyset and sigaddset only write it.
        if unsafe { libc::sigemptyset(&mut set) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for &signal in signals {
            // SAFETY: as above; an invalid signal number is refused with EINVAL.
            if unsafe { libc::sigaddset(&mut set, signal) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `set` is an initialised sigset_t; pthread_sigmask only reads it and changes
        // this thread's mask; no old mask is asked for.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Self { set })
    }

    /// Wait for one of the signals (returns its number), or until `timeout` passes (`None`: no
    /// timeout). A wait interrupted by another signal starts again.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<libc::c_int> {
        loop {
            let rc = match timeout {
                // SAFETY: `self.set` is an initialised sigset_t; no siginfo is asked for.
                None => unsafe { libc::sigwaitinfo(&self.set, std::ptr::null_mut()) },
                Some(timeout) => {
                    let ts = libc::timespec {
                        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
                        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
                    };
                    // SAFETY: `self.set` and `ts` are initialised and outlive the call.
                    unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) }
                }
            };
            if rc > 0 {
                return Some(rc);
            }
            if io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
                return None;
            }
        }
    }
}
