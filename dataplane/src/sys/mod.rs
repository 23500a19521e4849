//! Every system call that needs `unsafe`, behind safe functions and types that keep the kernel's
//! invariants themselves. The rest of the workspace forbids unsafe code (`dataplane` denies it
//! outside this module), so the CLI, perf and the tests call these instead of keeping copies.
//!
//! - [`socket`]: socket options the standard library and socket2 do not offer (reuseport BPF,
//!   peer credentials).
//! - `cmsg`: control messages of UDP sends and receives, and raw socket addresses.
//! - [`interfaces`]: the host's interface addresses (getifaddrs).
//! - [`poll`]: poll(2) and the eventfd [`poll::Waker`] that ends a wait.
//! - [`netns`]: entering a network namespace from a thread (the veth benchmarks).
//! - [`thread`]: CPU affinity and timer slack of the calling thread.
//! - [`signal`]: blocking signals and taking them synchronously.
//! - [`process`]: user IDs, signals to other processes, clock ticks, seccomp for a child.
//! - `uring`: the io_uring ring and all memory the kernel reads or writes through it.
//! - [`bpf`]: bpf(2): maps, loading and test-running eBPF programs, XDP links.
//! - [`xdp`]: AF_XDP sockets, their UMEM and rings; interface index and RX queue count.

#![allow(unsafe_code)]

#[cfg(target_os = "linux")]
pub mod bpf;
#[cfg(target_os = "linux")]
pub(crate) mod cmsg;
#[cfg(target_os = "linux")]
pub mod interfaces;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod poll;
pub mod process;
pub mod signal;
pub mod socket;
pub mod thread;
#[cfg(target_os = "linux")]
pub(crate) mod uring;
#[cfg(target_os = "linux")]
pub mod xdp;
