//! Batching helpers: splitting GRO buffers into datagrams.

use bytes::BytesMut;

/// The length of each datagram of a GRO buffer of `len` bytes: `stride`, or the whole buffer
/// when the stride is zero (a single datagram).
fn segment_len(len: usize, stride: usize) -> usize {
    if stride == 0 {
        len.max(1)
    } else {
        stride
    }
}

/// Split a GRO buffer of `stride`-byte datagrams (the last one may be shorter) into datagrams.
/// A zero stride means the buffer is a single datagram.
pub fn split_gro(data: &[u8], stride: usize) -> impl Iterator<Item = &[u8]> {
    data.chunks(segment_len(data.len(), stride))
}

/// [`split_gro`] of a buffer to keep: the datagrams share its memory, without copies.
pub fn split_gro_owned(mut data: BytesMut, stride: usize) -> impl Iterator<Item = BytesMut> {
    let stride = segment_len(data.len(), stride);
    std::iter::from_fn(move || (!data.is_empty()).then(|| data.split_to(stride.min(data.len()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_equal_segments() {
        let data: Vec<u8> = (0..30).collect();
        let parts: Vec<&[u8]> = split_gro(&data, 10).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], &data[20..30]);
    }

    #[test]
    fn short_last_segment_is_kept() {
        let data = vec![7u8; 25];
        let lens: Vec<usize> = split_gro(&data, 10).map(<[u8]>::len).collect();
        assert_eq!(lens, vec![10, 10, 5]);
    }

    #[test]
    fn single_datagram_and_zero_stride() {
        let data = vec![1u8; 1200];
        assert_eq!(split_gro(&data, 1200).count(), 1);
        assert_eq!(split_gro(&data, 0).count(), 1);
        assert_eq!(split_gro(&[], 1200).count(), 0);
    }
}
