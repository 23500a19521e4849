//! TLS for the quinn baseline: a self-signed certificate from rcgen, rustls on the aws-lc-rs
//! provider with its default cipher suites and key exchange groups, TLS 1.3 only (QUIC).

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// A client and a server configuration that trust each other.
#[derive(Debug)]
pub struct TlsPair {
    pub client: Arc<rustls::ClientConfig>,
    pub server: Arc<rustls::ServerConfig>,
}

/// Server name in the certificate and in the client's connect call.
pub const SERVER_NAME: &str = "localhost";

/// Builds both configurations from a fresh self-signed certificate for [`SERVER_NAME`].
pub fn pair() -> Result<TlsPair> {
    let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
        .context("generating a self-signed certificate")?;
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).context("adding the certificate to the roots")?;
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with aws-lc-rs")?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with aws-lc-rs")?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("server certificate")?;
    // As quinn's own ServerConfig::with_single_cert does (QUIC allows only 0 or u32::MAX).
    server.max_early_data_size = u32::MAX;

    Ok(TlsPair { client: Arc::new(client), server: Arc::new(server) })
}

/// The cipher suite and key exchange group that `pair`'s two configurations negotiate.
///
/// quinn does not expose the negotiated suite of a connection, so this runs the same rustls QUIC
/// handshake in memory between the very configurations the endpoints use. The choice depends on
/// nothing but the two configurations, so it is the suite the measured connection used.
pub fn negotiated(pair: &TlsPair) -> Result<(String, String)> {
    use rustls::quic::{ClientConnection, Connection, ServerConnection, Version};
    // Any transport parameters will do: rustls carries them without reading them.
    let params = vec![0x01, 0x01, 0x00];
    let name = ServerName::try_from(SERVER_NAME)?.to_owned();
    let mut client = Connection::Client(ClientConnection::new(pair.client.clone(), Version::V1, name, params.clone())?);
    let mut server = Connection::Server(ServerConnection::new(pair.server.clone(), Version::V1, params)?);
    for _ in 0..16 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        pump(&mut client, &mut server)?;
        pump(&mut server, &mut client)?;
    }
    if client.is_handshaking() || server.is_handshaking() {
        bail!("in-memory TLS handshake did not complete");
    }
    let suite = client.negotiated_cipher_suite().ok_or_else(|| anyhow!("no cipher suite negotiated"))?;
    let kx = client
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_else(|| "unknown".to_owned());
    Ok((format!("{:?}", suite.suite()), kx))
}

/// Moves every pending handshake byte from `from` to `to`.
fn pump(from: &mut rustls::quic::Connection, to: &mut rustls::quic::Connection) -> Result<()> {
    for _ in 0..8 {
        let mut buf = Vec::new();
        let key_change = from.write_hs(&mut buf);
        if !buf.is_empty() {
            to.read_hs(&buf).context("in-memory TLS handshake")?;
        }
        if buf.is_empty() && key_change.is_none() {
            break;
        }
    }
    Ok(())
}
