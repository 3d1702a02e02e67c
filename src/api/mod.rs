//! The CodeArts Deploy API: field rules, wire format, response types, the HTTP client.
pub mod body;
pub mod client;
pub mod credentials;
pub mod errors;
pub mod guard;
pub mod rules;
pub mod service_clock;
pub mod types;
pub mod wire;
