//! AK/SK request signing for the Huawei Cloud API gateway: pure functions, a leaf that
//! [`crate::api`] and the emulator use and that uses nothing of theirs.
//!
//! [`signer`] holds the `SDK-HMAC-SHA256` algorithm (API doc section E2): the client side
//! ([`sign`]), the gateway side ([`verify`], used by the emulator), and the one RFC 3986 encoder
//! and canonical query ([`signer::encode_component`], [`signer::query_string`]) that the client
//! also uses for what it sends, so that what is sent is what was signed. No I/O, no clocks:
//! callers pass the current time in. IAM tokens, which need HTTP, live in [`crate::api::iam`].

pub mod signer;

pub use signer::{
    AkSk, ParsedAuthorization, ReceivedRequest, SignRequest, SignatureError, Signed,
    parse_authorization, sign, verify,
};
