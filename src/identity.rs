//! A node's identity: an Ed25519 key kept in the data directory, the peer ID derived from it, and
//! the self-signed certificate that carries it in TLS.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use sha2::{Digest, Sha256};

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "identity.key";
/// The name every node's certificate is issued for (identity is the key, not the name).
pub const CERT_NAME: &str = "ant-quic";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): the key's 32 bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

pub use ant_quic_control::PeerId;

/// The peer ID of an Ed25519 public key.
pub fn peer_id_of_key(key: &[u8]) -> PeerId {
    PeerId(Sha256::digest(key).into())
}

/// The peer ID of the Ed25519 key in a certificate's SubjectPublicKeyInfo, if it is one.
pub fn peer_id_of_spki(spki: &[u8]) -> Option<PeerId> {
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    (key.len() == 32).then(|| peer_id_of_key(key))
}

/// The peer ID carried by a DER certificate.
pub fn peer_id_of_certificate(cert: &CertificateDer<'_>) -> Option<PeerId> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki: SubjectPublicKeyInfoDer<'static> = parsed.subject_public_key_info();
    peer_id_of_spki(spki.as_ref())
}

/// Why an identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The data directory or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The key file is not an Ed25519 PKCS#8 PEM key.
    #[error("{path}: not an Ed25519 private key in PKCS#8 PEM ({reason}); move it away to create a new identity")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("cannot create the node certificate: {0}")]
    Certificate(String),
}

/// A node's key, peer ID and certificate.
pub struct Identity {
    peer_id: PeerId,
    key_der: Vec<u8>,
    certificate: CertificateDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("peer_id", &self.peer_id).finish_non_exhaustive()
    }
}

impl Identity {
    /// Load the key from `data_dir`, creating the directory (0700) and a new key (0600) on
    /// first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, IdentityError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { path, source }
        };
        let key_path = data_dir.join(KEY_FILE);
        let pem = match fs::read_to_string(&key_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(data_dir).map_err(io(data_dir))?;
                // Best effort: an existing shared directory keeps its mode.
                let _ = fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700));
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .map_err(|e| IdentityError::Certificate(e.to_string()))?;
                let pem = key.serialize_pem();
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&key_path)
                    .map_err(io(&key_path))?;
                file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()).map_err(io(&key_path))?;
                tracing::info!(path = %key_path.display(), "created a new node identity");
                pem
            }
            Err(e) => return Err(IdentityError::Io { path: key_path, source: e }),
        };
        Self::from_pem(&pem).map_err(|reason| IdentityError::BadKey { path: key_path, reason })
    }

    /// A fresh identity that lives only in memory (tests, benchmarks, one-shot clients).
    pub fn ephemeral() -> Result<Self, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        Self::from_pem(&key.serialize_pem()).map_err(IdentityError::Certificate)
    }

    fn from_pem(pem: &str) -> Result<Self, String> {
        let key = rcgen::KeyPair::from_pem(pem).map_err(|e| e.to_string())?;
        if !key.is_compatible(&rcgen::PKCS_ED25519) {
            return Err("the key is not Ed25519".into());
        }
        let peer_id = peer_id_of_key(key.public_key_raw());
        let params = rcgen::CertificateParams::new(vec![CERT_NAME.to_owned()]).map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Self { peer_id, key_der: key.serialize_der(), certificate: cert.der().clone() })
    }

    /// This node's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The self-signed certificate for the key.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.certificate.clone()
    }

    /// The private key, for TLS.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_private_permissions() {
        let dir = std::env::temp_dir().join(format!("ant-quic-identity-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = Identity::load_or_create(&dir).unwrap();
        let mode = fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Identity::load_or_create(&dir).unwrap();
        assert_eq!(first.peer_id(), again.peer_id());
        assert_eq!(peer_id_of_certificate(&again.certificate()), Some(first.peer_id()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn broken_key_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("ant-quic-badkey-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(KEY_FILE), "not a key").unwrap();
        let err = Identity::load_or_create(&dir).unwrap_err().to_string();
        assert!(err.contains("not an Ed25519 private key"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn peer_id_round_trips_as_hex() {
        let id = Identity::ephemeral().unwrap().peer_id();
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<PeerId>().unwrap(), id);
        assert!("xyz".parse::<PeerId>().is_err());
    }
}
