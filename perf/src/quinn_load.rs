//! The load workloads with quinn 0.11 (see `load.rs`).

/// `ant-quic-perf server --impl quinn`.
pub fn serve(_args: &crate::load::ServerArgs) -> anyhow::Result<()> {
    anyhow::bail!("the quinn load server is not built yet")
}

/// `ant-quic-perf client --impl quinn`.
pub fn run(_args: &crate::load::ClientArgs) -> anyhow::Result<crate::load::LoadResult> {
    anyhow::bail!("the quinn load client is not built yet")
}
