//! When a load server stops: its standard input closes (the process that started it is gone) or
//! it gets SIGTERM or SIGINT.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ant_quic_dataplane::sys::signal::BlockedSignals;
use anyhow::{anyhow, Result};

/// How often the waiting thread looks at standard input's watcher.
const POLL: Duration = Duration::from_millis(100);

/// SIGINT and SIGTERM, blocked in every thread and taken synchronously by the one that waits.
#[derive(Debug)]
pub struct ShutdownSignals {
    signals: BlockedSignals,
    stdin_closed: Arc<AtomicBool>,
}

impl ShutdownSignals {
    /// Block the signals in this thread, which every thread started afterwards inherits (so none
    /// of them dies of the default action), and watch standard input for its end.
    pub fn block() -> Result<Self> {
        let signals = BlockedSignals::block(&[libc::SIGINT, libc::SIGTERM])
            .map_err(|error| anyhow!("cannot block SIGINT/SIGTERM: {error}"))?;
        let stdin_closed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stdin_closed);
        std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            // Ends at EOF or on a read error: either way nobody can talk to us any more.
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            flag.store(true, Ordering::Release);
        })?;
        Ok(Self { signals, stdin_closed })
    }

    /// Wait until standard input closes or a signal arrives; says which.
    pub fn wait(&self) -> String {
        loop {
            if self.stdin_closed.load(Ordering::Acquire) {
                return "standard input closed".into();
            }
            let signal = self.signals.wait(Some(POLL));
            if signal == Some(libc::SIGTERM) {
                return "SIGTERM".into();
            }
            if signal == Some(libc::SIGINT) {
                return "SIGINT".into();
            }
        }
    }
}
