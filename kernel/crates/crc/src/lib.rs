//! CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as iSCSI digests,
//! NVMe/TCP digests and on-disk metadata use it.
//!
//! Two engines compute the same function:
//! - `Soft`: slicing-by-8 over tables built at compile time; runs anywhere.
//! - `Sse42`: the SSE4.2 `crc32` instruction. It works on general-purpose
//!   registers only, so it needs no SSE state and suits the soft-float kernel.
//!   It is used only when CPUID reports SSE4.2 and the operator has not asked
//!   for `crc=soft` (some nested hypervisors fault on these instructions).
//!
//! [`crc32c`] uses the engine chosen with [`select`]; the default is `Soft`
//! until the platform has probed the CPU.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

use core::sync::atomic::{AtomicU8, Ordering};

mod soft;
#[cfg(target_arch = "x86_64")]
mod sse42;

/// Which implementation computes the checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Soft,
    Sse42,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Soft => "soft",
            Engine::Sse42 => "sse4.2",
        }
    }
}

static ENGINE: AtomicU8 = AtomicU8::new(0);

/// True when the CPU executes the SSE4.2 `crc32` instruction.
pub fn hardware_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        sse42::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Chooses the engine for [`crc32c`]; asking for `Sse42` on a CPU without it
/// keeps `Soft`. Returns the engine in use.
pub fn select(engine: Engine) -> Engine {
    let chosen = match engine {
        Engine::Sse42 if hardware_available() => Engine::Sse42,
        _ => Engine::Soft,
    };
    ENGINE.store(chosen as u8, Ordering::Relaxed);
    chosen
}

/// The engine [`crc32c`] uses now.
pub fn selected() -> Engine {
    if ENGINE.load(Ordering::Relaxed) == Engine::Sse42 as u8 {
        Engine::Sse42
    } else {
        Engine::Soft
    }
}

/// Continues a CRC32C over `data`. `crc` is the value returned for the data
/// before (0 to start); the result is the finished checksum of everything so far.
pub fn update_with(engine: Engine, crc: u32, data: &[u8]) -> u32 {
    match engine {
        #[cfg(target_arch = "x86_64")]
        Engine::Sse42 if sse42::available() => !sse42::update(!crc, data),
        _ => !soft::update(!crc, data),
    }
}

/// CRC32C of `data` with the selected engine.
pub fn crc32c(data: &[u8]) -> u32 {
    update_with(selected(), 0, data)
}

/// Continues a CRC32C with the selected engine (see [`update_with`]).
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    update_with(selected(), crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engines() -> Vec<Engine> {
        let mut v = vec![Engine::Soft];
        if hardware_available() {
            v.push(Engine::Sse42);
        }
        v
    }

    /// Pseudo-random bytes without a dependency: xorshift64.
    fn bytes(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn known_vectors() {
        for e in engines() {
            assert_eq!(update_with(e, 0, b""), 0);
            assert_eq!(update_with(e, 0, b"123456789"), 0xE306_9283, "{e:?}");
            // RFC 3720 B.4: 32 bytes of zeros and of 0xff.
            assert_eq!(update_with(e, 0, &[0u8; 32]), 0x8A91_36AA, "{e:?}");
            assert_eq!(update_with(e, 0, &[0xffu8; 32]), 0x62A8_AB43, "{e:?}");
            let inc: Vec<u8> = (0..32).collect();
            assert_eq!(update_with(e, 0, &inc), 0x46DD_794E, "{e:?}");
        }
    }

    #[test]
    fn matches_reference_crate_at_every_length_and_alignment() {
        let data = bytes(4096 + 64, 0x1234_5678_9abc_def1);
        for e in engines() {
            for start in 0..9 {
                for len in (0..300).chain([1023, 1024, 1025, 4096]) {
                    let s = &data[start..start + len];
                    assert_eq!(
                        update_with(e, 0, s),
                        crc32c::crc32c(s),
                        "{e:?} {start} {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn appending_equals_one_pass() {
        let data = bytes(10_000, 42);
        for e in engines() {
            let whole = update_with(e, 0, &data);
            for cut in [0, 1, 7, 8, 9, 4095, 9999, 10_000] {
                let a = update_with(e, 0, &data[..cut]);
                assert_eq!(update_with(e, a, &data[cut..]), whole, "{e:?} cut {cut}");
                assert_eq!(crc32c::crc32c_append(a, &data[cut..]), whole);
            }
        }
    }

    #[test]
    fn selection_falls_back_to_soft() {
        assert_eq!(select(Engine::Soft), Engine::Soft);
        assert_eq!(selected(), Engine::Soft);
        let got = select(Engine::Sse42);
        assert_eq!(got == Engine::Sse42, hardware_available());
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        select(Engine::Soft);
    }
}
