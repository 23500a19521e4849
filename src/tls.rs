//! TLS 1.3 for QUIC (RFC 9001) with rustls: the crypto provider chosen at build time, server and
//! client configurations, and the verifiers that authenticate a peer by its peer ID (or a server
//! by any other [`ServerPin`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::identity::{Identity, PeerId, CERT_NAME};

/// ALPN of the node's own protocol.
pub const ALPN_ANT_QUIC: &[u8] = b"ant-quic/1";
/// ALPN of HTTP/0.9 over QUIC, as used by the QUIC interop runner.
pub const ALPN_HQ_INTEROP: &[u8] = b"hq-interop";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsError(String);

#[cfg(not(any(feature = "aws-lc-rs", feature = "rustls-ring")))]
compile_error!(
    "ant-quic needs a crypto provider: enable feature `aws-lc-rs` (the default, with `pqc`) or `rustls-ring`"
);

/// The crypto provider of this build. With feature `pqc` (on by default; it implies aws-lc-rs),
/// the hybrid post-quantum key exchange X25519MLKEM768 is offered first, classical groups after
/// it for peers without it; without `pqc`, classical groups only.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    {
        use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
        let mut provider = default_provider();
        provider.kx_groups = Vec::with_capacity(4);
        // draft-ietf-tls-ecdhe-mlkem: the hybrid group X25519MLKEM768 (codepoint 0x11ec).
        #[cfg(feature = "pqc")]
        provider.kx_groups.push(kx_group::X25519MLKEM768);
        provider.kx_groups.extend([kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1]);
        Arc::new(provider)
    }
    #[cfg(all(feature = "rustls-ring", not(feature = "aws-lc-rs")))]
    {
        Arc::new(rustls::crypto::ring::default_provider())
    }
}

/// Name of the crypto provider this build uses, and its preferred key exchange.
pub fn provider_name() -> &'static str {
    if cfg!(feature = "pqc") {
        "aws-lc-rs (X25519MLKEM768 preferred)"
    } else if cfg!(feature = "aws-lc-rs") {
        "aws-lc-rs (classical key exchange)"
    } else {
        "ring"
    }
}

/// The TLS 1.3 cipher suite two nodes of this build agree on: the provider's first.
pub fn preferred_cipher_suite() -> String {
    provider()
        .cipher_suites
        .iter()
        .find(|suite| suite.version() == &rustls::version::TLS13)
        .map(|suite| format!("{:?}", suite.suite()))
        .unwrap_or_default()
}

/// A certificate chain and its private key, loaded from PEM files.
#[derive(Debug)]
pub struct CertifiedKey {
    /// End-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key of the end-entity certificate.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for CertifiedKey {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

impl CertifiedKey {
    /// Load a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = load_certificates(cert)?;
        let key_pem = read(key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError(format!("{}: no PEM private key ({e})", key.display())))?;
        Ok(Self { chain, key })
    }

    /// The identity's own self-signed certificate and key, as a node presents them to servers
    /// (so that a bootstrap or another peer learns its peer ID).
    pub fn of_identity(identity: &Identity) -> Self {
        Self { chain: vec![identity.certificate()], key: identity.private_key() }
    }

    /// Whether the end-entity certificate carries the key of `identity` (then clients that pin
    /// the peer ID still accept it).
    pub fn is_for(&self, identity: &Identity) -> bool {
        self.chain.first().and_then(crate::identity::peer_id_of_certificate) == Some(identity.peer_id())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))
}

/// The certificates of a PEM file; at least one.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: not a PEM certificate file ({e})", path.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!("{}: no PEM certificate in the file", path.display())));
    }
    Ok(chain)
}

/// The CA certificates of a PEM file, as a trust store for client certificates.
pub fn load_ca(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(path)? {
        roots.add(cert).map_err(|e| TlsError(format!("{}: unusable CA certificate ({e})", path.display())))?;
    }
    Ok(Arc::new(roots))
}

/// Whether and how the server asks clients for certificates.
#[derive(Debug, Clone, Default)]
pub enum ClientAuth {
    /// No CA policy (the default): clients may present a self-signed certificate, which proves
    /// their peer ID (nodes do, so that bootstraps and peers know who they are); clients without
    /// one (hq-interop, `ant-quic get`) are served as anonymous.
    #[default]
    None,
    /// Clients may present a certificate; one that is presented must chain to these CAs.
    Optional(Arc<RootCertStore>),
    /// Clients must present a certificate that chains to these CAs (mutual TLS).
    Required(Arc<RootCertStore>),
}

/// The server-side settings of `[security]`: which certificate to present and whether to
/// require client certificates.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    /// Present this chain instead of the identity's self-signed certificate.
    pub certificate: Option<CertifiedKey>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// Accept 0-RTT data from clients resuming a session (`[security] zero_rtt`). Such data can
    /// be replayed by an attacker, so it is off unless every request served is idempotent.
    pub zero_rtt: bool,
    /// The address offered to clients to move to after the handshake (`[node]
    /// preferred_address`, RFC 9000 §9.6); set on the QUIC server configuration built here.
    pub preferred_address: Option<SocketAddr>,
}

/// Server side: our certificate, offering `alpns`.
pub fn server_config(identity: &Identity, alpns: &[&[u8]]) -> Result<quinn_proto::ServerConfig, TlsError> {
    server_config_with(identity, alpns, &ServerSecurity::default())
}

/// Server side with the `[security]` settings.
pub fn server_config_with(
    identity: &Identity,
    alpns: &[&[u8]],
    security: &ServerSecurity,
) -> Result<quinn_proto::ServerConfig, TlsError> {
    let quic = QuicServerConfig::try_from(Arc::new(rustls_server_config_with(identity, alpns, security)?))
        .map_err(|e| TlsError(e.to_string()))?;
    let mut server = quinn_proto::ServerConfig::with_crypto(Arc::new(quic));
    match security.preferred_address {
        Some(SocketAddr::V4(address)) => {
            server.preferred_address_v4(Some(address));
        }
        Some(SocketAddr::V6(address)) => {
            server.preferred_address_v6(Some(address));
        }
        None => {}
    }
    Ok(server)
}

/// The rustls half of [`server_config`].
pub fn rustls_server_config(identity: &Identity, alpns: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    rustls_server_config_with(identity, alpns, &ServerSecurity::default())
}

/// The rustls half of [`server_config_with`].
pub fn rustls_server_config_with(
    identity: &Identity,
    alpns: &[&[u8]],
    security: &ServerSecurity,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?;
    let builder = match &security.client_auth {
        ClientAuth::None => builder
            .with_client_cert_verifier(Arc::new(PeerIdClientVerifier(HandshakeSignatures(Arc::clone(&provider))))),
        ClientAuth::Optional(roots) | ClientAuth::Required(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider);
            let verifier = if matches!(security.client_auth, ClientAuth::Optional(_)) {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError(format!("client CA: {e}")))?)
        }
    };
    let (chain, key) = match &security.certificate {
        Some(certified) => (certified.chain.clone(), certified.key.clone_key()),
        None => (vec![identity.certificate()], identity.private_key()),
    };
    let mut tls = builder.with_single_cert(chain, key).map_err(|e| TlsError(e.to_string()))?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    // quinn-proto takes 0-RTT all or nothing: 0 refuses it, u32::MAX accepts it (the stream
    // and connection flow-control limits bound what arrives early).
    tls.max_early_data_size = if security.zero_rtt { u32::MAX } else { 0 };
    Ok(tls)
}

/// How a client authenticates the server.
#[derive(Debug, Clone, Copy)]
pub enum ServerAuth {
    /// The server's certificate must carry the key of this peer.
    PeerId(PeerId),
    /// Accept any certificate (the handshake signature is still checked). For tests and for
    /// servers whose identity is not known in advance, as `--insecure` does.
    Insecure,
}

/// Client side, offering `alpns`.
pub fn client_config(auth: ServerAuth, alpns: &[&[u8]]) -> Result<quinn_proto::ClientConfig, TlsError> {
    client_config_with(auth, alpns, None)
}

/// Client side, presenting `identity` to servers that ask for a client certificate.
pub fn client_config_with(
    auth: ServerAuth,
    alpns: &[&[u8]],
    identity: Option<&CertifiedKey>,
) -> Result<quinn_proto::ClientConfig, TlsError> {
    let quic = QuicClientConfig::try_from(Arc::new(rustls_client_config_with(auth, alpns, identity)?))
        .map_err(|e| TlsError(e.to_string()))?;
    Ok(quinn_proto::ClientConfig::new(Arc::new(quic)))
}

/// The rustls half of [`client_config`].
pub fn rustls_client_config(auth: ServerAuth, alpns: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    rustls_client_config_with(auth, alpns, None)
}

/// The rustls half of [`client_config_with`].
pub fn rustls_client_config_with(
    auth: ServerAuth,
    alpns: &[&[u8]],
    identity: Option<&CertifiedKey>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier::new(auth, Arc::clone(&provider)));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match identity {
        Some(certified) => builder
            .with_client_auth_cert(certified.chain.clone(), certified.key.clone_key())
            .map_err(|e| TlsError(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
}

/// The server name a client sends when it connects by peer ID or insecurely.
pub fn default_server_name() -> &'static str {
    CERT_NAME
}

/// What a client accepts as the server's end-entity certificate; the handshake signature is
/// checked apart from it, by [`PinnedServerVerifier`].
pub trait ServerPin: std::fmt::Debug + Send + Sync {
    /// Accept the server's end-entity certificate, or say why not.
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error>;
}

impl ServerPin for ServerAuth {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match self {
            ServerAuth::Insecure => Ok(()),
            ServerAuth::PeerId(expected) => match proven_peer_id(end_entity)? {
                actual if actual == *expected => Ok(()),
                _ => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)),
            },
        }
    }
}

/// The peer ID whose key `end_entity` carries; a certificate that names no peer is refused as
/// one of an unknown issuer.
fn proven_peer_id(end_entity: &CertificateDer<'_>) -> Result<PeerId, rustls::Error> {
    crate::identity::peer_id_of_certificate(end_entity)
        .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))
}

/// Whether a connection's close `reason` says this client refused the server's certificate: with
/// [`ServerAuth::PeerId`] that means the certificate does not prove the pinned peer ID. (quinn
/// carries the TLS error as text: rustls's wording of `Error::InvalidCertificate`; a close the
/// server sent, `aborted by peer`, is the server refusing ours.)
pub fn is_certificate_refusal(reason: &str) -> bool {
    reason.contains("invalid peer certificate") && !reason.starts_with("aborted by peer")
}

/// Authenticates a server by its [`ServerPin`] instead of a CA chain, and checks its TLS 1.3
/// handshake signature with the provider's algorithms.
#[derive(Debug)]
pub struct PinnedServerVerifier<P> {
    pin: P,
    signatures: HandshakeSignatures,
}

impl<P: ServerPin> PinnedServerVerifier<P> {
    /// Accept the server that `pin` accepts, its signatures checked with `provider`.
    pub fn new(pin: P, provider: Arc<CryptoProvider>) -> Self {
        Self { pin, signatures: HandshakeSignatures(provider) }
    }
}

impl<P: ServerPin> ServerCertVerifier for PinnedServerVerifier<P> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.pin.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        HandshakeSignatures::refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// Accepts any client certificate whose handshake signature verifies: the certificate proves
/// possession of a key, and the peer ID is that key's hash. Not mandatory, so anonymous clients
/// are still served.
#[derive(Debug)]
struct PeerIdClientVerifier(HandshakeSignatures);

impl rustls::server::danger::ClientCertVerifier for PeerIdClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        // Only keys that name a peer are useful; anything else is refused rather than ignored.
        proven_peer_id(end_entity).map(|_| rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        HandshakeSignatures::refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// The handshake-signature half that every verifier here shares, server and client side.
#[derive(Debug)]
struct HandshakeSignatures(Arc<CryptoProvider>);

impl HandshakeSignatures {
    /// QUIC requires TLS 1.3 (RFC 9001 §4.2).
    fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The peer ID a connection's client proved with its certificate, if it presented one.
pub fn client_peer_id(certificates: Option<&[CertificateDer<'static>]>) -> Option<PeerId> {
    certificates?.first().and_then(crate::identity::peer_id_of_certificate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    /// Run a TLS 1.3 handshake in memory; return the client side.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<rustls::ClientConnection, rustls::Error> {
        let name = ServerName::try_from(CERT_NAME).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(client);
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn peer_id_must_match() {
        let server = Identity::ephemeral().unwrap();
        let other = Identity::ephemeral().unwrap();
        let server_tls = || rustls_server_config(&server, &[ALPN_ANT_QUIC]).unwrap();
        let good = rustls_client_config(ServerAuth::PeerId(server.peer_id()), &[ALPN_ANT_QUIC]).unwrap();
        assert!(handshake(good, server_tls()).is_ok());
        let wrong = rustls_client_config(ServerAuth::PeerId(other.peer_id()), &[ALPN_ANT_QUIC]).unwrap();
        assert!(handshake(wrong, server_tls()).is_err(), "a certificate for another key was accepted");
        let insecure = rustls_client_config(ServerAuth::Insecure, &[ALPN_ANT_QUIC]).unwrap();
        assert!(handshake(insecure, server_tls()).is_ok());
    }

    #[test]
    fn a_client_certificate_proves_the_peer_id_and_is_optional() {
        let server = Identity::ephemeral().unwrap();
        let client = Identity::ephemeral().unwrap();
        let server_tls = || rustls_server_config(&server, &[ALPN_ANT_QUIC]).unwrap();
        let with_cert = rustls_client_config_with(
            ServerAuth::PeerId(server.peer_id()),
            &[ALPN_ANT_QUIC],
            Some(&CertifiedKey::of_identity(&client)),
        )
        .unwrap();
        let name = ServerName::try_from(CERT_NAME).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(with_cert), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server_tls())).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        assert!(!s.is_handshaking());
        assert_eq!(client_peer_id(s.peer_certificates()), Some(client.peer_id()));
        // Anonymous clients are still served.
        let anonymous = rustls_client_config(ServerAuth::PeerId(server.peer_id()), &[ALPN_ANT_QUIC]).unwrap();
        assert!(handshake(anonymous, server_tls()).is_ok());
    }

    /// The group the server picked, as both sides see it.
    #[cfg(feature = "aws-lc-rs")]
    fn negotiated_group(client: rustls::ClientConfig, server: rustls::ServerConfig) -> rustls::NamedGroup {
        let conn = handshake(client, server).unwrap();
        conn.negotiated_key_exchange_group().unwrap().name()
    }

    #[cfg(feature = "pqc")]
    #[test]
    fn post_quantum_key_exchange_is_negotiated() {
        let server = Identity::ephemeral().unwrap();
        assert_eq!(provider().kx_groups[0].name(), rustls::NamedGroup::X25519MLKEM768, "not offered first");
        let client = rustls_client_config(ServerAuth::PeerId(server.peer_id()), &[ALPN_ANT_QUIC]).unwrap();
        let server_tls = rustls_server_config(&server, &[ALPN_ANT_QUIC]).unwrap();
        assert_eq!(negotiated_group(client, server_tls), rustls::NamedGroup::X25519MLKEM768);
        assert_eq!(provider_name(), "aws-lc-rs (X25519MLKEM768 preferred)");
    }

    /// A pqc node still talks to peers without ML-KEM (an older build, `--no-default-features`):
    /// both ways, they agree on X25519.
    #[cfg(feature = "pqc")]
    #[test]
    fn post_quantum_node_falls_back_to_x25519_with_a_classical_peer() {
        use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
        let classical = || {
            let mut p = default_provider();
            p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1];
            Arc::new(p)
        };
        let server = Identity::ephemeral().unwrap();
        let classical_client = rustls::ClientConfig::builder_with_provider(classical())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new(ServerAuth::Insecure, classical())))
            .with_no_client_auth();
        let server_tls = rustls_server_config(&server, &[]).unwrap();
        assert_eq!(negotiated_group(classical_client, server_tls), rustls::NamedGroup::X25519);

        let classical_server = rustls::ServerConfig::builder_with_provider(classical())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![server.certificate()], server.private_key())
            .unwrap();
        let client = rustls_client_config(ServerAuth::Insecure, &[]).unwrap();
        assert_eq!(negotiated_group(client, classical_server), rustls::NamedGroup::X25519);
    }

    #[cfg(all(feature = "aws-lc-rs", not(feature = "pqc")))]
    #[test]
    fn aws_lc_rs_without_pqc_uses_classical_key_exchange() {
        assert!(provider().kx_groups.iter().all(|g| g.name() != rustls::NamedGroup::X25519MLKEM768));
        let server = Identity::ephemeral().unwrap();
        let client = rustls_client_config(ServerAuth::Insecure, &[ALPN_ANT_QUIC]).unwrap();
        let server_tls = rustls_server_config(&server, &[ALPN_ANT_QUIC]).unwrap();
        assert_eq!(negotiated_group(client, server_tls), rustls::NamedGroup::X25519);
    }

    #[cfg(not(feature = "aws-lc-rs"))]
    #[test]
    fn ring_build_uses_classical_key_exchange() {
        let server = Identity::ephemeral().unwrap();
        let client = rustls_client_config(ServerAuth::Insecure, &[ALPN_ANT_QUIC]).unwrap();
        let conn = handshake(client, rustls_server_config(&server, &[ALPN_ANT_QUIC]).unwrap()).unwrap();
        assert_eq!(conn.negotiated_key_exchange_group().unwrap().name(), rustls::NamedGroup::X25519);
    }
}
