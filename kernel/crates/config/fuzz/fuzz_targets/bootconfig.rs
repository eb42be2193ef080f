//! Arbitrary boot config modules through the SPDK-format JSON parser.
//! Seeds: ../seeds/bootconfig (the default config, a saved config).
#![no_main]

use ironbay_config::BootConfig;
use ironbay_config::bootconfig::MAX_CONFIG_BYTES;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match BootConfig::parse(data) {
        Ok(config) => {
            assert!(data.len() <= MAX_CONFIG_BYTES);
            // What the kernel logs and applies.
            for (subsystem, call) in config.calls() {
                assert!(config.subsystems.iter().any(|s| s.name == subsystem));
                let _ = call.method.len() + call.params.len();
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
