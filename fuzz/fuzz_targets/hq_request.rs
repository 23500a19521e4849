//! Fuzz target: the hq-interop request line (`service::parse_hq_request`, fed as a stream's bytes
//! arrive) and the `--www` path resolution (`WwwRoot::resolve`) over a fixed directory.
//!
//! Input: first byte = chunk size (bits 0-6; 0 is taken as 1) and whether the peer ends the stream
//! after the last chunk (bit 7), then the stream's bytes.
//!
//! The directory: `www/` holds `index.html`, `sub/file.txt`, a link `in-link` to `sub/file.txt`,
//! and a link `out-link` to `secret.txt`, which sits next to `www/`, outside it.
//!
//! Oracle:
//! - no panic;
//! - the line: an answer only once a whole line (or the end of the stream) arrived, or the line
//!   has grown past `MAX_REQUEST` (refused); the answer does not change with bytes after the line;
//! - resolution: a resolved path is a regular file inside the canonical root, never
//!   `secret.txt`; and it is the file the request names: `/` then only plain components (no `..`,
//!   no `.` first, no absolute path) that spell one of the served names. Those names always
//!   resolve.

#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use ant_quic::service::{parse_hq_request, HqRequest, WwwRoot, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

struct Site {
    www: WwwRoot,
    root: PathBuf,
    secret: PathBuf,
}

/// Request paths that name a file inside, and the file each leads to.
const SERVED: [(&str, &str); 3] =
    [("index.html", "index.html"), ("sub/file.txt", "sub/file.txt"), ("in-link", "sub/file.txt")];

static SITE: LazyLock<Site> = LazyLock::new(|| {
    // A fixed place, made again the same way by every run (each fuzz process would leave one).
    let base = std::env::temp_dir().join("ant-quic-fuzz-www");
    let root = base.join("www");
    std::fs::create_dir_all(root.join("sub")).expect("create the served directory");
    std::fs::write(root.join("index.html"), b"index").expect("write a served file");
    std::fs::write(root.join("sub/file.txt"), b"file").expect("write a served file");
    std::fs::write(base.join("secret.txt"), b"secret").expect("write the file outside");
    let _ = std::os::unix::fs::symlink("sub/file.txt", root.join("in-link"));
    let _ = std::os::unix::fs::symlink("../secret.txt", root.join("out-link"));
    let www = WwwRoot::new(&root).expect("the served directory");
    let root = root.canonicalize().expect("canonical root");
    let secret = base.join("secret.txt").canonicalize().expect("canonical secret");
    for (name, _) in SERVED {
        assert!(www.resolve(&format!("/{name}")).is_some(), "/{name} does not resolve");
    }
    Site { www, root, secret }
});

fuzz_target!(|data: &[u8]| {
    let Some((&head, stream)) = data.split_first() else { return };
    let chunk = usize::from(head & 0x7f).max(1);
    let finished = head & 0x80 != 0;
    let mut line = Vec::new();
    let mut answer = HqRequest::Incomplete;
    let pieces = stream.chunks(chunk).count();
    for (index, piece) in stream.chunks(chunk).enumerate() {
        line.extend_from_slice(piece);
        answer = parse_hq_request(&line, finished && index + 1 == pieces);
        if answer != HqRequest::Incomplete {
            break;
        }
    }
    match &answer {
        HqRequest::Incomplete => {
            assert!(!finished || stream.is_empty(), "the stream ended and the line is still incomplete");
            assert!(line.len() <= MAX_REQUEST + 1, "{} bytes held without an answer", line.len());
        }
        HqRequest::TooLong => assert!(line.len() > MAX_REQUEST),
        HqRequest::NotGet => {}
        HqRequest::Get(path) => {
            // At most one character per byte of the line (each invalid byte becomes U+FFFD).
            assert!(path.chars().count() <= MAX_REQUEST && path.trim() == path);
            check_resolve(path);
        }
    }
    if answer != HqRequest::Incomplete {
        assert_eq!(parse_hq_request(stream, finished), answer, "bytes after the line changed the answer");
    }
});

fn check_resolve(request: &str) {
    let site = &*SITE;
    let resolved = site.www.resolve(request);
    let named = request.strip_prefix('/').and_then(|relative| {
        let plain = Path::new(relative).components().all(|c| matches!(c, Component::Normal(_)));
        // "name/" and "name/." name a directory: a file there does not resolve.
        let file_syntax = !relative.ends_with('/') && !relative.ends_with("/.");
        let normalised: PathBuf = Path::new(relative).components().collect();
        let target = SERVED.iter().find(|(name, _)| Path::new(name) == normalised)?.1;
        (plain && file_syntax).then(|| site.root.join(target))
    });
    if let Some(path) = &resolved {
        assert!(path.starts_with(&site.root), "{request:?} resolved outside the root: {}", path.display());
        assert!(path.is_file(), "{request:?} resolved to a non-file {}", path.display());
        assert_ne!(path, &site.secret, "{request:?} reached the file outside the root");
    }
    assert_eq!(resolved, named, "{request:?} resolved to the wrong file");
}
