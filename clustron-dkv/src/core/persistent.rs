//! Decoding the store's persistent maps from untrusted bytes (a snapshot
//! file, a pulled snapshot).
//!
//! `imbl`'s own `Deserialize` reserves room for as many entries as the
//! encoded length claims before reading one: eight forged bytes asked for
//! 10 GB and aborted the node (found by `fuzz_decoders`). These read entry
//! by entry instead, so memory follows the bytes actually present, as the
//! standard collections' decoding does. Use them with
//! `#[serde(deserialize_with = "...")]`.

use std::fmt;
use std::marker::PhantomData;

use imbl::{OrdMap, OrdSet};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// An [`OrdMap`] read entry by entry (a repeated key keeps its last value,
/// as a `BTreeMap` does).
pub(crate) fn ordmap<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct Entries<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for Entries<K, V>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = OrdMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = OrdMap::new();
            while let Some((key, value)) = access.next_entry()? {
                map.insert(key, value);
            }
            Ok(map)
        }
    }

    deserializer.deserialize_map(Entries(PhantomData))
}

/// An [`OrdSet`] read element by element.
pub(crate) fn ordset<'de, D, T>(deserializer: D) -> Result<OrdSet<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Ord + Clone,
{
    struct Elements<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de> + Ord + Clone> Visitor<'de> for Elements<T> {
        type Value = OrdSet<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut set = OrdSet::new();
            while let Some(element) = access.next_element()? {
                set.insert(element);
            }
            Ok(set)
        }
    }

    deserializer.deserialize_seq(Elements(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Both {
        #[serde(deserialize_with = "ordmap")]
        map: OrdMap<u32, Vec<u8>>,
        #[serde(deserialize_with = "ordset")]
        set: OrdSet<u64>,
    }

    /// A length prefix claiming billions of entries over a few bytes is an
    /// error, not an allocation of that many (imbl's own decoding aborted
    /// the process here).
    #[test]
    fn a_forged_length_is_refused_without_reserving_it() {
        // map length 2^33 - 1 (varint), then nothing.
        let forged = [0xff, 0xff, 0xff, 0xff, 0x1f];
        assert!(postcard::from_bytes::<Both>(&forged).is_err());
        // a valid map, then a set claiming 2^33 - 1 elements.
        let mut bytes =
            postcard::to_allocvec(&std::collections::BTreeMap::from([(1u32, vec![7u8])])).unwrap();
        bytes.extend_from_slice(&forged);
        assert!(postcard::from_bytes::<Both>(&bytes).is_err());
        // What a BTreeMap and a BTreeSet encode reads back the same.
        let mut bytes = postcard::to_allocvec(&std::collections::BTreeMap::from([
            (2u32, vec![1u8]),
            (1, vec![]),
        ]))
        .unwrap();
        bytes.extend(postcard::to_allocvec(&std::collections::BTreeSet::from([5u64, 3])).unwrap());
        let both: Both = postcard::from_bytes(&bytes).unwrap();
        let map: OrdMap<u32, Vec<u8>> = [(1u32, vec![]), (2u32, vec![1u8])].into_iter().collect();
        assert_eq!(both.map, map);
        assert_eq!(both.set, [3u64, 5].into_iter().collect::<OrdSet<u64>>());
    }
}
