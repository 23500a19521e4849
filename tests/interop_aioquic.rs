//! Interoperability with an independent QUIC implementation: aioquic (Python),
//! over hq-interop (HTTP/0.9 over QUIC, ALPN "hq-interop", as in the QUIC
//! interop runner), on loopback only.
//!
//! * `aioquic_client_fetches_from_ant_quic`: `ant-quic --listen 127.0.0.1:0
//!   --www DIR` serves; `tests/interop/hq_client.py` fetches files over one
//!   connection (one bidirectional stream per file) and every file's SHA-256 is
//!   compared with the source. A missing file, `/../Cargo.toml`, a symlink
//!   leading out of the directory and an absolute path must be refused (stream
//!   reset with the "not found" code; an empty answer is not a refusal) while
//!   the other streams succeed, and the node must still serve afterwards.
//! * `ant_quic_get_fetches_from_aioquic`: `tests/interop/hq_server.py` serves;
//!   `ant-quic get https://127.0.0.1:PORT/... --output DIR --insecure` must exit
//!   0 with the right bytes, and exit non-zero for a missing path.
//! * `ant_quic_get_through_aioquic_retry`: the same client against an aioquic
//!   server that answers every Initial with a Retry packet.
//! * `*_portable_backend`: the first two again with `--backend portable`
//!   (the default backend is io_uring where the kernel allows it).
//!
//! The Python side lives in a virtualenv at `target/pyenv` made by
//! `scripts/python-env.sh` (which installs aioquic from
//! `tests/interop/requirements.txt` when missing). Each test is bounded in
//! time; every child process is killed and reaped on every path.
//!
//! `ANT_QUIC_INTEROP_BIN=/path/to/ant-quic` tests another build of the node.
//! Set `ANT_QUIC_INTEROP_VERBOSE=1` for aioquic DEBUG logs and qlog traces
//! (kept with the node's stderr in the test's directory under `target/tmp/`,
//! which is left in place when a test fails).

mod common;

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{describe, file_sha, left, node_log_level, tail};
use common::{
    http_get, parse_listening, random_bytes, run, sample, sha256_hex, Finished, NodeProcess, Process, TempDir, NODE_BIN,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Bound on everything a test does after the Python environment exists.
const TEST_BUDGET: Duration = Duration::from_secs(120);
/// Bound on building the Python environment (first run downloads aioquic).
const PYENV_BUDGET: Duration = Duration::from_secs(300);

/// The node binary under test: this package's `ant-quic`, unless
/// `ANT_QUIC_INTEROP_BIN` names another build (e.g. a `rustls-ring` one).
fn node_bin() -> PathBuf {
    std::env::var_os("ANT_QUIC_INTEROP_BIN").map_or_else(|| PathBuf::from(NODE_BIN), PathBuf::from)
}

fn verbose() -> bool {
    std::env::var("ANT_QUIC_INTEROP_VERBOSE").is_ok_and(|v| !v.is_empty() && v != "0")
}

// ---------------------------------------------------------------- python

/// The virtualenv's python, built once per test process.
fn python() -> Result<PathBuf> {
    static PY: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    PY.get_or_init(|| make_python_env().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("python environment: {e}"))
}

fn make_python_env() -> Result<PathBuf> {
    let logs = Path::new(REPO).join("target");
    fs::create_dir_all(&logs)?;
    let mut cmd = Command::new("bash");
    cmd.arg(Path::new(REPO).join("scripts/python-env.sh")).current_dir(REPO);
    let done = run("python-env", &mut cmd, &logs, PYENV_BUDGET)?;
    ensure!(done.status.success(), "scripts/python-env.sh failed ({}):\n{}", done.status, tail(&done.stderr, 40));
    let py = done
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| anyhow!("scripts/python-env.sh printed no python path"))?;
    ensure!(py.exists(), "python-env.sh printed {py:?}, which does not exist");
    Ok(py)
}

fn interop_script(name: &str) -> PathBuf {
    Path::new(REPO).join("tests/interop").join(name)
}

// ---------------------------------------------------------------- files

/// URL path → SHA-256 of the file served there.
type Manifest = Vec<(String, String)>;

/// Writes the test files into `www`, a decoy `Cargo.toml` beside `www` (what
/// `/../Cargo.toml` would reach if traversal were not refused), and a symlink
/// `www/out-link` to the decoy.
fn make_files(www: &Path) -> Result<Manifest> {
    let files: [(&str, usize); 4] = [
        ("small.bin", 1024),
        ("medium.bin", 1024 * 1024),
        ("large.bin", 5 * 1024 * 1024),
        ("sub/dir/nested.bin", 70_001),
    ];
    let mut manifest = Vec::new();
    for (rel, len) in files {
        let data = random_bytes(len)?;
        let path = www.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, &data)?;
        manifest.push((format!("/{rel}"), sha256_hex(&data)));
    }
    let decoy_path = outside(www)?;
    fs::write(&decoy_path, decoy())?;
    std::os::unix::fs::symlink(&decoy_path, www.join("out-link"))?;
    Ok(manifest)
}

/// The decoy beside `www`, by its absolute path.
fn outside(www: &Path) -> Result<PathBuf> {
    let parent = www.parent().context("www has a parent")?;
    Ok(fs::canonicalize(parent)?.join("Cargo.toml"))
}

fn decoy() -> String {
    "[package]\nname = \"decoy-outside-www\"\n".to_string()
}

// ---------------------------------------------------------------- node

/// The node's I/O backend: its default (io_uring where the kernel allows it),
/// or `--backend portable`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Backend {
    Default,
    Portable,
}

impl Backend {
    fn args(self) -> &'static [&'static str] {
        match self {
            Backend::Default => &[],
            Backend::Portable => &["--backend", "portable"],
        }
    }
}

fn start_node(www: &Path, data: &Path, logs: &Path, backend: Backend, retry: &str) -> Result<NodeProcess> {
    let mut cmd = Command::new(node_bin());
    cmd.env("ANT_QUIC_SECURITY_RETRY", retry);
    cmd.args(backend.args()).args(["--listen", "127.0.0.1:0", "--www"]).arg(www).arg("--data-dir").arg(data);
    NodeProcess::start(cmd.env("RUST_LOG", node_log_level()), logs)
}

// ---------------------------------------------------------------- hq_client

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok { bytes: u64, sha: String },
    Reset { code: String },
    Error { reason: String },
}

/// Parses hq_client.py's result lines: `OK path bytes sha`, `RESET path code n`,
/// `ERROR path reason`.
fn parse_client_results(stdout: &str) -> HashMap<String, Outcome> {
    let mut map = HashMap::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let outcome = match f.as_slice() {
            ["OK", path, bytes, sha] => {
                (*path, Outcome::Ok { bytes: bytes.parse().unwrap_or(0), sha: sha.to_string() })
            }
            ["RESET", path, code, ..] => (*path, Outcome::Reset { code: code.to_string() }),
            ["ERROR", path, rest @ ..] => (*path, Outcome::Error { reason: rest.join(" ") }),
            _ => continue,
        };
        map.insert(outcome.0.to_string(), outcome.1);
    }
    map
}

fn hq_client(
    py: &Path,
    addr: SocketAddr,
    out: &Path,
    paths: &[&str],
    logs: &Path,
    name: &str,
    deadline: Instant,
) -> Result<Finished> {
    let mut cmd = Command::new(py);
    cmd.arg(interop_script("hq_client.py"))
        .args(["--host", &addr.ip().to_string(), "--port", &addr.port().to_string()])
        .arg("--output")
        .arg(out)
        .args(["--insecure", "--timeout", "60"]);
    if verbose() {
        cmd.arg("-v").arg("--qlog").arg(logs.join(format!("{name}-qlog")));
    }
    cmd.args(paths);
    run(name, &mut cmd, logs, left(deadline))
}

// ---------------------------------------------------------------- hq_server

/// `hq_server.py` serving `www` on 127.0.0.1, and its port.
fn start_hq_server(py: &Path, www: &Path, logs: &Path, retry: bool, deadline: Instant) -> Result<(Process, u16)> {
    let mut cmd = Command::new(py);
    cmd.arg(interop_script("hq_server.py"))
        .args(["--host", "127.0.0.1", "--port", "0", "--root"])
        .arg(www)
        .args(["--max-seconds", &TEST_BUDGET.as_secs().to_string()]);
    if retry {
        cmd.arg("--retry");
    }
    if verbose() {
        cmd.arg("-v").arg("--qlog").arg(logs.join("hq_server-qlog"));
    }
    let mut server = Process::spawn("hq_server", &mut cmd, logs)?;
    let port = server
        .stdout_line(left(deadline).min(Duration::from_secs(30)), |l| {
            l.strip_prefix("READY ").and_then(|p| p.trim().parse::<u16>().ok())
        })
        .context("hq_server.py never printed READY")?;
    Ok((server, port))
}

fn ant_quic_get(
    urls: &[String],
    out: &Path,
    logs: &Path,
    name: &str,
    backend: Backend,
    deadline: Instant,
) -> Result<Finished> {
    let mut cmd = Command::new(node_bin());
    cmd.arg("get")
        .args(backend.args())
        .args(urls)
        .arg("--output")
        .arg(out)
        .arg("--insecure")
        .env("RUST_LOG", node_log_level());
    run(name, &mut cmd, logs, left(deadline))
}

/// Where `ant-quic get --output DIR` put the file fetched from `url_path`:
/// DIR/<url path> (mirrored), or DIR/<last segment>.
fn fetched_file(out: &Path, url_path: &str) -> Option<PathBuf> {
    let rel = url_path.trim_start_matches('/');
    let mirrored = out.join(rel);
    if mirrored.is_file() {
        return Some(mirrored);
    }
    let flat = out.join(rel.rsplit('/').next()?);
    flat.is_file().then_some(flat)
}

// ---------------------------------------------------------------- tests

/// aioquic's client against the node: every file intact, refusals for paths outside `--www`.
/// With `retry = "always"` the node answers every new connection with a Retry first (RFC 9000
/// §8.1), and aioquic must follow it.
fn client_fetches_from_node(test: &str, backend: Backend, retry: &str) -> Result<()> {
    let py = python()?;
    let deadline = Instant::now() + TEST_BUDGET;
    let mut scratch = TempDir::new(&format!("interop-{test}"))?.keep_unless_passed();
    let www = scratch.subdir("www")?;
    let data = scratch.subdir("data")?;
    let out = scratch.subdir("out")?;
    let logs = scratch.subdir("logs")?;
    let manifest = make_files(&www)?;

    let mut node = start_node(&www, &data, &logs, backend, retry)?;
    let admin = node.stdout_line(Duration::from_secs(20), |line| {
        line.strip_prefix("admin http on ")?.split_whitespace().next()?.parse::<SocketAddr>().ok()
    })?;
    eprintln!("interop: ant-quic node listening on {}", node.addr);
    ensure!(
        node.addr.ip().is_loopback() && node.addr.port() != 0,
        "node announced {} for --listen 127.0.0.1:0",
        node.addr
    );

    // Missing, the decoy by its absolute path, `..`, and a symlink leading out of --www.
    let absolute = format!("/{}", outside(&www)?.display());
    let bad = ["/missing.bin", absolute.as_str(), "/../Cargo.toml", "/out-link"];
    let mut paths: Vec<&str> = manifest.iter().map(|(p, _)| p.as_str()).collect();
    paths.extend(bad);
    let started = Instant::now();
    let done = hq_client(&py, node.addr, &out, &paths, &logs, "hq_client", deadline)?;
    eprintln!("interop: hq_client finished in {:?}: {}", started.elapsed(), done.status);
    let context = || format!("hq_client {}\n--- node stderr ---\n{}", describe(&done), tail(&node.stderr(), 60));

    // exit 2 = the connection itself failed; 1 = some stream failed
    ensure!(matches!(done.status.code(), Some(0) | Some(1)), "connection-level failure: {}", context());
    let results = parse_client_results(&done.stdout);
    for (path, want) in &manifest {
        match results.get(path) {
            Some(Outcome::Ok { sha, bytes }) => {
                ensure!(sha == want, "{path}: got {bytes} bytes with sha256 {sha}, want {want}\n{}", context());
                let written = out.join(path.trim_start_matches('/'));
                ensure!(&file_sha(&written)? == want, "{path}: file written by hq_client differs");
            }
            other => bail!("{path}: {other:?}, want OK\n{}", context()),
        }
    }
    // Refused means reset with the hq-interop "not found" code: an empty answer closed with FIN
    // is what an empty file looks like, so it is no refusal.
    let not_found = ant_quic::protocol::HQ_NOT_FOUND.into_inner().to_string();
    for path in bad {
        match results.get(path) {
            Some(Outcome::Reset { code }) if *code == not_found => {
                eprintln!("interop: {path} refused with RESET_STREAM code {code}")
            }
            Some(Outcome::Reset { code }) => {
                bail!("{path}: reset with code {code}, want {not_found} (not found)\n{}", context())
            }
            Some(Outcome::Ok { bytes, sha }) => {
                let leaked = *sha == sha256_hex(decoy().as_bytes());
                bail!(
                    "{path} was answered with {bytes} bytes{}, want a reset\n{}",
                    if leaked { " (the decoy file OUTSIDE --www: path traversal)" } else { "" },
                    context()
                )
            }
            Some(Outcome::Error { reason }) => {
                bail!("{path}: stream error {reason}, want a reset\n{}", context())
            }
            None => bail!("{path}: no result line\n{}", context()),
        }
    }

    // the node survived the refused requests and still serves
    ensure!(node.exited()?.is_none(), "node exited: {}", tail(&node.stderr(), 60));
    let out2 = scratch.subdir("out2")?;
    let again = hq_client(&py, node.addr, &out2, &["/small.bin"], &logs, "hq_client-again", deadline)?;
    ensure!(
        again.status.success(),
        "second connection failed: {}\n--- node stderr ---\n{}",
        describe(&again),
        tail(&node.stderr(), 60)
    );
    ensure!(file_sha(&out2.join("small.bin"))? == manifest[0].1, "second fetch of /small.bin differs");
    ensure!(node.exited()?.is_none(), "node exited: {}", tail(&node.stderr(), 60));

    // Two connections: with `always` each was sent a Retry (one per Initial datagram of its first
    // flight); with the default `auto` nobody was, so few handshakes are in flight.
    let (_, metrics) = http_get(admin, "/metrics");
    let retries = sample(&metrics, "quic_retry_sent_total").ok_or_else(|| anyhow!("no quic_retry_sent_total"))?;
    match retry {
        "always" => ensure!((2.0..=4.0).contains(&retries), "{retries} Retry packets for two connections"),
        _ => ensure!(retries == 0.0, "{retries} Retry packets under retry = {retry}"),
    }

    drop(node);
    scratch.passed();
    Ok(())
}

fn get_from_aioquic(test: &str, retry: bool, all_files: bool, backend: Backend) -> Result<()> {
    let py = python()?;
    let deadline = Instant::now() + TEST_BUDGET;
    let mut scratch = TempDir::new(&format!("interop-{test}"))?.keep_unless_passed();
    let www = scratch.subdir("www")?;
    let out = scratch.subdir("out")?;
    let logs = scratch.subdir("logs")?;
    let manifest = make_files(&www)?;
    let manifest: Manifest = if all_files { manifest } else { manifest.into_iter().take(2).collect() };

    let (server, port) = start_hq_server(&py, &www, &logs, retry, deadline)?;
    eprintln!("interop: aioquic hq_server on 127.0.0.1:{port} (retry: {retry})");
    let server_log = || tail(&server.stderr(), 40);
    let base = format!("https://127.0.0.1:{port}");
    let urls: Vec<String> = manifest.iter().map(|(p, _)| format!("{base}{p}")).collect();

    let started = Instant::now();
    let done = ant_quic_get(&urls, &out, &logs, "get", backend, deadline)?;
    eprintln!("interop: ant-quic get finished in {:?}: {}", started.elapsed(), done.status);
    ensure!(
        done.status.success(),
        "ant-quic get failed: {}\n--- hq_server stderr ---\n{}",
        describe(&done),
        server_log()
    );
    for (path, want) in &manifest {
        let file = fetched_file(&out, path)
            .ok_or_else(|| anyhow!("ant-quic get exited 0 but wrote no file for {path} under {}", out.display()))?;
        let got = file_sha(&file)?;
        ensure!(&got == want, "{path} ({}): sha256 {got}, want {want}", file.display());
    }

    let out_missing = scratch.subdir("out-missing")?;
    let missing =
        ant_quic_get(&[format!("{base}/missing.bin")], &out_missing, &logs, "get-missing", backend, deadline)?;
    ensure!(
        !missing.status.success(),
        "ant-quic get of a missing file exited 0: {}\n--- hq_server stderr ---\n{}",
        describe(&missing),
        server_log()
    );
    ensure!(
        fetched_file(&out_missing, "/missing.bin").is_none()
            && fs::read_dir(&out_missing).map(|mut d| d.next().is_none()).unwrap_or(true),
        "ant-quic get left a file behind for a missing path"
    );

    drop(server);
    scratch.passed();
    Ok(())
}

#[test]
fn ant_quic_get_fetches_from_aioquic() -> Result<()> {
    get_from_aioquic("get", false, true, Backend::Default)
}

#[test]
fn ant_quic_get_through_aioquic_retry() -> Result<()> {
    get_from_aioquic("get-retry", true, false, Backend::Default)
}

#[test]
fn ant_quic_get_fetches_from_aioquic_portable_backend() -> Result<()> {
    get_from_aioquic("get-portable", false, true, Backend::Portable)
}

#[test]
fn aioquic_client_fetches_from_ant_quic() -> Result<()> {
    client_fetches_from_node("client", Backend::Default, "auto")
}

#[test]
fn aioquic_client_follows_the_nodes_retry() -> Result<()> {
    client_fetches_from_node("client-retry", Backend::Default, "always")
}

#[test]
fn aioquic_client_fetches_from_ant_quic_portable_backend() -> Result<()> {
    client_fetches_from_node("client-portable", Backend::Portable, "auto")
}

#[test]
fn listening_line_parses() {
    let cases = [
        ("INFO ant_quic: listening on 127.0.0.1:4433", Some("127.0.0.1:4433")),
        ("listening on [::1]:9000 (udp)", Some("[::1]:9000")),
        ("node listening on 127.0.0.1:5000,", Some("127.0.0.1:5000")),
        ("listening soon", None),
    ];
    for (line, want) in cases {
        let want: Option<SocketAddr> = want.and_then(|w| w.parse().ok());
        assert_eq!(parse_listening(line), want, "{line}");
    }
}
