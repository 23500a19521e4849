//! The thread that keeps the registry in etcd: one current-thread tokio runtime running
//! etcd-client. It carries out the [`RegistryAction`]s of the shared [`Registry`] state, keeps
//! the lease alive (every third of its TTL), feeds the watch's events back, and reconnects with
//! backoff after a failure. The state machine decides everything else.
//!
//! [`Registry`]: ant_quic_control::registry::Registry

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ant_quic_control::registry::{RegistryAction, SharedRegistry, WatchEvent};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tokio::sync::Notify;

use super::RegistryOptions;
use crate::Error;

/// How long one request to etcd (and a connection attempt) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the start waits for etcd's first answer before going on degraded.
const START_WAIT: Duration = Duration::from_secs(5);
/// First and longest pause between reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(2));

/// The first answer of etcd, for the start.
enum FirstOutcome {
    Ready,
    Unreachable(String),
    Refused(String),
}

/// The running thread.
pub(super) struct EtcdDriver {
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EtcdDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDriver").finish_non_exhaustive()
    }
}

impl EtcdDriver {
    /// Start the thread and wait for etcd's first answer (at most [`START_WAIT`]).
    pub(super) fn start(options: &RegistryOptions, shared: SharedRegistry) -> Result<Self, Error> {
        let connect = connect_options(options)?;
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (first_tx, first_rx) = std::sync::mpsc::sync_channel(1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io { context: "starting the registry runtime".into(), source })?;
        let mut session = Session {
            shared,
            endpoints: options.endpoints.clone(),
            connect,
            lease_ttl: options.lease_ttl,
            wake: Arc::clone(&wake),
            stop: Arc::clone(&stop),
            first: Some(first_tx),
            lease: None,
            in_step: false,
            quick_retries: 0,
            endpoint: 0,
        };
        let thread = std::thread::Builder::new()
            .name("ant-quic-registry".into())
            .spawn(move || runtime.block_on(session.run()))
            .map_err(|source| Error::Io { context: "starting the registry thread".into(), source })?;
        let driver = Self { wake, stop, thread: Some(thread) };
        match first_rx.recv_timeout(START_WAIT) {
            Ok(FirstOutcome::Ready) => tracing::info!("registry: in step with etcd"),
            Ok(FirstOutcome::Unreachable(why)) => {
                tracing::warn!(reason = %why, "registry: etcd unreachable; serving own peers only, retrying")
            }
            Ok(FirstOutcome::Refused(why)) => {
                return Err(Error::Invalid(format!("[registry] etcd refused this node: {why}")));
            }
            Err(_) => tracing::warn!("registry: no answer from etcd yet; serving own peers only, retrying"),
        }
        Ok(driver)
    }

    /// Something is due: run the actions now.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stop the thread (it revokes the lease first, within a request timeout).
    pub(super) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EtcdDriver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The TLS settings and timeouts of every connection; a CA or key file that cannot be read is
/// an error here (the config check read them already).
fn connect_options(options: &RegistryOptions) -> Result<ConnectOptions, Error> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| Error::Io { context: format!("reading {}", path.display()), source })
    };
    let mut connect = ConnectOptions::new().with_timeout(REQUEST_TIMEOUT).with_connect_timeout(REQUEST_TIMEOUT);
    if options.ca_file.is_some() || options.client_identity.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &options.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &options.client_identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        connect = connect.with_tls(tls);
    }
    Ok(connect)
}

/// Whether an etcd error means this node is refused (certificate, TLS, login) rather than
/// etcd being away: the start fails on it instead of retrying.
fn is_refusal(error: &etcd_client::Error) -> bool {
    if let etcd_client::Error::GRpcStatus(status) = error {
        if matches!(i32::from(status.code()), GRPC_PERMISSION_DENIED | GRPC_UNAUTHENTICATED) {
            return true;
        }
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    let text = text.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "invalid peer", "unknownissuer"].iter().any(|word| text.contains(word))
}

/// gRPC status codes of a refused login (numbers: the gRPC library is not a direct dependency).
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAUTHENTICATED: i32 = 16;

struct Session {
    shared: SharedRegistry,
    endpoints: Vec<String>,
    connect: ConnectOptions,
    lease_ttl: Duration,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    first: Option<std::sync::mpsc::SyncSender<FirstOutcome>>,
    /// The lease granted last, revoked on stop.
    lease: Option<i64>,
    /// The current connection got in step (its watch runs): a failure of it is retried at once
    /// on the other endpoints before the registry reports an outage.
    in_step: bool,
    /// Immediate retries left on other endpoints after a connection in step broke.
    quick_retries: usize,
    /// The endpoint of the next connection. One at a time, the next one after a failure: a
    /// balanced channel keeps sending some requests to a dead member.
    endpoint: usize,
}

/// The live streams of one connection.
#[derive(Default)]
struct Streams {
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    watch: Option<WatchStream>,
    /// When etcd last confirmed the lease.
    confirmed: Option<Instant>,
}

impl Session {
    async fn run(&mut self) {
        let mut backoff = BACKOFF.0;
        // At start, and after a connection in step broke, every member is tried once at once.
        self.quick_retries = self.endpoints.len().saturating_sub(1);
        while !self.stop.load(Ordering::Relaxed) {
            let result = self.connected().await;
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let Err(error) = result else { continue };
            self.endpoint = (self.endpoint + 1) % self.endpoints.len().max(1);
            if std::mem::take(&mut self.in_step) {
                self.quick_retries = self.endpoints.len().saturating_sub(1);
                backoff = BACKOFF.0;
            }
            let refused = is_refusal(&error);
            if self.quick_retries > 0 && !refused {
                self.quick_retries -= 1;
                tracing::info!(%error, "registry: etcd member failed; trying another");
                self.shared.lock().interrupted();
                continue;
            }
            if let Some(first) = self.first.take() {
                let outcome = if refused {
                    FirstOutcome::Refused(error.to_string())
                } else {
                    FirstOutcome::Unreachable(error.to_string())
                };
                let _ = first.send(outcome);
                if refused {
                    return;
                }
            }
            if self.shared.lock().failed(Instant::now()) {
                tracing::warn!(%error, "registry degraded: etcd failed; serving own peers only, retrying");
            } else {
                tracing::debug!(%error, "registry: etcd still failing");
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.wake.notified(), if self.stop.load(Ordering::Relaxed) => {}
            }
            backoff = (backoff * 2).min(BACKOFF.1);
            self.shared.lock().reconnect();
        }
        self.revoke().await;
    }

    /// One connection: carries out actions and follows the lease and the watch until something
    /// fails (or the thread stops: `Ok`).
    async fn connected(&mut self) -> Result<(), etcd_client::Error> {
        let endpoint = self.endpoints.get(self.endpoint).cloned().unwrap_or_default();
        let mut client = Client::connect([endpoint], Some(self.connect.clone())).await?;
        let mut streams = Streams::default();
        let renew_every = self.lease_ttl / 3;
        let mut renew = tokio::time::interval(renew_every.max(Duration::from_millis(100)));
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            self.execute(&mut client, &mut streams).await?;
            // No confirmation for two renewals: etcd lost its quorum or this node its path to it.
            if streams.confirmed.is_some_and(|at| at.elapsed() > renew_every * 2 + REQUEST_TIMEOUT / 2) {
                return Err(etcd_client::Error::LeaseKeepAliveError("the lease is not confirmed any more".into()));
            }
            tokio::select! {
                _ = renew.tick() => {
                    if let Some((keeper, _)) = streams.keeper.as_mut() {
                        keeper.keep_alive().await?;
                    }
                }
                answer = keep_alive_answer(&mut streams.keeper) => match answer? {
                    Some(ttl) if ttl > 0 => streams.confirmed = Some(Instant::now()),
                    _ => {
                        tracing::warn!("registry: the lease expired; registering every peer again under a new one");
                        streams.keeper = None;
                        streams.confirmed = None;
                        self.shared.lock().lease_expired();
                    }
                },
                response = watch_message(&mut streams.watch) => {
                    let Some(response) = response? else {
                        return Err(etcd_client::Error::WatchError("the watch ended".into()));
                    };
                    if response.canceled() {
                        return Err(etcd_client::Error::WatchError(format!("watch canceled: {}", response.cancel_reason())));
                    }
                    let mut registry = self.shared.lock();
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        registry.watched(match event.event_type() {
                            EventType::Put => WatchEvent::Put { key, value: kv.value().to_vec(), revision: kv.mod_revision() },
                            EventType::Delete => WatchEvent::Delete { key, revision: kv.mod_revision() },
                        });
                    }
                }
                () = self.wake.notified() => {}
            }
        }
    }

    /// Carries out every pending action of the state machine.
    async fn execute(&mut self, client: &mut Client, streams: &mut Streams) -> Result<(), etcd_client::Error> {
        loop {
            let Some(action) = self.shared.lock().poll_action() else { return Ok(()) };
            match action {
                RegistryAction::GrantLease { ttl } => {
                    let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
                    let lease = client.lease_grant(ttl, None).await?.id();
                    streams.keeper = Some(client.lease_keep_alive(lease).await?);
                    streams.confirmed = Some(Instant::now());
                    self.lease = Some(lease);
                    self.shared.lock().lease_granted(lease);
                }
                RegistryAction::RenewLease { lease } => {
                    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
                    keeper.keep_alive().await?;
                    match answers.message().await? {
                        Some(answer) if answer.ttl() > 0 => {
                            streams.keeper = Some((keeper, answers));
                            streams.confirmed = Some(Instant::now());
                            self.shared.lock().lease_granted(lease);
                        }
                        _ => self.shared.lock().lease_expired(),
                    }
                }
                RegistryAction::Put { key, value, lease } => {
                    client.put(key, value, Some(PutOptions::new().with_lease(lease))).await?;
                }
                RegistryAction::Delete { key, lease } => {
                    let txn = Txn::new()
                        .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                        .and_then([TxnOp::delete(key, None)]);
                    client.txn(txn).await?;
                }
                RegistryAction::Load { prefix } => {
                    let response = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
                    let revision = response.header().map_or(0, |h| h.revision());
                    let entries = response
                        .kvs()
                        .iter()
                        .map(|kv| {
                            (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec(), kv.mod_revision())
                        })
                        .collect();
                    self.shared.lock().loaded(revision, entries);
                }
                RegistryAction::Watch { prefix, from_revision } => {
                    let options = WatchOptions::new().with_prefix().with_start_revision(from_revision);
                    streams.watch = Some(client.watch(prefix, Some(options)).await?);
                    self.in_step = true;
                    match self.first.take() {
                        Some(first) => {
                            let _ = first.send(FirstOutcome::Ready);
                        }
                        None => tracing::info!("registry: in step with etcd again"),
                    }
                }
            }
        }
    }

    /// On stop: revoke the lease, so that this bootstrap's peers leave etcd now rather than
    /// after the TTL (best effort, one request timeout).
    async fn revoke(&mut self) {
        let Some(lease) = self.lease.take() else { return };
        let revoke = async {
            let mut client = Client::connect(&self.endpoints, Some(self.connect.clone())).await?;
            client.lease_revoke(lease).await
        };
        if let Err(error) = revoke.await {
            tracing::debug!(%error, "registry: lease not revoked (it expires after its TTL)");
        }
    }
}

/// The next keep-alive answer's TTL (0: the lease is gone); never ready without a lease.
async fn keep_alive_answer(
    keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<Option<i64>, etcd_client::Error> {
    match keeper.as_mut() {
        Some((_, answers)) => Ok(answers.message().await?.map(|a| a.ttl())),
        None => std::future::pending().await,
    }
}

/// The watch's next response; never ready without a watch.
async fn watch_message(
    watch: &mut Option<WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match watch.as_mut() {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}
