//! CHAP (RFC 1994, RFC 7143 §12.1.3) for iSCSI login: algorithm choice,
//! challenge generation, response checking and the mutual answer.
//!
//! The digests come from the RustCrypto crates. Challenges come from
//! [`Entropy`], an xorshift generator: it is only as unpredictable as the
//! seed the glue gives [`crate::Target::seed_entropy`] (RDRAND or TSC noise
//! in the kernel, the OS in the hosted runner) and is not a CSPRNG.

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

/// xorshift64* challenge source; see the module comment about its strength.
#[derive(Clone, Debug)]
pub struct Entropy(u64);

impl Entropy {
    pub fn new(seed: u64) -> Self {
        Entropy(seed | 1)
    }

    /// Folds more unpredictability in.
    pub fn mix(&mut self, x: u64) {
        self.0 ^= x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 |= 1;
        self.next_u64();
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            c.copy_from_slice(&r[..c.len()]);
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
}
