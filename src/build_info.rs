//! What this build is: version, git commit, the cargo features an operator cares about, the
//! crypto provider and the default I/O backend — one line for `ant-quic --version`, `/health`
//! (`build`) and the node's start log line.

use std::sync::OnceLock;

/// Cargo features of this build that change what the node does, in a fixed order.
fn features() -> Vec<&'static str> {
    [
        (cfg!(feature = "aws-lc-rs"), "aws-lc-rs"),
        (cfg!(feature = "rustls-ring"), "rustls-ring"),
        (cfg!(feature = "pqc"), "pqc"),
        (cfg!(feature = "metrics"), "metrics"),
        (cfg!(feature = "tokio"), "tokio"),
        (cfg!(feature = "etcd"), "etcd"),
        (cfg!(feature = "profiling"), "profiling"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

/// `VERSION (commit HASH; features A B; crypto PROVIDER; default backend KIND)`, e.g.
/// `0.1.0 (commit 3651f71; features aws-lc-rs pqc metrics; crypto aws-lc-rs (X25519MLKEM768
/// preferred); default backend io-uring)`. The commit is `unknown` for a build outside a git
/// checkout. The default backend is probed once (io-uring when the kernel allows it).
pub fn build_line() -> &'static str {
    static LINE: OnceLock<String> = OnceLock::new();
    LINE.get_or_init(|| {
        let features = features();
        format!(
            "{} (commit {}; features {}; crypto {}; default backend {})",
            env!("CARGO_PKG_VERSION"),
            env!("ANT_QUIC_COMMIT"),
            if features.is_empty() { "none".to_owned() } else { features.join(" ") },
            crate::tls::provider_name(),
            crate::dataplane::backend::default_kind(),
        )
    })
}
