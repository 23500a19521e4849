//! The load workloads with ant-quic (see `load.rs`).

/// `ant-quic-perf server --impl ant-quic`.
pub fn serve(_args: &crate::load::ServerArgs) -> anyhow::Result<()> {
    anyhow::bail!("the ant-quic load server is not built yet")
}

/// `ant-quic-perf client --impl ant-quic`.
pub fn run(_args: &crate::load::ClientArgs) -> anyhow::Result<crate::load::LoadResult> {
    anyhow::bail!("the ant-quic load client is not built yet")
}
