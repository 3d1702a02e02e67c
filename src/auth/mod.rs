//! Request authentication for the Huawei Cloud API gateway.
//!
//! [`iam`] obtains, caches and refreshes IAM tokens by password (API doc section E1).
//! [`signer`] holds the pure AK/SK `SDK-HMAC-SHA256` algorithm (API doc section E2): the client side
//! ([`sign`]) and the gateway side ([`verify`], used by the emulator). No I/O, no clocks: callers
//! pass the current time in.

pub mod iam;
pub mod signer;

pub use signer::{
    AkSk, ParsedAuthorization, ReceivedRequest, SignRequest, SignatureError, Signed,
    parse_authorization, sign, verify,
};
