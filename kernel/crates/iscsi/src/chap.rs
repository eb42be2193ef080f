//! CHAP (RFC 1994, RFC 7143 §12.1.3) for iSCSI login: algorithm choice,
//! challenge generation, response checking and the mutual answer.
//!
//! The digests come from the RustCrypto crates. Challenges come from
//! [`Entropy`], SHA-256 in counter mode over a pool: a challenge seen tells
//! nothing of the pool or the next one, but they are only as unpredictable
//! as the seeds given to [`crate::Target::seed_entropy`] (RDRAND, else the
//! TSC, in the kernel).

use alloc::string::String;
use alloc::vec::Vec;
use md5::Digest;

/// IANA CHAP algorithm numbers (RFC 7143 §12.1.3, RFC 8758 / 9266 era).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5 = 5,
    Sha1 = 6,
    Sha256 = 7,
    Sha3_256 = 8,
}

impl Algorithm {
    pub fn from_number(n: u64) -> Option<Self> {
        match n {
            5 => Some(Algorithm::Md5),
            6 => Some(Algorithm::Sha1),
            7 => Some(Algorithm::Sha256),
            8 => Some(Algorithm::Sha3_256),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 | Algorithm::Sha3_256 => 32,
        }
    }

    /// The CHAP response: H(identifier || secret || challenge).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn run<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut h = D::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
        match self {
            Algorithm::Md5 => run::<md5::Md5>(id, secret, challenge),
            Algorithm::Sha1 => run::<sha1::Sha1>(id, secret, challenge),
            Algorithm::Sha256 => run::<sha2::Sha256>(id, secret, challenge),
            Algorithm::Sha3_256 => run::<sha3::Sha3_256>(id, secret, challenge),
        }
    }
}

/// The first algorithm of a `CHAP_A` list we implement. Any item that is not
/// a plain number makes the list invalid.
pub fn choose(list: &str) -> Option<Algorithm> {
    let mut pick = None;
    for item in list.split(',') {
        let n = crate::text::number(item)?;
        if pick.is_none() {
            pick = Algorithm::from_number(n);
        }
    }
    pick
}

/// Longest challenge or response we decode.
pub const MAX_BINARY: usize = 1024;
/// Our challenge length: at least the longest digest (RFC 7143 §12.1.3).
pub const CHALLENGE_LEN: usize = 32;

/// Decodes a binary value: `0x` hex or `0b` base64 (RFC 7143 §6.1).
pub fn decode(v: &str) -> Option<Vec<u8>> {
    let (kind, body) = (v.get(..2)?, v.get(2..)?);
    let out = match kind {
        "0x" | "0X" => decode_hex(body)?,
        "0b" | "0B" => decode_base64(body)?,
        _ => return None,
    };
    (!out.is_empty() && out.len() <= MAX_BINARY).then_some(out)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() > 2 * MAX_BINARY {
        return None;
    }
    let digits: Vec<u8> = s
        .bytes()
        .map(|c| (c as char).to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()?;
    // An odd count has an implied leading zero.
    let mut out = Vec::with_capacity(digits.len().div_ceil(2));
    let mut it = digits.iter();
    if digits.len() % 2 == 1 {
        out.push(*it.next()?);
    }
    while let (Some(h), Some(l)) = (it.next(), it.next()) {
        out.push(h << 4 | l);
    }
    Some(out)
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    if s.len() > 4 * MAX_BINARY.div_ceil(3) + 4 {
        return None;
    }
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // A single leftover character cannot encode a byte.
    (bits < 6).then_some(out)
}

/// `0x`-prefixed lowercase hex.
pub fn encode_hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Equality without an early exit.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Challenge source: SHA-256 of a 32-byte pool and a counter. Unlike a
/// plain PRNG (xorshift's output gives away its state), what it hands out
/// cannot be turned back into the pool.
#[derive(Clone)]
pub struct Entropy {
    pool: [u8; 32],
    counter: u64,
}

impl core::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Entropy(..)")
    }
}

impl Entropy {
    pub fn new(seed: u64) -> Self {
        let mut e = Entropy {
            pool: [0; 32],
            counter: 0,
        };
        e.mix(seed);
        e
    }

    /// Folds more unpredictability in.
    pub fn mix(&mut self, x: u64) {
        let mut h = sha2::Sha256::new();
        h.update(self.pool);
        h.update(x.to_le_bytes());
        self.pool = h.finalize().into();
    }

    fn block(&mut self) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.pool);
        h.update(self.counter.to_le_bytes());
        self.counter = self.counter.wrapping_add(1);
        h.finalize().into()
    }

    pub fn next_u64(&mut self) -> u64 {
        let b = self.block();
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(32) {
            let b = self.block();
            c.copy_from_slice(&b[..c.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1321_md5_vector_through_response() {
        // H(id || secret || challenge) with all three concatenating to "abc".
        let r = Algorithm::Md5.response(b'a', b"b", b"c");
        assert_eq!(encode_hex(&r), "0x900150983cd24fb0d6963f7d28e17f72");
        let r = Algorithm::Sha1.response(b'a', b"b", b"c");
        assert_eq!(encode_hex(&r), "0xa9993e364706816aba3e25717850c26c9cd0d89d");
        let r = Algorithm::Sha256.response(b'a', b"b", b"c");
        assert_eq!(
            encode_hex(&r),
            "0xba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let r = Algorithm::Sha3_256.response(b'a', b"b", b"c");
        assert_eq!(
            encode_hex(&r),
            "0x3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
        );
    }

    #[test]
    fn algorithm_choice_follows_the_initiator_order() {
        assert_eq!(choose("5"), Some(Algorithm::Md5));
        assert_eq!(choose("7,5"), Some(Algorithm::Sha256));
        assert_eq!(choose("1,2,6,5"), Some(Algorithm::Sha1));
        assert_eq!(choose("56"), None);
        assert_eq!(choose(""), None);
        assert_eq!(choose("5,x"), None);
        assert_eq!(choose("5,6,7,8"), Some(Algorithm::Md5));
    }

    #[test]
    fn binary_encodings() {
        assert_eq!(decode("0x0102ff"), Some(alloc::vec![1, 2, 255]));
        assert_eq!(decode("0X102"), Some(alloc::vec![1, 2]));
        assert_eq!(decode("0bAQL/"), Some(alloc::vec![1, 2, 255]));
        assert_eq!(decode("0bAQI="), Some(alloc::vec![1, 2]));
        assert_eq!(decode("0bAQ=="), Some(alloc::vec![1]));
        assert_eq!(decode("0bA"), None);
        assert_eq!(decode("0x"), None);
        assert_eq!(decode("0xzz"), None);
        assert_eq!(decode("1234"), None);
        assert_eq!(decode("0"), None);
        let long = alloc::format!("0x{}", "00".repeat(MAX_BINARY + 1));
        assert_eq!(decode(&long), None);
    }

    #[test]
    fn entropy_differs_by_seed() {
        let mut a = Entropy::new(1);
        let mut b = Entropy::new(2);
        let (mut x, mut y) = ([0u8; 20], [0u8; 20]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_ne!(x, y);
        assert!(same(&x, &x) && !same(&x, &y) && !same(&x, &x[..19]));
    }

    /// xorshift64* gave its whole state away in one output (its multiplier
    /// is invertible), so one challenge predicted all later ones.
    #[test]
    fn a_challenge_does_not_predict_the_next() {
        let mut e = Entropy::new(0x1b0b_a1ce_5eed_0001);
        let mut c1 = [0u8; CHALLENGE_LEN];
        let mut c2 = [0u8; CHALLENGE_LEN];
        e.fill(&mut c1);
        e.fill(&mut c2);
        assert_ne!(c1, c2);
        // What inverting xorshift64* on c1's last word predicts for c2.
        const K: u64 = 0x2545_f491_4f6c_dd1d;
        let last = u64::from_le_bytes(c1[24..32].try_into().unwrap());
        let mut x = last.wrapping_mul(inverse(K));
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let predicted = x.wrapping_mul(K).to_le_bytes();
        assert_ne!(&c2[..8], &predicted[..]);
        // Same seed, same stream; a mix changes it.
        let (mut a, mut b) = (Entropy::new(7), Entropy::new(7));
        assert_eq!(a.next_u64(), b.next_u64());
        b.mix(1);
        assert_ne!(a.next_u64(), b.next_u64());
        assert_eq!(alloc::format!("{a:?}"), "Entropy(..)");
    }

    /// Multiplicative inverse modulo 2^64 of an odd number (Newton).
    fn inverse(k: u64) -> u64 {
        let mut x = k;
        for _ in 0..6 {
            x = x.wrapping_mul(2u64.wrapping_sub(k.wrapping_mul(x)));
        }
        x
    }
}
