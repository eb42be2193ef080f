//! A private network: a namespace with a bridge and one tap per VM. Every
//! address used lies inside the namespace; it is deleted when dropped.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The bridge's own address, for host-side clients in the namespace.
pub const HOST_IP: &str = "10.55.0.1";
pub const PREFIX: u8 = 24;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    pub name: String,
    taps: u32,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates `ironbay-<tag>-<pid>-<n>` with bridge `br0` at [`HOST_IP`].
    /// Needs root (CAP_NET_ADMIN).
    pub fn create(tag: &str) -> Result<Self, String> {
        let name = format!(
            "ironbay-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]).map_err(|e| format!("{e} (the rig needs root)"))?;
        let ns = Netns { name, taps: 0 };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{HOST_IP}/{PREFIX}"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", n, "link", "set", "br0", "up"])?;
        Ok(ns)
    }

    /// A new tap on the bridge; returns its name for `-netdev tap,ifname=`.
    pub fn add_tap(&mut self) -> Result<String, String> {
        let tap = format!("tap{}", self.taps);
        self.taps += 1;
        let n = self.name.as_str();
        ip(&["-n", n, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        ip(&["-n", n, "link", "set", &tap, "master", "br0"])?;
        ip(&["-n", n, "link", "set", &tap, "up"])?;
        Ok(tap)
    }

    /// `cmd` run inside the namespace.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
