//! Processes: this one's user ID, clock and open-files limit, signals to others, and a seccomp
//! filter for a child.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The effective user ID of this process.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// Send `signal` to the process `pid` (never to a process group: pid 0 and pids beyond
/// `i32::MAX` are refused).
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a single process id"))?;
    // SAFETY: kill(2) has no memory arguments.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of the CPU times in `/proc`.
pub fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf reads a configuration value and has no memory arguments.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0)
}

/// Raise this process's soft limit of open files (`RLIMIT_NOFILE`) to its hard limit, which an
/// unprivileged process may do; returns the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit that setrlimit only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Make `command`'s process run under the seccomp `filter` (with `PR_SET_NO_NEW_PRIVS`, which an
/// unprivileged process needs to install one), installed between fork and exec.
pub fn seccomp_filter_on_exec(command: &mut Command, filter: Vec<libc::sock_filter>) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe; `filter` is moved into the closure and outlives both calls.
    unsafe {
        command.pre_exec(move || {
            let len = u16::try_from(filter.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let program = libc::sock_fprog { len, filter: filter.as_ptr().cast_mut() };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &raw const program) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
