//! The CodeArts Deploy API: field rules, wire types, the HTTP client.
pub mod rules;
