//! When a load server stops: its standard input closes (the process that started it is gone) or
//! it gets SIGTERM or SIGINT.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

/// How often the waiting thread looks at standard input's watcher.
const POLL: Duration = Duration::from_millis(100);

/// SIGINT and SIGTERM, blocked in every thread and taken synchronously by the one that waits.
#[derive(Debug)]
pub struct ShutdownSignals {
    set: libc::sigset_t,
    stdin_closed: Arc<AtomicBool>,
}

impl ShutdownSignals {
    /// Block the signals in this thread, which every thread started afterwards inherits (so none
    /// of them dies of the default action), and watch standard input for its end.
    pub fn block() -> Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live sigset_t; the signal numbers are valid; pthread_sigmask only
        // reads `set` and changes this thread's mask.
        let rc = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!("cannot block SIGINT/SIGTERM: {}", std::io::Error::from_raw_os_error(rc));
        }
        let stdin_closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stdin_closed);
        std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            // Ends at EOF or on a read error: either way nobody can talk to us any more.
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            flag.store(true, Ordering::Release);
        })?;
        Ok(Self { set, stdin_closed })
    }

    /// Wait until standard input closes or a signal arrives; says which.
    pub fn wait(&self) -> String {
        loop {
            if self.stdin_closed.load(Ordering::Acquire) {
                return "standard input closed".into();
            }
            let ts = libc::timespec { tv_sec: 0, tv_nsec: libc::c_long::from(POLL.subsec_nanos() as i32) };
            // SAFETY: `self.set` and `ts` are initialised and outlive the call; no siginfo is asked for.
            let rc = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
            if rc == libc::SIGTERM {
                return "SIGTERM".into();
            }
            if rc == libc::SIGINT {
                return "SIGINT".into();
            }
        }
    }
}
