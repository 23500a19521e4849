//! The commented config file that `ant-quic config default` prints.

/// A commented config file holding every default (`ant-quic config default`).
pub const DEFAULT_FILE: &str = r#"# ant-quic configuration. Every key is optional; each is shown with its default.
# Precedence: defaults < this file < environment (ANT_QUIC_<SECTION>_<KEY>) < command-line flags.
# Searched for at --config PATH, ./ant-quic.toml, /etc/ant-quic/ant-quic.toml, in that order.

[node]
# UDP address to listen on (--listen, ANT_QUIC_NODE_LISTEN).
listen = "0.0.0.0:9000"
# Data-plane cores (default: one per CPU this process may run on).
# cores = 4
# I/O backend: "io-uring", "portable" or "af-xdp" (default: io-uring when the kernel allows it).
# af-xdp attaches an XDP program to the interface holding the listen address (docs/af-xdp.md):
# it needs root, a specific listen address or xdp_interface, and no more cores than RX queues.
# backend = "io-uring"
# The interface af-xdp attaches to (default: the one holding the listen address).
# xdp_interface = "eth0"
# With af-xdp: established relay channels are forwarded by the XDP program, not by a core.
# xdp_relay = true
# Directory holding the identity key (default: ~/.ant-quic).
# data_dir = "/var/lib/ant-quic"
# Serve the files of this directory over hq-interop.
# www = "/srv/ant-quic/www"
# Bootstrap peers, HOST:PORT, or PEER_ID@HOST:PORT to require that the bootstrap proves that peer
# ID (its TLS certificate carries the key); the first one given coordinates --connect, the next
# ones take a request over when it does not answer (--bootstrap, ANT_QUIC_NODE_BOOTSTRAP).
bootstrap = []
# Address clients are asked to move to once the handshake is confirmed (QUIC's preferred_address,
# RFC 9000 section 9.6): another address of this host on the listen port; needs listen on
# 0.0.0.0 or [::] with a fixed port (ANT_QUIC_NODE_PREFERRED_ADDRESS).
# preferred_address = "203.0.113.2:9000"
# Seconds a node taken over by `ant-quic --takeover` keeps serving its live connections before it
# closes what is left with CONNECTION_CLOSE; 0 closes at once (--drain-timeout,
# ANT_QUIC_NODE_DRAIN_TIMEOUT).
drain_timeout = 60

[metrics]
# TCP port of /metrics, /health, /ready (default: the number of the UDP listen port).
# port = 9000
# Address the admin listener binds.
bind = "127.0.0.1"

[logging]
# Level (error, warn, info, debug, trace) or a RUST_LOG-style filter; RUST_LOG overrides it.
level = "info"
# "json" (one object per line, see docs/logging.md) or "text".
format = "text"
# Any of "stdout", "stderr", "file".
outputs = ["stderr"]
# Required when outputs has "file".
# file_path = "/var/log/ant-quic/ant-quic.log"
# "daily", "hourly", "minutely" or "never".
rotation = "daily"
# Rotated files older than this are deleted; 0 keeps them all.
retention_days = 7

[security]
# PEM certificate chain and key presented to clients instead of the self-signed identity
# certificate. Clients that authenticate the node by peer ID only accept it if the certificate
# carries the node's identity key.
# tls_cert = "/etc/ant-quic/cert.pem"
# tls_key = "/etc/ant-quic/key.pem"
# Refuse clients that present no certificate signed by client_ca.
require_client_certs = false
# PEM CA certificates client certificates must chain to; without require_client_certs a client
# certificate is optional, but verified when presented.
# client_ca = "/etc/ant-quic/client-ca.pem"
# Under a flood of connection attempts: "auto" asks new clients to prove their address with a
# Retry (one more round trip, no state kept until they do) once retry_threshold handshakes are in
# flight on a core; "always" asks every new client; "never" never does.
retry = "auto"
retry_threshold = 64
# Half-open connections (handshake not complete) one core holds at most; beyond, attempts are
# refused and counted in quic_handshakes_refused_total{reason="half_open_limit"}.
max_half_open = 1024
# Seconds a connection has to complete its handshake before it is dropped (1 to 30).
# These four keys are read at start; SIGHUP does not change them.
handshake_timeout = 10
# Accept 0-RTT data (requests sent with the first flight of a resumed session, one round trip
# sooner). An attacker who captured such a flight can replay it, so enable this only when every
# request the node serves may run twice (hq-interop GET does; ant-quic/1 uploads do not belong
# there). Session tickets are single use within one node process. Read at start and on SIGHUP.
zero_rtt = false

[nat]
# Seconds a relay allocation this node grants (as a bootstrap) lives; the peers renew it at 80 %
# while they use it. 10 to 86400 (--relay-lifetime, ANT_QUIC_NAT_RELAY_LIFETIME).
relay_lifetime = 600
# Guesses per second a peer sends, for at most 5 s, in a two-sided many-probe round: when both
# peers are behind symmetric NATs, each guesses ports of the other's public IP until a guess meets
# one of the other's (about 60 % within 5 s at the default; each guess is a 27-byte datagram and a
# mapping on both NATs). The pair is connected through the relay meanwhile. 0 turns it off.
two_sided_rate = 12800
# UDP port that answers peers' mapping discovery (RFC 5780's alternate port): with it, a peer that
# has only this node as its bootstrap learns whether its NAT maps endpoint-independently, which
# decides how hole punching to a symmetric NAT goes. Open it in the firewall like the listen port.
# Default: the listen port + 1 (any free port when the listen port is 0); 0 turns it off.
# alternate_port = 9001
# Another IP of this host that answers on the alternate port too (tells address-dependent mapping
# apart as well).
# alternate_ip = "203.0.113.2"

[registry]
# Where this node, as a bootstrap, keeps the peers registered with it: "memory" (this process
# only) or "etcd": shared by every bootstrap of a federation, so that each can find the peers
# registered at the others (docs/federation.md; needs a build with `--features etcd`).
# --registry-backend, ANT_QUIC_REGISTRY_BACKEND.
backend = "memory"
# etcd client URLs, http://HOST:PORT or https://HOST:PORT (--registry-endpoint, repeatable;
# ANT_QUIC_REGISTRY_ENDPOINTS, comma-separated).
endpoints = []
# Key prefix: every bootstrap of one federation uses the same.
prefix = "/ant-quic"
# The other bootstraps of the federation, PEER_ID@HOST:PORT (the peer ID is required: bootstraps
# know each other by it, never by address). This node keeps a link to each, forwards connection
# requests for peers registered there, and takes forwarded requests from them only. Empty: no
# forwarding. Needs backend = "etcd". --registry-bootstrap (repeatable),
# ANT_QUIC_REGISTRY_BOOTSTRAPS (comma-separated).
bootstraps = []
# Seconds the peers of a bootstrap that died stay in etcd (its lease's TTL, kept alive every
# third of it). 1 to 3600.
lease_ttl = 10
# With https:// endpoints: the CA the etcd server certificates chain to, and this node's client
# certificate and key if etcd asks for one.
# ca_file = "/etc/ant-quic/etcd-ca.pem"
# cert_file = "/etc/ant-quic/etcd-client.pem"
# key_file = "/etc/ant-quic/etcd-client-key.pem"

[compatibility]
# Accept keys renamed since older versions (e.g. [logging] log_level).
support_deprecated_keys = true
# Warn about each renamed key accepted.
migration_warnings = true
"#;
