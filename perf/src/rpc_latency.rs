//! Request/response latency, the quinn-style RPC pattern: the client makes sequential requests,
//! each on a new bidirectional stream carrying a 64-byte request (then the end of the stream);
//! the server answers each with 64 bytes and the end. One connection over 127.0.0.1; client and
//! server are tasks on one tokio multi-thread runtime (`--workers`), for ant-quic's async API
//! (each endpoint with its own data-plane core) and for quinn 0.11 (its endpoint drivers on the
//! same runtime). A request's latency runs from opening its stream to reading the answer's end.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{Deserialize, Serialize};

use crate::async_bulk;
use crate::load::{latency_histogram, record, Latency};
use crate::tls;

/// Request and answer size.
const MESSAGE: usize = 64;
static REQUEST: [u8; MESSAGE] = [0x51; MESSAGE];
static ANSWER: [u8; MESSAGE] = [0xA5; MESSAGE];

/// Requests made before the timed ones (handshake caches, MTU discovery, the runtime warming up).
const WARMUP: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RpcImpl {
    /// ant-quic's async API (`ant_quic::endpoint`).
    Async,
    /// quinn 0.11.
    Quinn,
}

impl RpcImpl {
    pub fn name(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::Quinn => "quinn",
        }
    }
}

#[derive(Debug, Args)]
pub struct RpcLatencyArgs {
    /// Which implementation serves and makes the requests.
    #[arg(long = "impl", value_enum)]
    pub implementation: RpcImpl,
    /// Timed requests (after 100 untimed ones).
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,
    /// Stop early after this many seconds of timed requests.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// tokio worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

/// What one run prints: one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RpcResult {
    #[serde(rename = "impl")]
    pub implementation: RpcImpl,
    /// Timed requests completed.
    pub requests: u64,
    /// Wall time of the timed requests.
    pub seconds: f64,
    /// Requests per second, one at a time.
    pub rate: f64,
    /// Percentiles in microseconds.
    pub latency_us: Latency,
}

pub fn run(args: &RpcLatencyArgs) -> Result<RpcResult> {
    if args.requests == 0 || args.requests > 10_000_000 {
        bail!("--requests must be between 1 and 10000000");
    }
    if !(0.1..=600.0).contains(&args.seconds) {
        bail!("--seconds must be between 0.1 and 600");
    }
    let budget = Requests { count: args.requests, time: Duration::from_secs_f64(args.seconds) };
    // The whole run, setup and close included, is bounded too.
    let limit = budget.time + Duration::from_secs(30);
    let rt = async_bulk::runtime(args.workers)?;
    let (hist, seconds) = rt.block_on(async {
        let run = async {
            match args.implementation {
                RpcImpl::Async => run_async(budget).await,
                RpcImpl::Quinn => run_quinn(budget).await,
            }
        };
        tokio::time::timeout(limit, run).await.map_err(|_| anyhow!("timed out after {limit:?}"))?
    })?;
    let latency_us = Latency::of(&hist).ok_or_else(|| anyhow!("no request completed"))?;
    Ok(RpcResult {
        implementation: args.implementation,
        requests: hist.len(),
        seconds,
        rate: if seconds > 0.0 { hist.len() as f64 / seconds } else { 0.0 },
        latency_us,
    })
}

/// How many timed requests, and for how long at most.
#[derive(Debug, Clone, Copy)]
struct Requests {
    count: u64,
    time: Duration,
}

/// Runs `request` WARMUP times untimed, then up to `budget` timed; the histogram and seconds.
async fn timed<F, Fut>(budget: Requests, mut request: F) -> Result<(Histogram<u64>, f64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for _ in 0..WARMUP {
        request().await?;
    }
    let mut hist = latency_histogram()?;
    let start = Instant::now();
    for _ in 0..budget.count {
        let t = Instant::now();
        request().await?;
        record(&mut hist, t.elapsed());
        if start.elapsed() >= budget.time {
            break;
        }
    }
    Ok((hist, start.elapsed().as_secs_f64()))
}

fn check_answer(answer: &[u8]) -> Result<()> {
    if answer != ANSWER {
        bail!("answer of {} bytes, expected the {MESSAGE}-byte answer", answer.len());
    }
    Ok(())
}

async fn run_async(budget: Requests) -> Result<(Histogram<u64>, f64)> {
    let (server, client) = async_bulk::endpoints()?;
    let (conn, accepted) = async_bulk::connect(&server, &client).await?;
    let serving = tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = accepted.accept_bi().await {
            let request = recv.read_to_end(MESSAGE).await?;
            if request != REQUEST {
                bail!("request of {} bytes, expected {MESSAGE}", request.len());
            }
            send.write_all(&ANSWER).await?;
            send.finish().await?;
        }
        Ok(())
    });
    let result = timed(budget, || {
        let conn = &conn;
        async move {
            let (mut send, mut recv) = conn.open_bi().await.context("opening a stream")?;
            send.write_all(&REQUEST).await.context("writing the request")?;
            send.finish().await.context("finishing the request")?;
            check_answer(&recv.read_to_end(MESSAGE).await.context("reading the answer")?)
        }
    })
    .await;
    async_bulk::close(&conn, &server, &client).await;
    let served = serving.await.map_err(|e| anyhow!("server task: {e}"))?;
    let result = result?;
    served.context("server")?;
    Ok(result)
}

async fn run_quinn(budget: Requests) -> Result<(Histogram<u64>, f64)> {
    let tls = tls::pair()?;
    let server_crypto = Arc::new(QuicServerConfig::try_from(tls.server.clone()).context("quinn server TLS config")?);
    let client_crypto = Arc::new(QuicClientConfig::try_from(tls.client.clone()).context("quinn client TLS config")?);
    let bind = || UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a socket");
    let runtime = Arc::new(quinn::TokioRuntime);
    let server = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(quinn::ServerConfig::with_crypto(server_crypto)),
        bind()?,
        runtime.clone(),
    )
    .context("server endpoint")?;
    let mut client =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, bind()?, runtime).context("client endpoint")?;
    client.set_default_client_config(quinn::ClientConfig::new(client_crypto));

    let accepting = server.clone();
    let serving = tokio::spawn(async move {
        let incoming = accepting.accept().await.ok_or_else(|| anyhow!("server endpoint closed"))?;
        let conn = incoming.await.context("server handshake")?;
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let request = recv.read_to_end(MESSAGE).await?;
            if request != REQUEST {
                bail!("request of {} bytes, expected {MESSAGE}", request.len());
            }
            send.write_all(&ANSWER).await?;
            send.finish()?;
        }
        Ok(())
    });
    let conn = client.connect(server.local_addr()?, tls::SERVER_NAME)?.await.context("client handshake")?;
    let result = timed(budget, || {
        let conn = &conn;
        async move {
            let (mut send, mut recv) = conn.open_bi().await.context("opening a stream")?;
            send.write_all(&REQUEST).await.context("writing the request")?;
            send.finish().context("finishing the request")?;
            check_answer(&recv.read_to_end(MESSAGE).await.context("reading the answer")?)
        }
    })
    .await;
    conn.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        client.wait_idle().await;
        server.wait_idle().await;
    })
    .await;
    let served = serving.await.map_err(|e| anyhow!("server task: {e}"))?;
    let result = result?;
    served.context("server")?;
    Ok(result)
}
