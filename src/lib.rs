//! ant-quic
