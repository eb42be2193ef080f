//! The targetd front end's settings: who may use it (a user and a salted,
//! iterated password hash; no built-in password), the iSCSI target its
//! exports live in, and which volume stores it may use as pools.
//!
//! The password itself is never kept: only `pbkdf2-sha256$ROUNDS$SALT$HASH`
//! (hex), which the saved configuration carries, so an attacker with the
//! disk learns the hash, not the password.

use crate::{Error, Model, Result};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use ironbay_bdev::Rng;
use sha2::{Digest, Sha256};

/// PBKDF2 rounds for new hashes: slow enough to make guessing from a
/// stolen disk costly, cheap enough for a TCG guest (checks are cached).
pub const ROUNDS: u32 = 4096;
/// targetd's default target name, with the appliance for a host name.
pub const DEFAULT_TARGET: &str = "iqn.2003-01.org.linux-iscsi.ironbay:targetd";
pub const DEFAULT_USER: &str = "admin";

pub struct Settings {
    pub user: String,
    /// `None`: no password set; the API stays closed.
    hash: Option<PasswordHash>,
    pub target_name: String,
    /// Stores targetd may use as pools (names); empty means all.
    pub pools: Vec<String>,
    /// Whether `vol_create` makes thin volumes (in pools not named below).
    pub thin: bool,
    /// Per pool: thin (true) or thick, overriding `thin`.
    pub pool_thin: Vec<(String, bool)>,
    /// A digest of the password last accepted, so a client sending its
    /// credentials with every request pays the slow hash once.
    accepted: Option<[u8; 32]>,
    rng: Rng,
    /// Set by a command-line password: it wins over a stored one.
    pub pinned: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PasswordHash {
    rounds: u32,
    salt: Vec<u8>,
    hash: [u8; 32],
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl PasswordHash {
    fn derive(password: &str, salt: Vec<u8>, rounds: u32) -> Self {
        let mut hash = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, rounds, &mut hash);
        PasswordHash { rounds, salt, hash }
    }

    fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('$');
        if it.next()? != "pbkdf2-sha256" {
            return None;
        }
        let rounds: u32 = it.next()?.parse().ok()?;
        let salt = unhex(it.next()?)?;
        let hash: [u8; 32] = unhex(it.next()?)?.try_into().ok()?;
        if it.next().is_some() || !(1..=10_000_000).contains(&rounds) || salt.len() > 64 {
            return None;
        }
        Some(PasswordHash { rounds, salt, hash })
    }

    fn encode(&self) -> String {
        format!(
            "pbkdf2-sha256${}${}${}",
            self.rounds,
            hex(&self.salt),
            hex(&self.hash)
        )
    }
}

/// Compares without an early exit, so timing says nothing about where
/// two digests differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Settings {
    pub fn new(seed: u64) -> Self {
        Settings {
            user: DEFAULT_USER.into(),
            hash: None,
            target_name: DEFAULT_TARGET.into(),
            pools: Vec::new(),
            thin: true,
            pool_thin: Vec::new(),
            accepted: None,
            rng: Rng::new(seed ^ 0x7a67_e7d0_5eed_0001),
            pinned: false,
        }
    }

    /// Whether a password is set (the API is open to that user).
    pub fn has_password(&self) -> bool {
        self.hash.is_some()
    }

    /// The stored hash, as the saved configuration carries it.
    pub fn password_hash(&self) -> Option<String> {
        self.hash.as_ref().map(PasswordHash::encode)
    }

    fn check_user(user: &str) -> Result<()> {
        if user.is_empty()
            || user.len() > 64
            || user.contains(':')
            || user.chars().any(char::is_control)
        {
            return Err(Error::params(
                "`user` must be 1-64 characters, without ':' or control characters",
            ));
        }
        Ok(())
    }

    /// Sets the user and password (hashed with a fresh salt here).
    pub fn set_password(&mut self, user: &str, password: &str) -> Result<()> {
        Self::check_user(user)?;
        if password.is_empty() || password.len() > 256 {
            return Err(Error::params("`password` must be 1-256 characters"));
        }
        let mut salt = Vec::with_capacity(16);
        salt.extend_from_slice(&self.rng.next_u64().to_le_bytes());
        salt.extend_from_slice(&self.rng.next_u64().to_le_bytes());
        self.hash = Some(PasswordHash::derive(password, salt, ROUNDS));
        self.user = user.into();
        self.accepted = None;
        Ok(())
    }

    /// Sets the user and a hash made earlier (from a saved configuration).
    pub fn set_password_hash(&mut self, user: &str, hash: &str) -> Result<()> {
        Self::check_user(user)?;
        let h = PasswordHash::parse(hash).ok_or_else(|| {
            Error::params("`password_hash` must be pbkdf2-sha256$ROUNDS$SALT$HASH (hex)")
        })?;
        self.hash = Some(h);
        self.user = user.into();
        self.accepted = None;
        Ok(())
    }

    /// Closes the API again.
    pub fn clear_password(&mut self) {
        self.hash = None;
        self.accepted = None;
    }

    fn quick_digest(h: &PasswordHash, password: &str) -> [u8; 32] {
        Sha256::new()
            .chain_update(&h.salt)
            .chain_update(password.as_bytes())
            .finalize()
            .into()
    }

    /// Whether these are the credentials last accepted: a cheap check
    /// that never runs the slow hash (for addresses under suspicion).
    pub fn verify_cached(&self, user: &str, password: &str) -> bool {
        let (Some(h), Some(a)) = (&self.hash, &self.accepted) else {
            return false;
        };
        same(a, &Self::quick_digest(h, password)) && same(user.as_bytes(), self.user.as_bytes())
    }

    /// Whether these credentials are the configured ones.
    pub fn verify(&mut self, user: &str, password: &str) -> bool {
        let Some(h) = &self.hash else {
            return false;
        };
        let quick = Self::quick_digest(h, password);
        let user_ok = same(user.as_bytes(), self.user.as_bytes());
        if let Some(a) = &self.accepted
            && same(a, &quick)
        {
            return user_ok;
        }
        let d = PasswordHash::derive(password, h.salt.clone(), h.rounds);
        let ok = same(&d.hash, &h.hash);
        if ok {
            self.accepted = Some(quick);
        }
        ok && user_ok
    }

    /// Checks and sets the options (an omitted one keeps its value).
    pub fn set_options(
        &mut self,
        target_name: Option<&str>,
        pools: Option<Vec<String>>,
        thin: Option<bool>,
    ) -> Result<()> {
        if let Some(t) = target_name {
            ironbay_iscsi::config::check_iscsi_name(t).map_err(|e| Error::params(e.message()))?;
        }
        if let Some(p) = &pools
            && p.len() > 1024
        {
            return Err(Error::params("at most 1024 pools"));
        }
        if let Some(t) = target_name {
            self.target_name = t.to_string();
        }
        if let Some(p) = pools {
            self.pools = p;
        }
        if let Some(t) = thin {
            self.thin = t;
        }
        Ok(())
    }

    /// Sets which pools make thin or thick volumes (replacing the list).
    pub fn set_pool_thin(&mut self, list: Vec<(String, bool)>) -> Result<()> {
        if list.len() > 1024 {
            return Err(Error::params("at most 1024 pools"));
        }
        self.pool_thin = list;
        Ok(())
    }

    /// Whether `vol_create` in `pool` makes a thin volume.
    pub fn thin_for(&self, pool: &str) -> bool {
        self.pool_thin
            .iter()
            .find(|(p, _)| p == pool)
            .map_or(self.thin, |(_, t)| *t)
    }

    /// Whether targetd may use the store named `name` as a pool.
    pub fn pool_allowed(&self, name: &str) -> bool {
        self.pools.is_empty() || self.pools.iter().any(|p| p == name)
    }
}

impl Model<'_> {
    pub fn targetd(&mut self) -> Result<&mut Settings> {
        self.targetd
            .as_deref_mut()
            .ok_or_else(|| Error::state("the targetd API is not running"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_round_trip_and_verify() {
        let mut s = Settings::new(1);
        assert!(!s.verify("admin", ""));
        s.set_password("admin", "s3cret").unwrap();
        assert!(s.verify("admin", "s3cret"));
        assert!(s.verify("admin", "s3cret"), "cached path");
        assert!(!s.verify("admin", "s3cret "));
        assert!(!s.verify("root", "s3cret"));
        let saved = s.password_hash().unwrap();
        assert!(saved.starts_with("pbkdf2-sha256$4096$"));
        assert!(!saved.contains("s3cret"));
        let mut t = Settings::new(2);
        t.set_password_hash("admin", &saved).unwrap();
        assert!(t.verify("admin", "s3cret"));
        assert!(!t.verify("admin", "wrong"));
        for bad in [
            "",
            "md5$1$00$00",
            "pbkdf2-sha256$0$00$00",
            "pbkdf2-sha256$10$zz$00",
        ] {
            assert!(t.set_password_hash("admin", bad).is_err(), "{bad}");
        }
        assert!(s.set_password("a:b", "x").is_err());
        assert!(s.set_password("admin", "").is_err());
        // Two settings hash one password with different salts.
        let mut u = Settings::new(3);
        u.set_password("admin", "s3cret").unwrap();
        assert_ne!(u.password_hash(), s.password_hash());
    }
}
