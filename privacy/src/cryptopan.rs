//! Prefix-preserving Crypto-PAn (Xu, Fan, Ammar, Moon 2002) over AES-128:
//! client addresses are pseudonymised here, per output view, before the event
//! is encoded (broker: session -> encode(view) -> fanout). This file is the
//! cipher core only; caching and address families are in `lib.rs`.
//!
//! Bit-for-bit the reference C++ `PAnonymizer`: the 32-byte key is 16 bytes
//! of AES-128 key and 16 bytes of pad, and the pad is itself encrypted with
//! the key first. Output bit `i` of an address is the top bit of
//! `AES(first i bits of the original address ++ the remaining bits of the
//! pad)`, XORed onto original bit `i`. IPv4 works on the top 32 of the 128
//! bits (the reference), IPv6 on all 128 (the natural extension, as in
//! Python's `yacryptopan`).
//!
//! The AES inputs for one address depend only on the original address, never
//! on earlier outputs, so all of them go through one `encrypt_blocks` call,
//! which the `aes` crate pipelines on AES-NI.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};

/// Length of a Crypto-PAn key file: 16 bytes AES key + 16 bytes pad.
pub const KEY_LEN: usize = 32;

#[derive(Clone)]
pub(crate) struct CryptoPan {
    cipher: Aes128,
    /// The encrypted pad, as a big-endian 128-bit number.
    pad: u128,
}

/// The top `n` bits of 128 set (n >= 128: all).
#[inline]
pub(crate) fn top_mask128(n: u32) -> u128 {
    if n == 0 {
        0
    } else if n >= 128 {
        u128::MAX
    } else {
        u128::MAX << (128 - n)
    }
}

impl CryptoPan {
    /// `key` must be exactly [`KEY_LEN`] bytes (checked by the caller, which
    /// knows the file name); returns None otherwise.
    pub(crate) fn new(key: &[u8]) -> Option<Self> {
        if key.len() != KEY_LEN {
            return None;
        }
        let cipher = Aes128::new(GenericArray::from_slice(&key[..16]));
        let mut pad = GenericArray::clone_from_slice(&key[16..]);
        cipher.encrypt_block(&mut pad);
        let mut p = [0u8; 16];
        p.copy_from_slice(&pad);
        Some(Self {
            cipher,
            pad: u128::from_be_bytes(p),
        })
    }

    /// The flip bits for positions `from..to` (clamped to `N`) of `ext` (the
    /// address in the top bits of a 128-bit number), at their places in the
    /// top bits of the result; all other bits are zero. `N` is the family's
    /// width (32 or 128), so IPv4 does not initialise 128 blocks.
    #[inline]
    fn flips<const N: usize>(&self, ext: u128, from: u32, to: u32) -> u128 {
        let to = (to as usize).min(N);
        let from = (from as usize).min(to);
        let mut blocks = [GenericArray::from([0u8; 16]); N];
        let n = to - from;
        for (i, b) in blocks.iter_mut().enumerate().take(n) {
            let m = top_mask128((from + i) as u32);
            *b = GenericArray::from(((ext & m) | (self.pad & !m)).to_be_bytes());
        }
        self.cipher.encrypt_blocks(&mut blocks[..n]);
        let mut out = 0u128;
        for (i, b) in blocks.iter().enumerate().take(n) {
            out |= u128::from(b[0] >> 7) << (127 - (from + i));
        }
        out
    }

    /// IPv4 flip bits for positions `from..to` (<= 32), in place.
    pub(crate) fn flips_v4(&self, a: u32, from: u32, to: u32) -> u32 {
        (self.flips::<32>(u128::from(a) << 96, from, to) >> 96) as u32
    }

    /// IPv6 flip bits for positions `from..to` (<= 128), in place.
    pub(crate) fn flips_v6(&self, a: u128, from: u32, to: u32) -> u128 {
        self.flips::<128>(a, from, to)
    }

    /// Anonymise an IPv4 address (as a big-endian number).
    #[cfg(test)]
    pub(crate) fn v4(&self, a: u32) -> u32 {
        a ^ self.flips_v4(a, 0, 32)
    }

    /// The first `len` (<= 32) anonymised bits of `a`, the rest zero: the
    /// anonymised `len`-bit prefix, computing only `len` AES blocks.
    pub(crate) fn v4_prefix(&self, a: u32, len: u32) -> u32 {
        let len = len.min(32);
        let m = (top_mask128(len) >> 96) as u32;
        (a ^ self.flips_v4(a, 0, len)) & m
    }

    /// Anonymise an IPv6 address (as a big-endian number).
    #[cfg(test)]
    pub(crate) fn v6(&self, a: u128) -> u128 {
        a ^ self.flips_v6(a, 0, 128)
    }

    /// The first `len` (<= 128) anonymised bits of `a`, the rest zero.
    pub(crate) fn v6_prefix(&self, a: u128, len: u32) -> u128 {
        let len = len.min(128);
        (a ^ self.flips_v6(a, 0, len)) & top_mask128(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE_KEY: [u8; 32] = [
        21, 34, 23, 141, 51, 164, 207, 128, 19, 10, 91, 22, 73, 144, 125, 16, 216, 152, 143, 131,
        121, 121, 101, 39, 98, 87, 76, 45, 42, 132, 34, 2,
    ];

    #[test]
    fn reference_sample_pair() {
        let c = CryptoPan::new(&SAMPLE_KEY).expect("32 bytes");
        let a = u32::from(std::net::Ipv4Addr::new(128, 11, 68, 132));
        assert_eq!(
            std::net::Ipv4Addr::from(c.v4(a)),
            std::net::Ipv4Addr::new(135, 242, 180, 132)
        );
    }

    #[test]
    fn prefix_is_the_masked_full_result() {
        let c = CryptoPan::new(&SAMPLE_KEY).expect("32 bytes");
        let a = 0xc000_0201u32;
        for len in 0..=32 {
            let m = (top_mask128(len) >> 96) as u32;
            assert_eq!(c.v4_prefix(a, len), c.v4(a) & m, "len {len}");
        }
        let b = 0x2001_0db8_0000_0000_0000_0000_0000_0001u128;
        for len in 0..=128 {
            assert_eq!(c.v6_prefix(b, len), c.v6(b) & top_mask128(len), "len {len}");
        }
    }

    #[test]
    fn split_flips_are_the_whole() {
        let c = CryptoPan::new(&SAMPLE_KEY).expect("32 bytes");
        let a = 0xcb00_7123u32;
        for cut in 0..=32 {
            assert_eq!(
                c.flips_v4(a, 0, cut) | c.flips_v4(a, cut, 32),
                c.flips_v4(a, 0, 32)
            );
        }
        let b = 0x2a02_0ab8_7777_0003_dead_beef_0000_0001u128;
        for cut in [0, 1, 48, 64, 100, 128] {
            assert_eq!(c.flips_v6(b, 0, cut) | c.flips_v6(b, cut, 128), c.v6(b) ^ b);
        }
    }

    #[test]
    fn wrong_key_length_is_none() {
        assert!(CryptoPan::new(&[0u8; 31]).is_none());
        assert!(CryptoPan::new(&[0u8; 33]).is_none());
    }
}
