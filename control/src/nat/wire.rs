//! The wire encoding of signalling messages and frames (see `docs/nat-traversal.md`).
