//! The node's configuration: one typed [`Config`] with its defaults, and the layers it is built
//! from — defaults < TOML file < environment (`ANT_QUIC_<SECTION>_<KEY>`) < command-line flags.
//!
//! [`Loader::load`] does the whole job and is what a reload (SIGHUP) calls again: it re-reads the
//! file, re-applies environment and flags, validates, and returns the new effective config or a
//! one-line error, leaving the running config untouched.

mod default_file;
mod loader;
mod origin;
mod registry;
mod sections;
mod validate;

pub use default_file::DEFAULT_FILE;
pub use loader::{load, load_text, Loaded, Loader, Overrides, RenamedKey, ENV_PREFIX, RENAMED_KEYS, SEARCH_PATHS};
pub use origin::ConfigError;
pub use registry::{RegistryBackend, RegistrySection, DEFAULT_LEASE_TTL, DEFAULT_REGISTRY_PREFIX, NO_ETCD_FEATURE};
pub use sections::{
    Backend, CompatibilitySection, Config, LogFormat, LogOutput, LogRotation, LoggingSection, MetricsSection,
    NatSection, NodeSection, SecuritySection, DEFAULT_DRAIN_TIMEOUT, MAX_DRAIN_TIMEOUT, MAX_RELAY_LIFETIME,
    MIN_RELAY_LIFETIME,
};
pub use validate::{resolve_bootstraps, split_bootstrap};
