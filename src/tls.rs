//! TLS 1.3 for QUIC (RFC 9001) with rustls: the crypto provider chosen at build time, server and
//! client configurations, and the verifier that authenticates a peer by its peer ID.

use std::sync::Arc;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::identity::{Identity, PeerId, CERT_NAME};

/// ALPN of the node's own protocol.
pub const ALPN_ANT_QUIC: &[u8] = b"ant-quic/1";
/// ALPN of HTTP/0.9 over QUIC, as used by the QUIC interop runner.
pub const ALPN_HQ_INTEROP: &[u8] = b"hq-interop";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsError(String);

/// The crypto provider of this build. With aws-lc-rs, the hybrid post-quantum key exchange
/// X25519MLKEM768 is offered first, classical groups after it for peers without it.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    {
        use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
        let mut provider = default_provider();
        provider.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
        Arc::new(provider)
    }
    #[cfg(all(feature = "rustls-ring", not(feature = "aws-lc-rs")))]
    {
        Arc::new(rustls::crypto::ring::default_provider())
    }
}

/// Name of the crypto provider this build uses.
pub fn provider_name() -> &'static str {
    if cfg!(feature = "aws-lc-rs") {
        "aws-lc-rs (X25519MLKEM768 preferred)"
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

/// Server side: our certificate, offering `alpns`.
pub fn server_config(identity: &Identity, alpns: &[&[u8]]) -> Result<quinn_proto::ServerConfig, TlsError> {
    let quic = QuicServerConfig::try_from(Arc::new(rustls_server_config(identity, alpns)?))
        .map_err(|e| TlsError(e.to_string()))?;
    Ok(quinn_proto::ServerConfig::with_crypto(Arc::new(quic)))
}

/// The rustls half of [`server_config`].
pub fn rustls_server_config(identity: &Identity, alpns: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![identity.certificate()], identity.private_key())
        .map_err(|e| TlsError(e.to_string()))?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    tls.max_early_data_size = 0;
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
    let quic = QuicClientConfig::try_from(Arc::new(rustls_client_config(auth, alpns)?))
        .map_err(|e| TlsError(e.to_string()))?;
    Ok(quinn_proto::ClientConfig::new(Arc::new(quic)))
}

/// The rustls half of [`client_config`].
pub fn rustls_client_config(auth: ServerAuth, alpns: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PeerIdVerifier { expected: auth, provider: Arc::clone(&provider) });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(tls)
}

/// The server name a client sends when it connects by peer ID or insecurely.
pub fn default_server_name() -> &'static str {
    CERT_NAME
}

/// Authenticates a server by the key in its certificate instead of a CA chain.
#[derive(Debug)]
struct PeerIdVerifier {
    expected: ServerAuth,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.expected {
            ServerAuth::Insecure => Ok(ServerCertVerified::assertion()),
            ServerAuth::PeerId(expected) => match PeerId::from_certificate(end_entity) {
                Some(actual) if actual == expected => Ok(ServerCertVerified::assertion()),
                Some(_) => {
                    Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
                }
                None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC requires TLS 1.3 (RFC 9001 §4.2).
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
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

    #[cfg(feature = "aws-lc-rs")]
    #[test]
    fn post_quantum_key_exchange_is_negotiated() {
        let server = Identity::ephemeral().unwrap();
        let client = rustls_client_config(ServerAuth::PeerId(server.peer_id()), &[ALPN_ANT_QUIC]).unwrap();
        let conn = handshake(client, rustls_server_config(&server, &[ALPN_ANT_QUIC]).unwrap()).unwrap();
        let group = conn.negotiated_key_exchange_group().unwrap().name();
        assert_eq!(group, rustls::NamedGroup::X25519MLKEM768);
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
