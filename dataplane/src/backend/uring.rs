//! The io_uring backend (work in progress).
