//! Arbitrary kernel command lines through the option parser and the
//! pre-heap `peek`. Seeds: ../seeds/cmdline (lines the tests boot with).
#![no_main]

use ironbay_config::Cmdline;
use ironbay_config::cmdline::{OPTIONS, peek};
use ironbay_config::net::Ipv4Cidr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The kernel's line is ASCII (the boot crate replaces the rest); any
    // text must parse.
    let line = String::from_utf8_lossy(data);
    let c = Cmdline::parse(&line);
    for (key, value) in c.entries() {
        let spec = OPTIONS.iter().find(|s| s.key == key).expect("a known key");
        assert!((spec.check)(value).is_ok(), "{key}={value} was taken");
        assert_eq!(c.get(key), Some(value));
    }
    for d in &c.diagnostics {
        assert!(!d.to_string().is_empty());
    }
    for spec in OPTIONS {
        let _ = peek(&line, spec.key);
    }
    for key in ["mgmt.ip", "data.ip"] {
        if let Some(cidr) = c.get_as::<Ipv4Cidr>(key) {
            let _ = cidr.contains(cidr.addr);
            assert_eq!(cidr.to_string().parse::<Ipv4Cidr>(), Ok(cidr));
        }
    }
    let _ = c.flag("mgmt.wait_for_init");
});
