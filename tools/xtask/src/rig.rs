//! `rig build` and `rig shell`: the Linux guest by hand.

use ironbay_tests::rig::{guest, vm};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub fn cache_dir() -> PathBuf {
    crate::workspace_root().join("target/rig")
}

pub fn build() -> Result<guest::GuestImage, String> {
    crate::prereq::ensure_apt_lists()?;
    let start = Instant::now();
    let image = guest::build(&cache_dir())?;
    let size = |p: &PathBuf| {
        std::fs::metadata(p)
            .map(|m| m.len() / (1 << 20))
            .unwrap_or(0)
    };
    println!(
        "rig guest: kernel {} ({} MiB), initramfs {} ({} MiB), ready in {:.1} s",
        image.kernel.display(),
        size(&image.kernel),
        image.initrd.display(),
        size(&image.initrd),
        start.elapsed().as_secs_f64()
    );
    Ok(image)
}

pub fn rig(args: &[String]) -> Result<(), String> {
    match args {
        [cmd] if cmd == "build" => build().map(drop),
        [cmd, script] if cmd == "shell" => {
            let image = build()?;
            let g = vm::GuestVm::new(&PathBuf::from(script));
            let mut running = g.start(&image, None)?;
            let (rc, out) = vm::finish(&mut running, Duration::from_secs(600))?;
            print!("{out}");
            println!("(script exited {rc})");
            if rc == 0 {
                Ok(())
            } else {
                Err(format!("script exited {rc}"))
            }
        }
        _ => Err("usage: cargo xtask rig build | rig shell SCRIPT".into()),
    }
}
