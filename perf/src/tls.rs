//! TLS for the quinn baseline: a self-signed certificate from rcgen, rustls with ant-quic's very
//! provider (aws-lc-rs, its default cipher suites, X25519MLKEM768 preferred) so that a quinn
//! handshake does the same cryptography as an ant-quic one, TLS 1.3 only (QUIC).
//!
//! [`pair`] is the bulk benchmark's pair (the client trusts the certificate as its only root);
//! [`load_server`] and [`pinned_client`] are the load server's and client's configurations
//! (ALPN `ant-quic/1`, the client pins the server's certificate or ant-quic peer ID).

use std::sync::Arc;

use ant_quic::identity::PeerId;
use ant_quic::tls::{provider, PinnedServerVerifier, ServerPin, ALPN_ANT_QUIC};
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

/// A fresh self-signed certificate for [`SERVER_NAME`] and its private key.
pub fn self_signed() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
        .context("generating a self-signed certificate")?;
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    Ok((cert, key))
}

/// A fresh self-signed Ed25519 certificate for [`SERVER_NAME`] and its private key: the load
/// server's, with the signature algorithm of ant-quic's identities, and so a peer ID that an
/// ant-quic client can pin.
pub fn self_signed_ed25519() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).context("generating an Ed25519 key")?;
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .context("certificate parameters")?
        .self_signed(&key)
        .context("self-signing the certificate")?;
    let der: CertificateDer<'static> = cert.der().clone();
    Ok((der, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))))
}

/// Builds both configurations from a fresh self-signed certificate for [`SERVER_NAME`].
pub fn pair() -> Result<TlsPair> {
    let (cert, key) = self_signed()?;
    let provider = provider();

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

/// The load server: `cert`, ALPN `ant-quic/1`, no client authentication, no 0-RTT, rustls's
/// other defaults (as quinn's own `perf` server builds it, on aws-lc-rs instead of ring).
pub fn load_server(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Result<Arc<rustls::ServerConfig>> {
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with aws-lc-rs")?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("server certificate")?;
    server.alpn_protocols = vec![ALPN_ANT_QUIC.to_vec()];
    server.max_early_data_size = 0;
    Ok(Arc::new(server))
}

/// What a load client accepts as the server's identity.
#[derive(Debug, Clone)]
pub enum Pin {
    /// Exactly this certificate (a quinn load server's self-signed one).
    Certificate(CertificateDer<'static>),
    /// A certificate whose key is this ant-quic peer ID (an ant-quic server).
    PeerId(PeerId),
}

/// The load client: ALPN `ant-quic/1`, the server authenticated by `pin` and by its TLS 1.3
/// handshake signature (checked with the provider, as ant-quic's own clients do), no session resumption and so no 0-RTT:
/// every connection is a full handshake.
pub fn pinned_client(pin: Pin) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier::new(pin, provider.clone()));
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with aws-lc-rs")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN_ANT_QUIC.to_vec()];
    client.resumption = rustls::client::Resumption::disabled();
    client.enable_early_data = false;
    Ok(Arc::new(client))
}

/// The cipher suite and key exchange group that a load client and a load server negotiate: the
/// same configurations with a throwaway certificate (the choice does not depend on it).
pub fn load_negotiated() -> Result<(String, String)> {
    let (cert, key) = self_signed_ed25519()?;
    let pair = TlsPair { client: pinned_client(Pin::Certificate(cert.clone()))?, server: load_server(cert, key)? };
    negotiated(&pair)
}

/// Refuses every other certificate as failing application verification.
impl ServerPin for Pin {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let pinned = match self {
            Pin::Certificate(cert) => cert.as_ref() == end_entity.as_ref(),
            Pin::PeerId(id) => ant_quic::identity::peer_id_of_certificate(end_entity).as_ref() == Some(id),
        };
        if pinned {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }
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
