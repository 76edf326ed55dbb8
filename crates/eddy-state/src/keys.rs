//! The physical key layout shared by every store.
//!
//! ```text
//! | partition: u32 BE, sign bit flipped | tag: u8 | user key ... |
//! |<------------- 4 bytes ------------->|<- 1 ->|               |
//! ```
//!
//! Flipping the sign bit makes the unsigned big-endian order of the first four bytes the numeric
//! order of the `i32` partition (`i32::MIN` first, then ... -1, 0, 1, ... `i32::MAX`). The tag is
//! [`TAG_META`] for the partition's metadata (its offsets) and [`TAG_DATA`] for its entries; no
//! key carries a tag of [`TAG_END`] or more, so `[partition, TAG_END]` is an exclusive upper bound
//! of the partition that needs no carry, even for `i32::MAX`.

/// Length of the partition prefix: four partition bytes and the tag.
pub(crate) const PREFIX_LEN: usize = 5;
/// Tag of a partition's metadata entries (offsets).
pub(crate) const TAG_META: u8 = 0x00;
/// Tag of a partition's user entries.
pub(crate) const TAG_DATA: u8 = 0x01;
/// One past the last tag: the exclusive end of a partition.
pub(crate) const TAG_END: u8 = 0x02;

/// Metadata key (under [`TAG_META`]) of the next source offset not reflected in the partition.
pub(crate) const META_SOURCE_OFFSET: &[u8] = b"source_offset";
/// Metadata key (under [`TAG_META`]) of the next changelog offset not applied to the partition.
pub(crate) const META_CHANGELOG_OFFSET: &[u8] = b"changelog_offset";

/// The four order-preserving bytes of a partition number.
pub(crate) fn partition_bytes(partition: i32) -> [u8; 4] {
    ((partition as u32) ^ 0x8000_0000).to_be_bytes()
}

/// The partition a physical key belongs to, or `None` if the key is shorter than a prefix.
pub(crate) fn decode_partition(key: &[u8]) -> Option<i32> {
    let bytes: [u8; 4] = key.get(..4)?.try_into().ok()?;
    Some((u32::from_be_bytes(bytes) ^ 0x8000_0000) as i32)
}

/// The prefix `[partition, tag]`.
pub(crate) fn prefix(partition: i32, tag: u8) -> [u8; PREFIX_LEN] {
    let [a, b, c, d] = partition_bytes(partition);
    [a, b, c, d, tag]
}

/// The physical key `[partition, tag, user_key]`.
pub(crate) fn key_with_tag(partition: i32, tag: u8, user_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(PREFIX_LEN + user_key.len());
    key.extend_from_slice(&prefix(partition, tag));
    key.extend_from_slice(user_key);
    key
}

/// The physical key of a user entry.
pub(crate) fn data_key(partition: i32, user_key: &[u8]) -> Vec<u8> {
    key_with_tag(partition, TAG_DATA, user_key)
}

/// The physical key of a metadata entry.
pub(crate) fn meta_key(partition: i32, name: &[u8]) -> Vec<u8> {
    key_with_tag(partition, TAG_META, name)
}

/// The smallest physical key of a partition (inclusive).
pub(crate) fn partition_start(partition: i32) -> [u8; PREFIX_LEN] {
    prefix(partition, TAG_META)
}

/// The exclusive end of a partition: greater than all its keys, at most the next one's.
pub(crate) fn partition_end(partition: i32) -> [u8; PREFIX_LEN] {
    prefix(partition, TAG_END)
}

/// The shortest byte string greater than every string that starts with `prefix`, or `None` when
/// there is none (the prefix is empty or all `0xFF`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b != 0xFF)?;
    let mut next = prefix[..=last].to_vec();
    next[last] += 1;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_prefix_orders_numerically() {
        let partitions = [i32::MIN, -256, -2, -1, 0, 1, 2, 255, 256, 65_536, i32::MAX];
        for pair in partitions.windows(2) {
            assert!(
                partition_bytes(pair[0]) < partition_bytes(pair[1]),
                "{} must sort before {}",
                pair[0],
                pair[1]
            );
            // The end of a partition lies between its keys and the next partition's.
            assert!(data_key(pair[0], &[0xFF; 16]).as_slice() < partition_end(pair[0]).as_slice());
            assert!(partition_end(pair[0]) <= partition_start(pair[1]));
        }
        for p in partitions {
            assert_eq!(decode_partition(&data_key(p, b"k")), Some(p));
        }
        assert_eq!(decode_partition(&[1, 2, 3]), None);
    }

    #[test]
    fn metadata_sorts_before_data() {
        assert!(meta_key(7, &[0xFF; 8]) < data_key(7, b""));
        assert_eq!(
            data_key(0, b"ab"),
            vec![0x80, 0, 0, 0, TAG_DATA, b'a', b'b']
        );
        assert_eq!(data_key(-1, b""), vec![0x7F, 0xFF, 0xFF, 0xFF, TAG_DATA]);
    }

    #[test]
    fn prefix_successor_skips_trailing_ff() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[b'a', 0xFF, 0xFF]), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
