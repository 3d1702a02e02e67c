//! The CodeArts Deploy API (and IAM, its token service): field rules, wire format, response
//! types, endpoints, credentials and the HTTP client.
pub mod body;
pub mod client;
pub mod credentials;
pub mod endpoint;
pub mod errors;
pub mod guard;
pub mod iam;
pub mod pace;
pub mod rules;
pub mod service_clock;
pub mod types;
pub mod wire;
