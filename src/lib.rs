//! deployd: declarative batch deploys on Huawei Cloud CodeArts Deploy.
pub mod api;
pub mod emulator;
pub mod plan;
pub mod schedule;
pub mod secret;
