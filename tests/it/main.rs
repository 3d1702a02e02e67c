//! The one integration-test binary: the real `deployd` binary and the library, against the
//! emulator on 127.0.0.1, with real files in temporary folders.

mod attacks12;
mod auth;
mod bounded;
mod clock;
mod clock_disk_attacks;
mod clock_jumps;
mod daemon;
mod delivery;
mod disk;
mod exec;
mod faults;
mod ha;
mod ha_attacks;
mod ha_attacks2;
mod hardening;
mod helpers;
mod journal;
mod ops;
mod reconcile_attacks;
mod scan_attacks;
mod signals;
mod store;
mod symlink_plans;
mod values;
mod zones;
