//! Records the git commit this build comes from, for `ant-quic --version` and `/health`
//! (`ANT_QUIC_COMMIT`: the short hash, or `unknown` outside a git checkout).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ANT_QUIC_COMMIT={commit}");
    // A new commit moves the ref HEAD points to (a loose file, or packed-refs after `git gc`); a
    // checkout moves HEAD. `--git-path` finds them in a linked worktree too, where `.git` is a
    // file. Only files that exist are named: cargo reruns every build for a missing one.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = ["HEAD", branch.as_deref().unwrap_or("HEAD"), "packed-refs"];
    for path in watched.iter().filter_map(|name| git(&["rev-parse", "--git-path", name])) {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
