//! Shared pieces of the integration tests: running the `ant-quic` binary as a child process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The node binary under test.
pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_ant-quic");

/// A fresh directory under `target/test-tmp`, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `ant-quic` node process; killed and reaped when dropped.
pub struct NodeProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub peer_id: String,
    /// The line announcing the address, backend and crypto provider.
    pub banner: String,
    stderr: Arc<Mutex<String>>,
}

impl NodeProcess {
    /// Start `ant-quic ARGS` and wait (at most 20 s) for it to announce its peer ID and address.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(Command::new(NODE_BIN).args(args))
    }

    /// Start a prepared command (extra environment, pre-exec hooks) the same way.
    pub fn start_with(command: &mut Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn().unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = Self {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            peer_id: String::new(),
            banner: String::new(),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while node.addr.port() == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("peer id ").nth(1) {
                        node.peer_id = rest.trim().to_owned();
                    }
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        node.banner = line.clone();
                        node.addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                    }
                }
                Err(_) => panic!("node did not start; stderr:\n{}", node.stderr()),
            }
        }
        node
    }

    /// Everything the node wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Send `signal` and wait (at most `limit`) for the exit status.
    pub fn signal_and_wait(&mut self, signal: i32, limit: Duration) -> Option<ExitStatus> {
        // SAFETY: kill has no memory arguments; the pid is our own child, not yet reaped.
        unsafe { libc::kill(self.pid(), signal) };
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

/// Random bytes from the kernel.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut out).unwrap();
    out
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
