//! Where io_uring is unavailable (here: a seccomp filter refusing io_uring_setup, as container
//! runtimes install), the node falls back to the portable backend and says why in one log line;
//! forcing io-uring there is a clear startup error instead.

mod common;

use std::process::Command;
use std::time::Duration;

use ant_quic::dataplane::sys::process::seccomp_filter_on_exec;
use common::{NodeProcess, TempDir, NODE_BIN};

/// Make `command` run with io_uring_setup refused with EPERM.
fn without_io_uring(command: &mut Command) -> &mut Command {
    let filter = [
        // Load the system call number (offset 0 of struct seccomp_data).
        libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: 0 },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },
    ];
    seccomp_filter_on_exec(command, filter.to_vec())
}

#[test]
fn falls_back_to_portable_with_one_line_saying_why() {
    let dir = TempDir::new("fallback").unwrap();
    let data_dir = dir.path().join("node");
    let mut command = Command::new(NODE_BIN);
    command.args(["--listen", "127.0.0.1:0", "--data-dir", data_dir.to_str().unwrap()]);
    let mut node = NodeProcess::start(without_io_uring(&mut command), dir.path()).unwrap();
    assert!(node.banner.contains("backend portable"), "{}", node.banner);
    let stderr = node.stderr();
    let reasons: Vec<&str> = stderr.lines().filter(|l| l.contains("io_uring unavailable")).collect();
    assert_eq!(reasons.len(), 1, "expected one line saying why, got:\n{stderr}");
    assert!(reasons[0].contains("portable backend"), "{}", reasons[0]);

    // The fallback node works: a client (with io_uring) fetches from it.
    let www_dir = TempDir::new("fallback-www").unwrap();
    std::fs::write(www_dir.path().join("f"), b"served by the portable backend").unwrap();
    node.stop_with(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    let mut command = Command::new(NODE_BIN);
    command.args(["--listen", "127.0.0.1:0", "--data-dir", data_dir.to_str().unwrap()]);
    command.args(["--www", www_dir.path().to_str().unwrap()]);
    let node = NodeProcess::start(without_io_uring(&mut command), dir.path()).unwrap();
    let out = dir.path().join("out");
    let get = Command::new(NODE_BIN)
        .args(["get", &format!("https://{}/f", node.addr), "--output", out.to_str().unwrap(), "--insecure"])
        .output()
        .unwrap();
    assert!(get.status.success(), "{}", String::from_utf8_lossy(&get.stdout));
    assert_eq!(std::fs::read(out.join("f")).unwrap(), b"served by the portable backend");
}

#[test]
fn forcing_an_unavailable_backend_is_a_startup_error() {
    let dir = TempDir::new("forced").unwrap();
    let mut command = Command::new(NODE_BIN);
    command.args(["--listen", "127.0.0.1:0", "--backend", "io-uring"]);
    command.args(["--data-dir", dir.path().join("node").to_str().unwrap()]);
    let output = without_io_uring(&mut command).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("io-uring unavailable"), "{}", errors[0]);
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).is_empty(), "a node that cannot start must not announce itself");
}
