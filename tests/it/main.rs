//! The one integration-test binary: the real `deployd` binary and the library, against the
//! emulator on 127.0.0.1, with real files in temporary folders.

mod auth;
mod daemon;
mod exec;
mod faults;
mod helpers;
mod ops;
mod values;
