//! The baseline of `ant-quic get`: the same download with quinn 0.11, shaped as quinn's own
//! example client (`quinn/examples/client.rs`): a multi-thread tokio runtime, one connection with
//! ALPN `hq-interop`, one `GET /path` per bidirectional stream, then `close` and
//! `Endpoint::wait_idle`. It does what `ant-quic get` does around the transfer: the same rustls
//! client configuration (provider, post-quantum key exchange, server authentication), each file
//! written under the output directory as `NAME.part`, synced and renamed, its SHA-256 printed.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ant_quic::identity::PeerId;
use ant_quic::tls::{rustls_client_config, ServerAuth, ALPN_HQ_INTEROP};
use anyhow::{anyhow, bail, Context, Result};
use quinn::crypto::rustls::QuicClientConfig;
use sha2::{Digest, Sha256};

/// `ant-quic-perf quinn-get`: the arguments of `ant-quic get` that matter to a download.
#[derive(Debug, clap::Args)]
pub struct QuinnGetArgs {
    /// URLs of the form https://HOST:PORT/PATH, all on the same server.
    #[arg(required = true)]
    urls: Vec<String>,
    /// Directory to write the files to (created if missing).
    #[arg(long)]
    output: PathBuf,
    /// Accept any server certificate (the handshake signature is still verified).
    #[arg(long, conflicts_with = "peer_id")]
    insecure: bool,
    /// Require the server to prove this peer ID (64 hex digits).
    #[arg(long)]
    peer_id: Option<PeerId>,
    /// Close without waiting for the endpoint to drain (quinn's example waits: `wait_idle`).
    #[arg(long)]
    no_wait_idle: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// Runs the downloads on a runtime like `#[tokio::main]`'s; prints one line per file.
pub fn run(args: &QuinnGetArgs) -> Result<()> {
    let auth = match (args.peer_id, args.insecure) {
        (Some(id), _) => ServerAuth::PeerId(id),
        (None, true) => ServerAuth::Insecure,
        (None, false) => bail!("say how to authenticate the server: --peer-id ID or --insecure"),
    };
    let mut authority = None;
    let mut requests = Vec::new();
    for url in &args.urls {
        let (host, path) = split_url(url)?;
        if authority.get_or_insert_with(|| host.clone()) != &host {
            bail!("all URLs must name the same server (one connection)");
        }
        let file = output_file(&args.output, &path).ok_or_else(|| anyhow!("cannot save '{path}' here"))?;
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        requests.push((path, file));
    }
    let authority = authority.ok_or_else(|| anyhow!("no URL"))?;
    let remote = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("{authority} has no address"))?;
    let crypto = QuicClientConfig::try_from(Arc::new(rustls_client_config(auth, &[ALPN_HQ_INTEROP])?))
        .context("quinn client TLS config")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let limit = Duration::from_secs(args.timeout);
    runtime.block_on(async {
        tokio::time::timeout(limit, fetch_all(remote, crypto, requests, !args.no_wait_idle))
            .await
            .map_err(|_| anyhow!("no answer within {} s", args.timeout))?
    })
}

async fn fetch_all(
    remote: SocketAddr,
    crypto: QuicClientConfig,
    requests: Vec<(String, PathBuf)>,
    wait_idle: bool,
) -> Result<()> {
    let bind: SocketAddr = if remote.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse()?;
    let mut endpoint = quinn::Endpoint::client(bind).context("client endpoint")?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(remote, ant_quic::tls::default_server_name())?
        .await
        .map_err(|e| anyhow!("cannot connect: {e}"))?;
    for (path, file) in requests {
        let started = Instant::now();
        let (bytes, sha256) = fetch(&conn, &path, &file).await?;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        println!(
            "{path}: {bytes} bytes, sha256 {sha256}, {secs:.3} s, {:.1} MB/s -> {}",
            bytes as f64 / secs / 1e6,
            file.display()
        );
    }
    conn.close(0u32.into(), b"done");
    if wait_idle {
        endpoint.wait_idle().await;
    }
    Ok(())
}

/// One `GET` on its own stream, written to `NAME.part`, synced, then renamed to `file`.
async fn fetch(conn: &quinn::Connection, path: &str, file: &Path) -> Result<(u64, String)> {
    let (mut send, mut recv) = conn.open_bi().await.context("opening a stream")?;
    send.write_all(format!("GET {path}\r\n").as_bytes()).await.context("sending the request")?;
    send.finish().context("finishing the request")?;
    let mut partial_name = file.file_name().unwrap_or_default().to_os_string();
    partial_name.push(".part");
    let partial = file.with_file_name(partial_name);
    // Written on the runtime's thread, as `ant-quic get` writes on its core: small files.
    let mut out = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.context("reading the response")? {
        bytes += chunk.bytes.len() as u64;
        hash.update(&chunk.bytes);
        out.write_all(&chunk.bytes).context("writing the file")?;
    }
    out.flush()?;
    out.sync_all().context("syncing the file")?;
    drop(out);
    std::fs::rename(&partial, file).with_context(|| format!("renaming {}", partial.display()))?;
    Ok((bytes, hex::encode(hash.finalize())))
}

/// `https://HOST:PORT/PATH` → (`HOST:PORT`, `/PATH`), as `ant-quic get` reads it.
fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("https://").ok_or_else(|| anyhow!("bad URL '{url}': not https://"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() {
        bail!("bad URL '{url}': no host");
    }
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:443")
    };
    Ok((authority, if path.is_empty() { "/".to_owned() } else { path.to_owned() }))
}

/// Where a fetched path is written under `output`; `None` if it would escape it.
fn output_file(output: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    if relative.as_os_str().is_empty() || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(output.join(relative))
}
