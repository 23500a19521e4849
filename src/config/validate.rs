//! The checks a configuration passes before it is used: files exist and parse, keys that go
//! together.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

use ant_quic_control::nat::agent::BootstrapSpec;

use super::origin::{ConfigError, Origin};
use super::sections::{
    Backend, Config, LogOutput, MAX_DRAIN_TIMEOUT, MAX_HANDSHAKE_TIMEOUT, MAX_RELAY_LIFETIME, MAX_TWO_SIDED_RATE,
    MIN_RELAY_LIFETIME,
};
use crate::identity::PeerId;
use crate::logging::LoggingError;
use crate::tls;

/// Checks that need more than a type: files exist and parse, keys that go together.
pub(super) fn validate(config: &Config, origins: &HashMap<String, Origin>) -> Result<(), ConfigError> {
    let fail = |key: &str, message: String| ConfigError {
        origin: origins.get(key).cloned().unwrap_or(Origin::Default).to_string(),
        message,
    };
    if config.node.cores == Some(0) {
        return Err(fail("node.cores", "[node] cores must be at least 1".into()));
    }
    if config.node.drain_timeout > MAX_DRAIN_TIMEOUT {
        return Err(fail(
            "node.drain_timeout",
            format!("[node] drain_timeout must be at most {MAX_DRAIN_TIMEOUT} seconds (a day)"),
        ));
    }
    if config.node.backend == Some(Backend::AfXdp)
        && config.node.listen.ip().is_unspecified()
        && config.node.xdp_interface.is_none()
    {
        return Err(fail(
            "node.backend",
            format!(
                "backend af-xdp attaches to one interface: listen on one of its addresses instead of {}, \
                 or set [node] xdp_interface",
                config.node.listen
            ),
        ));
    }
    let listen = config.node.listen.port();
    if listen != 0 && config.nat.alternate_port == Some(listen) {
        return Err(fail(
            "nat.alternate_port",
            format!("[nat] alternate_port {listen} is the listen port: choose another port, or 0 to turn it off"),
        ));
    }
    if let Some(preferred) = config.node.preferred_address {
        if let Err(why) = check_preferred_address(preferred, config.node.listen) {
            return Err(fail("node.preferred_address", format!("[node] preferred_address {preferred}: {why}")));
        }
    }
    for entry in &config.node.bootstrap {
        if let Err(why) = split_bootstrap(entry) {
            return Err(fail("node.bootstrap", format!("[node] bootstrap: {why}")));
        }
    }
    if config.nat.two_sided_rate > MAX_TWO_SIDED_RATE {
        return Err(fail(
            "nat.two_sided_rate",
            format!("[nat] two_sided_rate must be at most {MAX_TWO_SIDED_RATE} guesses a second (0 turns it off)"),
        ));
    }
    if !(MIN_RELAY_LIFETIME..=MAX_RELAY_LIFETIME).contains(&config.nat.relay_lifetime) {
        return Err(fail(
            "nat.relay_lifetime",
            format!(
                "[nat] relay_lifetime must be between {MIN_RELAY_LIFETIME} and {MAX_RELAY_LIFETIME} seconds (a day)"
            ),
        ));
    }
    config.registry.check().map_err(|(key, message)| fail(key, message))?;
    let level = config.logging.level.trim();
    let plain = !level.contains(['=', ',', '[', ':']);
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if plain && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
        return Err(fail(
            "logging.level",
            format!(
                "[logging] level '{level}' is not one of off, error, warn, info, debug, trace (or a RUST_LOG filter)"
            ),
        ));
    }
    if let Err(error) = crate::logging::parse_filter(level) {
        let reason = match error {
            LoggingError::Filter { reason, .. } => reason,
            other => other.to_string(),
        };
        return Err(fail(
            "logging.level",
            format!("[logging] level '{}' is not a level or filter: {reason}", config.logging.level),
        ));
    }
    if config.logging.outputs.contains(&LogOutput::File) && config.logging.file_path.is_none() {
        return Err(fail("logging.outputs", "[logging] outputs has \"file\" but file_path is not set".into()));
    }
    if let Some(path) = &config.logging.file_path {
        if path.file_name().is_none() {
            return Err(fail("logging.file_path", format!("[logging] file_path {} names no file", path.display())));
        }
    }
    let s = &config.security;
    if s.max_half_open == 0 {
        return Err(fail("security.max_half_open", "[security] max_half_open must be at least 1".into()));
    }
    if !(1..=MAX_HANDSHAKE_TIMEOUT).contains(&s.handshake_timeout) {
        return Err(fail(
            "security.handshake_timeout",
            format!("[security] handshake_timeout must be between 1 and {MAX_HANDSHAKE_TIMEOUT} seconds"),
        ));
    }
    match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(_)) => {
            tls::load_certificates(cert).map_err(|e| fail("security.tls_cert", format!("[security] tls_cert: {e}")))?;
        }
        (Some(_), None) => {
            return Err(fail("security.tls_cert", "[security] tls_cert is set but tls_key is not".into()));
        }
        (None, Some(_)) => {
            return Err(fail("security.tls_key", "[security] tls_key is set but tls_cert is not".into()))
        }
        (None, None) => {}
    }
    if s.require_client_certs && s.client_ca.is_none() {
        return Err(fail(
            "security.require_client_certs",
            "[security] require_client_certs = true needs client_ca (the CA client certificates must chain to)".into(),
        ));
    }
    if let Some(ca) = &s.client_ca {
        tls::load_ca(ca).map_err(|e| fail("security.client_ca", format!("[security] client_ca: {e}")))?;
    }
    let security =
        config.server_security().map_err(|e| fail("security.tls_key", format!("[security] tls_key: {e}")))?;
    if security.certificate.is_some() {
        // Catches a key that does not belong to the certificate.
        let identity = crate::identity::Identity::ephemeral().map_err(|e| fail("security.tls_key", e.to_string()))?;
        tls::rustls_server_config_with(&identity, &[], &security)
            .map_err(|e| fail("security.tls_key", format!("[security] tls_key: {e}")))?;
    }
    Ok(())
}

/// Why `preferred` cannot be the node's preferred address when it listens on `listen`, if it
/// cannot. The node receives on it with its listen socket (no second socket): the socket must be
/// bound to a wildcard address, on the same port, and the address must be one of this host's.
fn check_preferred_address(preferred: SocketAddr, listen: SocketAddr) -> Result<(), String> {
    let ip = preferred.ip();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err("not a unicast address".into());
    }
    if matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) {
        return Err("an IPv4-mapped IPv6 address: write the IPv4 address".into());
    }
    if !listen.ip().is_unspecified() {
        return Err(format!(
            "[node] listen {listen} must be 0.0.0.0:PORT or [::]:PORT, so that the listen socket receives on this address too"
        ));
    }
    if ip.is_ipv6() && listen.is_ipv4() {
        return Err(format!("an IPv6 address needs [node] listen = \"[::]:{}\"", listen.port()));
    }
    if listen.port() == 0 || preferred.port() != listen.port() {
        return Err(format!(
            "the port must be the [node] listen port (a fixed one; listen is {listen}): the node receives on one port"
        ));
    }
    UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(|e| format!("not an address of this host ({e})"))?;
    Ok(())
}

/// A `[node] bootstrap` entry, `HOST:PORT` (known by address only) or `PEER_ID@HOST:PORT` (pinned:
/// its certificate must prove that peer ID): the pin, if any, and `HOST:PORT`; or why it is
/// neither.
pub fn split_bootstrap(entry: &str) -> Result<(Option<PeerId>, &str), String> {
    let (peer, address) = match entry.split_once('@') {
        Some((peer, address)) => match peer.parse::<PeerId>() {
            Ok(peer) => (Some(peer), address),
            Err(_) => return Err(format!("'{entry}': the peer ID '{peer}' is not 64 hex digits")),
        },
        None => (None, entry),
    };
    let ok = address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !ok {
        return Err(format!("'{entry}' is not HOST:PORT or PEER_ID@HOST:PORT"));
    }
    Ok((peer, address))
}

/// `[node] bootstrap` / `--bootstrap` entries (`[PEER_ID@]HOST:PORT`) resolved to addresses (the
/// first address of each), with their pins.
pub fn resolve_bootstraps(entries: &[String]) -> Result<Vec<BootstrapSpec>, String> {
    entries
        .iter()
        .map(|entry| {
            let (peer, host_port) = split_bootstrap(entry)?;
            let address = host_port
                .to_socket_addrs()
                .map_err(|e| format!("bootstrap '{entry}' cannot be resolved: {e}; give [PEER_ID@]HOST:PORT"))?
                .next()
                .ok_or_else(|| format!("bootstrap '{entry}' has no address"))?;
            Ok(BootstrapSpec { address, peer })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::split_bootstrap;

    #[test]
    fn bootstrap_entries_are_host_port_with_an_optional_peer_id() {
        let pin = "ab".repeat(32);
        assert_eq!(split_bootstrap("boot.example:9000"), Ok((None, "boot.example:9000")));
        let pinned = format!("{pin}@[::1]:9000");
        assert_eq!(split_bootstrap(&pinned), Ok((Some(pin.parse().unwrap()), "[::1]:9000")));
        assert!(split_bootstrap("abc@boot.example:9000").unwrap_err().contains("the peer ID 'abc'"));
        assert!(split_bootstrap(&format!("{pin}@boot.example")).unwrap_err().contains("is not HOST:PORT"));
        assert!(split_bootstrap("@boot.example:9000").is_err());
    }
}
