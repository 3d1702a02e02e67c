//! deployd: declarative batch deploys on Huawei Cloud CodeArts Deploy.
pub mod api;
pub mod duration;
pub mod settings;
pub mod telemetry;
pub mod executor;
pub mod results;
pub mod plan;
pub mod schedule;
pub mod secret;
