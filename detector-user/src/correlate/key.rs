//! Endpoints as hash-map keys, hashed in a few wide writes. The maps keep SipHash (std's
//! default): their keys are chosen by whoever sends packets, and a keyed hash is what
//! keeps such a sender from filling one bucket. But a `SocketAddr` hashes through its
//! derived `Hash` in many small writes (the variant, the address's length and bytes, the
//! port, and for IPv6 its flow label and scope), each a separate step of the hasher, and
//! the session table hashes a pair of them for every event.

use std::{
    hash::{Hash, Hasher},
    net::SocketAddr,
};

/// A hash-map key that hashes `T`'s endpoints as packed integers. Equality is `T`'s, and
/// the hash reads only fields equality compares, so equal keys hash alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Packed<T>(pub(super) T);

/// An endpoint's address and port as one integer: IPv4 in the low 48 bits, IPv6 in all
/// 128 bits of the address with the port folded into a second word.
fn words(a: &SocketAddr) -> (u128, u32) {
    match a {
        SocketAddr::V4(v4) => (
            u128::from(v4.ip().to_bits()) << 16 | u128::from(v4.port()),
            0,
        ),
        SocketAddr::V6(v6) => (v6.ip().to_bits(), 1 << 16 | u32::from(v6.port())),
    }
}

impl Hash for Packed<SocketAddr> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let (a, b) = words(&self.0);
        h.write_u128(a);
        h.write_u32(b);
    }
}

impl Hash for Packed<(SocketAddr, SocketAddr)> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let (a, b) = (&self.0.0, &self.0.1);
        match (a, b) {
            // The common case, both IPv4: 96 bits in one write.
            (SocketAddr::V4(x), SocketAddr::V4(y)) => h.write_u128(
                u128::from(x.ip().to_bits()) << 64
                    | u128::from(x.port()) << 48
                    | u128::from(y.ip().to_bits()) << 16
                    | u128::from(y.port()),
            ),
            _ => {
                let ((a0, a1), (b0, b1)) = (words(a), words(b));
                h.write_u128(a0);
                h.write_u128(b0);
                h.write_u64(u64::from(a1) << 32 | u64::from(b1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, RandomState};

    use super::*;

    fn hash<T>(k: &Packed<T>) -> u64
    where
        Packed<T>: Hash,
    {
        // One state, so hashes compare.
        thread_local!(static S: RandomState = RandomState::new());
        S.with(|s| s.hash_one(k))
    }

    #[test]
    fn distinct_endpoints_hash_apart_and_equal_ones_alike() {
        let eps: Vec<SocketAddr> = [
            "10.0.0.1:443",
            "10.0.0.1:444",
            "10.0.0.2:443",
            "0.0.1.187:0",
            "[::ffff:10.0.0.1]:443",
            "[::a00:1]:443",
            "[fd00::1]:443",
            "[fd00::1]:1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut singles = std::collections::HashSet::new();
        let mut pairs = std::collections::HashSet::new();
        for a in &eps {
            assert_eq!(hash(&Packed(*a)), hash(&Packed(*a)));
            assert!(singles.insert(hash(&Packed(*a))), "{a}");
            for b in &eps {
                let k = Packed((*a, *b));
                assert_eq!(hash(&k), hash(&Packed((*a, *b))));
                assert!(pairs.insert(hash(&k)), "{a} {b}");
            }
        }
    }
}
