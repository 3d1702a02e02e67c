//! High availability on PostgreSQL: several hosts, one schedule (CONTRACT "High
//! availability", `HA.md`). The settings ([`config`]), the connection ([`connect`]), the
//! schema and its migrations ([`schema`]) and the lease that makes one node the leader
//! ([`lease`]), and the state in the database ([`store`]). Without `ha:` none of this runs and no database is needed.

pub mod config;
pub mod connect;
pub mod leader;
pub mod lease;
pub mod schema;
pub mod status;
pub mod store;
