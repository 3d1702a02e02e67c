//! The config loader: any bytes as the config file (`Settings::from_config_bytes`, the part of
//! `Settings::load` after the file read), with a fixed environment.
//!
//! Oracle besides "no panic": every error line names the config file.
#![no_main]

use std::path::Path;

use deployd::settings::{Overrides, Settings};
use libfuzzer_sys::fuzz_target;

fn env(name: &str) -> Option<String> {
    match name {
        "STATE_DIRECTORY" => Some("/var/lib/deployd".into()),
        "CREDENTIALS_DIRECTORY" => Some("/run/credentials/deployd.service".into()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/etc/deployd/config.yaml");
    match Settings::from_config_bytes(path, data, &Overrides::default(), &env) {
        Ok(settings) => {
            assert!(settings.concurrency >= 1);
            assert!(settings.burst >= 1);
            assert!(settings.rate.is_finite() && settings.rate > 0.0);
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "an error without a message");
            for line in &e.0 {
                assert!(line.starts_with("/etc/deployd/config.yaml"), "{line:?}");
            }
        }
    }
});
