//! `[registry]`: where a bootstrap keeps the peers registered with it — in memory (one node), or
//! in etcd, shared by a federation of bootstraps (docs/federation.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::tls;

/// Where the registry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryBackend {
    /// This process only.
    #[default]
    Memory,
    /// An etcd cluster shared with other bootstraps (needs the `etcd` build feature).
    Etcd,
}

/// `[registry]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySection {
    /// `memory` or `etcd`.
    pub backend: RegistryBackend,
    /// etcd client URLs, `http://HOST:PORT` or `https://HOST:PORT`.
    pub endpoints: Vec<String>,
    /// Key prefix in etcd, shared by every bootstrap of one federation.
    pub prefix: String,
    /// Seconds a dead bootstrap's peers stay in etcd (its lease's TTL); kept alive every third.
    pub lease_ttl: u64,
    /// The other bootstraps of the federation, `PEER_ID@HOST:PORT`: linked to, forwarded to, and
    /// the only ones whose forwarded connection requests are taken.
    pub bootstraps: Vec<String>,
    /// PEM CA certificates the etcd server certificates must chain to (with `https://`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd (with `key_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `[registry] prefix` when none is given.
pub const DEFAULT_REGISTRY_PREFIX: &str = "/ant-quic";
/// `[registry] lease_ttl` when none is given, in seconds.
pub const DEFAULT_LEASE_TTL: u64 = 10;
/// The longest `[registry] lease_ttl`: an hour.
pub const MAX_LEASE_TTL: u64 = 3600;

impl Default for RegistrySection {
    fn default() -> Self {
        Self {
            backend: RegistryBackend::Memory,
            endpoints: Vec::new(),
            prefix: DEFAULT_REGISTRY_PREFIX.to_owned(),
            lease_ttl: DEFAULT_LEASE_TTL,
            bootstraps: Vec::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// The message a build without the `etcd` feature gives for `backend = "etcd"`.
pub const NO_ETCD_FEATURE: &str = "[registry] backend = \"etcd\" needs a build with etcd support: rebuild with \
                                   `cargo build --release --features etcd` (which needs protoc, Debian's protobuf-compiler)";

impl RegistrySection {
    /// Why this section cannot be used, as `(key, message)`: the key names the origin.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        for entry in &self.bootstraps {
            match super::split_bootstrap(entry) {
                Ok((Some(_), _)) => {}
                Ok((None, _)) => {
                    return Err((
                        "registry.bootstraps",
                        format!(
                            "[registry] bootstraps: '{entry}' needs the bootstrap's peer ID: PEER_ID@HOST:PORT \
                             (bootstraps know each other by peer ID, never by address)"
                        ),
                    ))
                }
                Err(why) => return Err(("registry.bootstraps", format!("[registry] bootstraps: {why}"))),
            }
        }
        if self.backend == RegistryBackend::Memory {
            if !self.bootstraps.is_empty() {
                return Err((
                    "registry.bootstraps",
                    "[registry] bootstraps needs backend = \"etcd\": the peers of the other bootstraps are found in \
                     the shared registry"
                        .into(),
                ));
            }
            return Ok(());
        }
        if !cfg!(feature = "etcd") {
            return Err(("registry.backend", NO_ETCD_FEATURE.to_owned()));
        }
        if self.endpoints.is_empty() {
            return Err((
                "registry.endpoints",
                "[registry] backend = \"etcd\" needs endpoints (etcd client URLs)".into(),
            ));
        }
        for endpoint in &self.endpoints {
            check_endpoint(endpoint).map_err(|why| ("registry.endpoints", format!("[registry] endpoints: {why}")))?;
        }
        if !self.prefix.starts_with('/') || self.prefix.trim_end_matches('/').is_empty() {
            return Err((
                "registry.prefix",
                format!("[registry] prefix '{}' must start with / and name something", self.prefix),
            ));
        }
        if !(1..=MAX_LEASE_TTL).contains(&self.lease_ttl) {
            return Err((
                "registry.lease_ttl",
                format!("[registry] lease_ttl must be between 1 and {MAX_LEASE_TTL} seconds"),
            ));
        }
        if let Some(ca) = &self.ca_file {
            tls::load_certificates(ca).map_err(|e| ("registry.ca_file", format!("[registry] ca_file: {e}")))?;
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                tls::load_certificates(cert)
                    .map_err(|e| ("registry.cert_file", format!("[registry] cert_file: {e}")))?;
                let text = std::fs::read_to_string(key)
                    .map_err(|e| ("registry.key_file", format!("[registry] key_file {}: {e}", key.display())))?;
                if !text.contains("PRIVATE KEY-----") {
                    return Err((
                        "registry.key_file",
                        format!("[registry] key_file {}: no PEM private key", key.display()),
                    ));
                }
            }
            (Some(_), None) => {
                return Err(("registry.cert_file", "[registry] cert_file is set but key_file is not".into()))
            }
            (None, Some(_)) => {
                return Err(("registry.key_file", "[registry] key_file is set but cert_file is not".into()))
            }
            (None, None) => {}
        }
        let tls_files = self.ca_file.is_some() || self.cert_file.is_some();
        if tls_files && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err((
                "registry.endpoints",
                "[registry] ca_file or cert_file is set but an endpoint is http://: use https:// for every endpoint"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Whether `endpoint` is `http://HOST:PORT` or `https://HOST:PORT`.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or_else(|| format!("'{endpoint}' is not http://HOST:PORT or https://HOST:PORT"))?;
    let ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(['/', '@', ' ']) && port.parse::<u16>().is_ok_and(|p| p != 0)
    });
    if !ok {
        return Err(format!("'{endpoint}' is not http://HOST:PORT or https://HOST:PORT"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_or_https_urls_with_a_port() {
        assert!(check_endpoint("http://127.0.0.1:2379").is_ok());
        assert!(check_endpoint("https://etcd.example:2379").is_ok());
        assert!(check_endpoint("[::1]:2379").unwrap_err().contains("is not http://"));
        assert!(check_endpoint("http://127.0.0.1").is_err());
        assert!(check_endpoint("http://:2379").is_err());
        assert!(check_endpoint("unix:///run/etcd.sock").is_err());
    }

    #[test]
    fn memory_needs_nothing_and_etcd_needs_the_feature_and_endpoints() {
        assert_eq!(RegistrySection::default().check(), Ok(()));
        let etcd = RegistrySection { backend: RegistryBackend::Etcd, ..RegistrySection::default() };
        let (key, message) = etcd.check().unwrap_err();
        if cfg!(feature = "etcd") {
            assert_eq!(key, "registry.endpoints", "{message}");
        } else {
            assert_eq!(message, NO_ETCD_FEATURE);
            assert!(message.contains("--features etcd") && message.contains("protobuf-compiler"));
        }
    }
}
