//! Socket options that neither the standard library nor socket2 offers.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// The user ID and process ID of the process at the other end of a connected Unix socket
/// (`SO_PEERCRED`).
pub fn peer_credentials(socket: &impl AsRawFd) -> io::Result<(u32, u32)> {
    let mut credentials = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `credentials` is a live ucred and `len` its exact size; the kernel writes at most
    // `len` bytes into it and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut credentials).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok((credentials.uid, u32::try_from(credentials.pid).unwrap_or(0)))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Attach a classic BPF program choosing the socket of `socket`'s reuseport group
/// (`SO_ATTACH_REUSEPORT_CBPF`); it replaces any program attached before.
pub fn attach_reuseport_program(socket: &UdpSocket, program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fprog = libc::sock_fprog { len, filter: program.as_ptr().cast_mut() };
    // SAFETY: `fprog` points at `program` with its exact length; both live until setsockopt
    // returns, which copies the program into the kernel (the kernel never writes through the
    // pointer); the option size matches the structure passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
