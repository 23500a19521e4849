//! Control thread.
