//! Fuzz target: the node's TOML configuration file (`config::load_text`, what `load` runs on the
//! file it read: syntax, renamed keys, typed sections, validation).
//!
//! Oracle:
//! - no panic, and an error is one line;
//! - a file that loads, printed again with `to_toml()` (what `ant-quic config check` prints),
//!   loads to the same configuration, without warnings.
//!
//! Files that name a path under /dev, /proc or /sys are skipped: validation reads the certificate
//! files a config names, and reading a device can block (an operator's own doing, not input a
//! peer controls).

#![no_main]

use std::path::Path;

use ant_quic::config::{load_text, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if names_a_device(text) {
        return;
    }
    let path = Path::new("fuzz.toml");
    let loaded = match load_text(Some((path, text)), Vec::new(), &Overrides::default()) {
        Ok(loaded) => loaded,
        Err(error) => {
            let line = error.to_string();
            assert!(!line.contains('\n'), "a config error of more than one line: {line:?}");
            return;
        }
    };
    let printed = loaded.config.to_toml();
    let again = load_text(Some((path, &printed)), Vec::new(), &Overrides::default())
        .unwrap_or_else(|e| panic!("the printed config does not load: {e}\n{printed}"));
    assert_eq!(again.config, loaded.config, "printed and loaded again, the config changed:\n{printed}");
    assert!(again.warnings.is_empty(), "the printed config uses renamed keys: {:?}", again.warnings);
});

/// Whether any string in the file names a path under /dev, /proc or /sys (after TOML escapes).
fn names_a_device(text: &str) -> bool {
    fn walk(value: &toml::Value) -> bool {
        match value {
            toml::Value::String(s) => ["/dev", "/proc", "/sys"].iter().any(|p| s.contains(p)),
            toml::Value::Array(items) => items.iter().any(walk),
            toml::Value::Table(table) => table.values().any(walk),
            _ => false,
        }
    }
    match text.parse::<toml::Table>() {
        Ok(table) => table.values().any(walk),
        Err(_) => false,
    }
}
