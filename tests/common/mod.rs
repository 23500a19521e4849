//! Shared pieces of the integration tests: scratch directories and child processes (the
//! `ant-quic` binary, or any other program) that are killed and reaped on every path.
//!
//! Helpers return `anyhow::Result`; tests use `?` or unwrap.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ant_quic::dataplane::sys::process::send_signal;
use anyhow::{bail, ensure, Context, Result};

pub mod fault_proxy;
pub mod natlab;
pub mod prerequisite;

#[allow(unused_imports)] // each test binary uses a part of them
pub use prerequisite::{installed, is_root, require};

/// Whether a node can run on af-xdp in namespaces of the test's own: root, `ip`, `ethtool`,
/// `ping`, `curl`, and a kernel that lets us create an XSKMAP; see [`require`] for a missing one.
#[cfg(target_os = "linux")]
pub fn af_xdp_lab_here() -> bool {
    require(is_root(), "root (the test attaches XDP programs and creates network namespaces)").unwrap()
        && require(
            ["ip", "ethtool", "ping", "curl"].iter().all(|p| installed(p).is_some()),
            "`ip`, `ethtool`, `ping` and `curl` (Debian packages iproute2, ethtool, iputils-ping, curl; \
             scripts/test.sh installs them)",
        )
        .unwrap()
        && prerequisite::require_ok(
            ant_quic::dataplane::sys::bpf::Map::xsk(1, "probe").map(drop),
            "BPF maps of type XSKMAP (CAP_BPF)",
        )
        .unwrap()
}

/// The node binary under test.
pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_ant-quic");

/// A workspace binary in the node binary's profile directory (`relative`: e.g.
/// `examples/p2p_file`), built there with `cargo build` and `build` (package and target) when
/// it is missing, in the same profile.
pub fn workspace_bin(relative: &str, build: &[&str]) -> Result<PathBuf> {
    let profile_dir = Path::new(NODE_BIN).parent().context("node binary directory")?;
    let bin = profile_dir.join(relative);
    if bin.is_file() {
        return Ok(bin);
    }
    let target_dir = profile_dir.parent().context("target directory")?;
    let profile = profile_dir.file_name().and_then(|p| p.to_str()).context("profile directory name")?;
    let profile = if profile == "debug" { "dev" } else { profile };
    let status = Command::new(env!("CARGO"))
        .arg("build")
        .args(build)
        .args(["--profile", profile])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .with_context(|| format!("running cargo build {}", build.join(" ")))?;
    ensure!(status.success() && bin.is_file(), "cargo build {} failed ({status})", build.join(" "));
    Ok(bin)
}

/// How long a node may take to announce its address.
const NODE_STARTUP: Duration = Duration::from_secs(20);

/// A fresh directory under `target/tmp`, removed when dropped (unless [`TempDir::keep_unless_passed`]).
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(name: &str) -> Result<Self> {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path, keep: false })
    }

    /// Keep the directory (and print where it is) when dropped before [`TempDir::passed`]: a
    /// failed test leaves its files and logs behind.
    pub fn keep_unless_passed(mut self) -> Self {
        self.keep = true;
        self
    }

    pub fn passed(&mut self) {
        self.keep = false;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The subdirectory `name`, created.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("test files and logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Lines of a child's stdout, read by a thread for the child's whole life (so it never blocks on
/// a full pipe): delivered on a channel and kept in a transcript.
struct LineReader {
    rx: mpsc::Receiver<String>,
    transcript: Arc<Mutex<Vec<String>>>,
}

impl LineReader {
    fn spawn(stream: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&transcript);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut t) = keep.lock() {
                    t.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        Self { rx, transcript }
    }

    /// The next line; `None` once the stream is closed; an error at `deadline`.
    fn next(&self, deadline: Instant) -> Result<Option<String>> {
        match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => Ok(Some(line)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("timed out"),
        }
    }

    /// Wait (until `deadline`) for the stream to close: the transcript is then complete.
    fn wait_closed(&self, deadline: Instant) -> Result<()> {
        while self.next(deadline)?.is_some() {}
        Ok(())
    }

    fn transcript(&self) -> String {
        self.transcript.lock().map(|t| t.join("\n")).unwrap_or_default()
    }
}

/// A child process with stdin closed, stdout read line by line and stderr in `LOGS/NAME.stderr`;
/// killed (SIGKILL) and reaped when dropped unless it already exited.
pub struct Process {
    name: String,
    child: Child,
    stdout: LineReader,
    stderr: Stderr,
}

/// Where a [`Process`]'s stderr goes.
enum Stderr {
    Log(PathBuf),
    /// A pipe nobody reads: once full (64 KiB) it blocks the writer.
    Unread(ChildStderr),
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command, logs: &Path) -> Result<Self> {
        let stderr_log = logs.join(format!("{name}.stderr"));
        let stderr =
            std::fs::File::create(&stderr_log).with_context(|| format!("creating {}", stderr_log.display()))?;
        let (child, stdout) = Self::start(name, command.stderr(stderr))?;
        Ok(Self { name: name.to_owned(), child, stdout, stderr: Stderr::Log(stderr_log) })
    }

    /// As [`Process::spawn`], but stderr is a pipe that nobody reads (a stalled log sink).
    pub fn spawn_with_unread_stderr(name: &str, command: &mut Command) -> Result<Self> {
        let (mut child, stdout) = Self::start(name, command.stderr(Stdio::piped()))?;
        let pipe = child.stderr.take().context("no stderr pipe")?;
        Ok(Self { name: name.to_owned(), child, stdout, stderr: Stderr::Unread(pipe) })
    }

    fn start(name: &str, command: &mut Command) -> Result<(Child, LineReader)> {
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = command.spawn().with_context(|| format!("spawning {name}: {command:?}"))?;
        let stdout = LineReader::spawn(child.stdout.take().context("no stdout pipe")?);
        Ok((child, stdout))
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Everything the process wrote to stderr so far (nothing for an unread pipe).
    pub fn stderr(&self) -> String {
        match &self.stderr {
            Stderr::Log(path) => std::fs::read_to_string(path).unwrap_or_default(),
            Stderr::Unread(_) => String::new(),
        }
    }

    /// The first stdout line, within `limit`, for which `pick` returns a value.
    pub fn stdout_line<T>(&mut self, limit: Duration, mut pick: impl FnMut(&str) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + limit;
        let cause = loop {
            match self.stdout.next(deadline) {
                Ok(Some(line)) => {
                    if let Some(found) = pick(&line) {
                        return Ok(found);
                    }
                }
                Ok(None) => break "closed its stdout".to_owned(),
                Err(_) => break format!("printed no such line within {limit:?}"),
            }
        };
        // A process that closed its stdout is exiting: give it a moment to report its status.
        let status = self.wait_for(Duration::from_millis(200))?;
        bail!(
            "{} {cause} (exit status {status:?})\nstdout:\n{}\nstderr:\n{}",
            self.name,
            self.stdout.transcript(),
            self.stderr()
        )
    }

    /// Wait for the exit, at most `limit`; `None` if it is still running then.
    fn wait_for(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        // The pid of a child we have not reaped yet (it cannot be reused).
        send_signal(self.child.id(), signal).with_context(|| format!("kill({}, {signal})", self.pid()))
    }

    /// Send `signal` and require exit status 0 within `limit`; returns how long it took.
    pub fn stop_with(&mut self, signal: libc::c_int, limit: Duration) -> Result<Duration> {
        let sent = Instant::now();
        self.signal(signal)?;
        let status = self.wait_for(limit)?;
        let took = sent.elapsed();
        let name = &self.name;
        match status {
            None => bail!("{name} still running {limit:?} after signal {signal}\nstderr:\n{}", self.stderr()),
            Some(status) if status.code() == Some(0) => Ok(took),
            Some(status) => bail!("{name} exited with {status} after signal {signal}\nstderr:\n{}", self.stderr()),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What a process that ran to completion printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `command` (as [`Process::spawn`]) to completion; an error, with the process killed, if it
/// is still running after `limit`.
pub fn run(name: &str, command: &mut Command, logs: &Path, limit: Duration) -> Result<Finished> {
    let mut process = Process::spawn(name, command, logs)?;
    let Some(status) = process.wait_for(limit)? else {
        bail!(
            "{name} still running after {limit:?}; killed\nstdout:\n{}\nstderr:\n{}",
            process.stdout.transcript(),
            process.stderr()
        );
    };
    // All of stdout (bounded: a grandchild could hold the pipe open).
    let closed = process.stdout.wait_closed(Instant::now() + Duration::from_secs(5));
    closed.with_context(|| format!("{name} exited but its stdout stays open"))?;
    Ok(Finished { status, stdout: process.stdout.transcript(), stderr: process.stderr() })
}

/// `listening on (\S+)` → the socket address, from one line of node output.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let token = rest.split_whitespace().next()?;
    token.parse().ok().or_else(|| token.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok())
}

/// A running `ant-quic` node (a [`Process`] named `node`) that announced its peer ID and address.
pub struct NodeProcess {
    process: Process,
    pub addr: SocketAddr,
    /// From the line `ant-quic BUILD peer id HEX`; empty if the node printed none.
    pub peer_id: String,
    /// The line announcing the address, backend and crypto provider.
    pub banner: String,
}

impl NodeProcess {
    /// Start a prepared node command (arguments, environment, pre-exec hooks); stderr goes to
    /// `LOGS/node.stderr`. Waits (at most 20 s) for the `listening on ADDR` line.
    pub fn start(command: &mut Command, logs: &Path) -> Result<Self> {
        Self::ready(Process::spawn("node", command, logs)?)
    }

    /// Wait (at most 20 s) for a node process started otherwise to announce its address.
    pub fn ready(mut process: Process) -> Result<Self> {
        let mut peer_id = String::new();
        let (addr, banner) = process
            .stdout_line(NODE_STARTUP, |line| {
                if let Some(rest) = line.split("peer id ").nth(1) {
                    peer_id = rest.trim().to_owned();
                }
                parse_listening(line).map(|addr| (addr, line.to_owned()))
            })
            .context("the node did not announce `listening on ADDR`")?;
        Ok(Self { process, addr, peer_id, banner })
    }

    /// The admin HTTP address from the `admin http on ADDR` line (waiting for it at most 20 s).
    /// Usually the UDP port's number, but any free port when that is taken on TCP and the node
    /// listens on port 0. Read from the transcript: the line stays for `stdout_line`.
    pub fn admin(&self) -> Result<SocketAddr> {
        let deadline = Instant::now() + NODE_STARTUP;
        loop {
            let transcript = self.process.stdout.transcript();
            let found = transcript
                .lines()
                .find_map(|l| l.strip_prefix("admin http on ")?.split_whitespace().next()?.parse().ok());
            if let Some(admin) = found {
                return Ok(admin);
            }
            ensure!(Instant::now() < deadline, "the node printed no `admin http on ADDR`:\n{transcript}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Deref for NodeProcess {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for NodeProcess {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// Random bytes from the kernel.
pub fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// `GET path` on `addr`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_owned())
}

/// The value of the sample `series` (name and labels exactly as exposed); `None` when the series
/// is absent (a misspelt name must not read as 0).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap_or_else(|e| panic!("{series} {v}: {e}")))
}

/// Whether the Prometheus tool `program` (`promtool`, `prometheus`) is here; see [`require`].
pub fn require_prometheus(program: &str) -> Result<bool, prerequisite::MissingPrerequisite> {
    require(
        installed(program).is_some(),
        &format!("`{program}` (Debian package prometheus; scripts/test.sh installs it)"),
    )
}

/// `promtool check metrics` accepts `body`.
pub fn promtool_check_metrics(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed: {}{}\n{body}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The python of the virtualenv with aioquic (`target/pyenv`, made by `scripts/python-env.sh`,
/// which installs what is missing), built once per test process. An error, never a skip, when it
/// cannot be made: the interop clients are a prerequisite of the tests that use them.
pub fn aioquic_python() -> Result<PathBuf> {
    static PYTHON: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
            let logs = repo.join("target");
            std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
            let mut command = Command::new("bash");
            command.arg(repo.join("scripts/python-env.sh")).current_dir(repo);
            let done =
                run("python-env", &mut command, &logs, Duration::from_secs(300)).map_err(|e| format!("{e:#}"))?;
            if !done.status.success() {
                return Err(format!("scripts/python-env.sh failed ({}):\n{}", done.status, done.stderr));
            }
            let python = done.stdout.lines().rev().find(|l| !l.trim().is_empty()).map(|l| PathBuf::from(l.trim()));
            match python {
                Some(python) if python.exists() => Ok(python),
                other => Err(format!("scripts/python-env.sh printed no usable python path ({other:?})")),
            }
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("aioquic python environment: {e}"))
}

/// A client script of `tests/interop/`.
pub fn interop_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop").join(name)
}

/// The time left until `deadline`.
pub fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The last `lines` lines of `text`, for failure messages.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SHA-256 (hex) of a file's contents.
pub fn file_sha(path: &Path) -> Result<String> {
    Ok(sha256_hex(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?))
}

/// The node's log level in tests: `RUST_LOG`, or `info`.
pub fn node_log_level() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string())
}

/// A finished child's exit status and the ends of its output, for failure messages.
pub fn describe(done: &Finished) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        done.status,
        tail(&done.stdout, 40),
        tail(&done.stderr, 60)
    )
}

/// A test's own tmux server (on the socket at the path it holds), ended with the shells and
/// programs in its panes on every path.
pub struct TmuxServer(pub PathBuf);

impl TmuxServer {
    /// `tmux -S SOCKET`, to add a subcommand to.
    pub fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.arg("-S").arg(&self.0);
        command
    }

    /// What the pane of session `target` shows now, one line per screen row.
    pub fn pane(&self, target: &str) -> String {
        let out = self.command().args(["capture-pane", "-p", "-t", target]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}
