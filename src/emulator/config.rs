//! The emulator's configuration: [`EmulatorConfig`] (what the server does), its checks, and
//! [`EmulatorArgs`] (the `deployd emulator` flags that build one). Holds no runtime state.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::api::rules;
use crate::secret::Secret;

/// The static token accepted by default in `X-Auth-Token`.
pub const DEFAULT_TOKEN: &str = "emulator-token";
/// The project id the emulator serves by default.
pub const DEFAULT_PROJECT_ID: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
/// The IAM account (domain) name of the default user.
pub const DEFAULT_DOMAIN: &str = "emulator-domain";
/// The IAM user name of the default user.
pub const DEFAULT_USER: &str = "emulator-user";
/// The password of the default user.
pub const DEFAULT_PASSWORD: &str = "emulator-password";
/// The access key id accepted by default for AK/SK signatures.
pub const DEFAULT_AK: &str = "EMULATORACCESSKEY0001";
/// The secret key of [`DEFAULT_AK`].
pub const DEFAULT_SK: &str = "emulator-secret-key";
/// Consecutive failed signatures after which an AK is locked (the gateway's rule: more than 5).
pub const AK_MAX_FAILURES: u32 = 5;

/// An IAM user the emulator can issue tokens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IamUser {
    /// Account (domain) name.
    pub domain: String,
    /// IAM user name.
    pub name: String,
    /// Password.
    pub password: Secret,
}

impl IamUser {
    /// A user from its three parts.
    pub fn new(domain: impl Into<String>, name: impl Into<String>, password: &str) -> Self {
        Self {
            domain: domain.into(),
            name: name.into(),
            password: Secret::new(password),
        }
    }
}

/// An AK/SK pair whose signatures the emulator verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// Access key id (public: it travels in the `Authorization` header).
    pub ak: String,
    /// Secret key.
    pub sk: Secret,
}

impl AccessKey {
    /// A pair from its two parts.
    pub fn new(ak: impl Into<String>, sk: &str) -> Self {
        Self {
            ak: ak.into(),
            sk: Secret::new(sk),
        }
    }
}

/// What the emulator accepts and which faults it injects.
///
/// Fault fractions are drawn independently per request from one RNG (seeded by `seed`), in the
/// order: drop before, hang, error, drop after. Faults apply to the deploy endpoints only, never
/// to IAM nor to `/_emulator/*`.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Static tokens accepted in `X-Auth-Token` (they never expire).
    pub tokens: Vec<Secret>,
    /// Users `POST /v3/auth/tokens` issues tokens to.
    pub users: Vec<IamUser>,
    /// Lifetime of an issued IAM token.
    pub token_lifetime: Duration,
    /// AK/SK pairs whose `SDK-HMAC-SHA256` signatures are accepted.
    pub access_keys: Vec<AccessKey>,
    /// How long an AK stays locked after more than [`AK_MAX_FAILURES`] failed signatures in a
    /// row (5 minutes at the real gateway).
    pub ak_lock_duration: Duration,
    /// The project id served by the history endpoint (32 letters and digits).
    pub project_id: String,
    /// Fixed delay before answering any API request.
    pub latency: Duration,
    /// Extra delay before answering an IAM token request (a slow IAM).
    pub iam_latency: Duration,
    /// Extra uniform random delay in `0..=latency_jitter`.
    pub latency_jitter: Duration,
    /// Requests per second over all deploy endpoints together; the burst is `ceil(rate)`, at
    /// least 1. Excess requests get 429 APIGW.0308 with `Retry-After: 1`.
    pub rate_limit: Option<f64>,
    /// Fraction answered 500 or 503 (half each) before any record is created.
    pub error_rate: f64,
    /// Fraction whose connection is closed without a response before processing (no record).
    pub drop_before_rate: f64,
    /// Fraction of start calls whose connection is closed without a response after
    /// processing: a record was created, the outcome is unknown to the client.
    pub drop_after_rate: f64,
    /// Fraction held open for `hang_for`, then answered 504 (no record).
    pub hang_rate: f64,
    /// How long a hung request is held.
    pub hang_for: Duration,
    /// Task ids answered 404 Deploy.00011020. Every other well-formed id exists.
    pub unknown_task_ids: HashSet<String>,
    /// Task ids whose deployments end `failed` instead of `succeeded`.
    pub failing_task_ids: HashSet<String>,
    /// Task ids whose start calls are refused with 400 Deploy.00011002 (as the service does
    /// for params that do not fit the task, which no client-side check can know).
    pub rejected_task_ids: HashSet<String>,
    /// How long a deployment stays `running`.
    pub deploy_duration: Duration,
    /// Seed of the fault RNG, for reproducible runs; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Whether deploy endpoints check `X-Auth-Token`.
    pub auth_required: bool,
    /// The zone of record times (`start_time`, `end_time`) and of history date windows. The API
    /// doc does not say which it is; UTC+8 by default.
    pub record_utc_offset: chrono::FixedOffset,
    /// How far the service's clock is ahead of this host's (negative: behind). It moves record
    /// times, the `Date` header of every answer and the signature expiry check.
    pub clock_offset: chrono::TimeDelta,
    /// Faults for the start calls of given task ids: a task's first call gets its first
    /// listed fault, and so on (then the random ones apply), so a test loses exactly the
    /// answers it wants whatever order the calls come in.
    pub start_script: Vec<(String, ScriptedFault)>,
    /// Faults for the queries (history, state, params) of given task ids, in the same way:
    /// a task's first query gets its first listed fault. `DropBefore` and `DropAfter` both
    /// close the connection unanswered (a query creates nothing).
    pub query_script: Vec<(String, ScriptedFault)>,
}

/// A fault chosen for one start call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptedFault {
    /// Processed and answered normally.
    None,
    /// Connection closed before processing: no record, the outcome unknown to the client.
    DropBefore,
    /// Processed (a record exists), then the connection closed unanswered.
    DropAfter,
    /// Answered 429 APIGW.0308 with `Retry-After` of this many seconds, before processing
    /// (as the gateway throttles).
    Throttled(u32),
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            tokens: vec![Secret::new(DEFAULT_TOKEN)],
            users: vec![IamUser::new(DEFAULT_DOMAIN, DEFAULT_USER, DEFAULT_PASSWORD)],
            token_lifetime: Duration::from_secs(24 * 3600),
            access_keys: vec![AccessKey::new(DEFAULT_AK, DEFAULT_SK)],
            ak_lock_duration: Duration::from_secs(5 * 60),
            project_id: DEFAULT_PROJECT_ID.to_owned(),
            latency: Duration::ZERO,
            iam_latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            rate_limit: None,
            error_rate: 0.0,
            drop_before_rate: 0.0,
            drop_after_rate: 0.0,
            hang_rate: 0.0,
            hang_for: Duration::from_secs(120),
            unknown_task_ids: HashSet::new(),
            failing_task_ids: HashSet::new(),
            rejected_task_ids: HashSet::new(),
            deploy_duration: Duration::from_secs(2),
            seed: None,
            auth_required: true,
            record_utc_offset: service_zone(),
            clock_offset: chrono::TimeDelta::zero(),
            start_script: Vec::new(),
            query_script: Vec::new(),
        }
    }
}

/// A configuration the emulator refuses to start with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A fault fraction outside `0..=1`.
    #[error("{name} must be a fraction between 0 and 1, got {value}")]
    Fraction {
        /// The field.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A rate limit that is not a positive number.
    #[error("rate_limit must be a positive number of requests per second, got {0}")]
    RateLimit(f64),
    /// A malformed id.
    #[error("{name} {id:?} {reason}")]
    Id {
        /// The field.
        name: &'static str,
        /// The id given.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

impl EmulatorConfig {
    /// Checks fractions, the rate limit and ids.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("error_rate", self.error_rate),
            ("drop_before_rate", self.drop_before_rate),
            ("drop_after_rate", self.drop_after_rate),
            ("hang_rate", self.hang_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::Fraction { name, value });
            }
        }
        if let Some(rate) = self.rate_limit
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(ConfigError::RateLimit(rate));
        }
        let ids = std::iter::once(("project_id", &self.project_id))
            .chain(
                self.unknown_task_ids
                    .iter()
                    .map(|id| ("unknown_task_ids", id)),
            )
            .chain(
                self.failing_task_ids
                    .iter()
                    .map(|id| ("failing_task_ids", id)),
            )
            .chain(
                self.rejected_task_ids
                    .iter()
                    .map(|id| ("rejected_task_ids", id)),
            );
        for (name, id) in ids {
            rules::check_id(id).map_err(|reason| ConfigError::Id {
                name,
                id: id.clone(),
                reason,
            })?;
        }
        Ok(())
    }
}

/// The flags of `deployd emulator`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// A static token accepted in X-Auth-Token (repeatable) [default: emulator-token].
    #[arg(long = "token", value_name = "TOKEN")]
    pub tokens: Vec<String>,
    /// An IAM user that may obtain tokens (repeatable); a test credential, visible to `ps`
    /// [default: emulator-domain:emulator-user:emulator-password].
    #[arg(long = "user", value_name = "DOMAIN:USER:PASSWORD", value_parser = parse_user)]
    pub users: Vec<IamUser>,
    /// Lifetime of issued IAM tokens, in seconds (1 to 31536000, a year).
    #[arg(long, value_name = "SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub token_lifetime_secs: u64,
    /// An AK/SK pair whose signatures are accepted (repeatable); a test credential, visible to
    /// `ps` [default: EMULATORACCESSKEY0001:emulator-secret-key].
    #[arg(long = "access-key", value_name = "AK:SK", value_parser = parse_access_key)]
    pub access_keys: Vec<AccessKey>,
    /// How long an AK is locked after more than 5 failed signatures in a row, in seconds (at
    /// most 31536000, a year).
    #[arg(long, value_name = "SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(..=31_536_000))]
    pub ak_lock_secs: u64,
    /// Accept requests without any token or signature.
    #[arg(long)]
    pub no_auth: bool,
    /// Project id served by the history endpoint.
    #[arg(long, value_name = "ID", default_value = DEFAULT_PROJECT_ID, value_parser = parse_id)]
    pub project_id: String,
    /// Fixed delay before every answer, in milliseconds (at most 3600000, an hour).
    #[arg(long, value_name = "MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(..=3_600_000))]
    pub latency_ms: u64,
    /// Extra delay before answering an IAM token request, in milliseconds (at most 3600000).
    #[arg(long, value_name = "MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(..=3_600_000))]
    pub iam_latency_ms: u64,
    /// Extra random delay of up to this many milliseconds (at most 3600000).
    #[arg(long, value_name = "MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(..=3_600_000))]
    pub jitter_ms: u64,
    /// Requests per second accepted over all deploy endpoints; excess gets 429 APIGW.0308.
    #[arg(long, value_name = "PER_SEC", value_parser = parse_positive)]
    pub rate_limit: Option<f64>,
    /// Fraction of deploy requests answered 500 or 503.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, value_parser = parse_fraction)]
    pub error_rate: f64,
    /// Fraction of deploy requests whose connection is closed before processing.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, value_parser = parse_fraction)]
    pub drop_rate: f64,
    /// Fraction of deploy requests processed (record created) and then dropped unanswered.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, value_parser = parse_fraction)]
    pub drop_after_rate: f64,
    /// Fraction of deploy requests held open for --hang-secs, then answered 504.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, value_parser = parse_fraction)]
    pub hang_rate: f64,
    /// How long a hung request is held, in seconds (at most 86400).
    #[arg(long, value_name = "SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(..=86_400))]
    pub hang_secs: u64,
    /// A task id answered 404 Deploy.00011020 (repeatable).
    #[arg(long = "unknown-task", value_name = "TASK_ID", value_parser = parse_id)]
    pub unknown_tasks: Vec<String>,
    /// A task id whose deployments end `failed` (repeatable).
    #[arg(long = "failing-task", value_name = "TASK_ID", value_parser = parse_id)]
    pub failing_tasks: Vec<String>,
    /// A task id whose start calls are refused with 400 Deploy.00011002 (repeatable).
    #[arg(long = "reject-task", value_name = "TASK_ID", value_parser = parse_id)]
    pub rejected_tasks: Vec<String>,
    /// How long a deployment stays running, in milliseconds (at most 86400000, a day).
    #[arg(long, value_name = "MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(..=86_400_000))]
    pub deploy_ms: u64,
    /// Seed of the fault RNG, for reproducible runs.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Zone of record times and history date windows, as `+08:00`, `-05:00`, `+05:45`, `Z`.
    #[arg(long, value_name = "OFFSET", default_value = "+08:00", value_parser = parse_utc_offset)]
    pub record_utc_offset: chrono::FixedOffset,
    /// How many seconds the emulated service's clock is ahead of this host's (negative: behind).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i64).range(-31_536_000..=31_536_000)
    )]
    pub clock_offset_secs: i64,
}

/// Parses a UTC offset (`+08:00`, `-0500`, `Z`, `UTC`), within UTC-12 to UTC+14.
pub fn parse_utc_offset(text: &str) -> Result<chrono::FixedOffset, String> {
    let t = text.trim();
    let secs = if t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") {
        0
    } else {
        let (sign, rest) = match t.as_bytes().first() {
            Some(b'+') => (1, &t[1..]),
            Some(b'-') => (-1, &t[1..]),
            _ => {
                return Err(format!(
                    "{text:?} is not a UTC offset like +08:00 or -05:00"
                ));
            }
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        let (h, m) = match digits.len() {
            1 | 2 => (digits.as_str(), "0"),
            4 => digits.split_at(2),
            _ => {
                return Err(format!(
                    "{text:?} is not a UTC offset like +08:00 or -05:00"
                ));
            }
        };
        let (Ok(h), Ok(m)) = (h.parse::<i32>(), m.parse::<i32>()) else {
            return Err(format!(
                "{text:?} is not a UTC offset like +08:00 or -05:00"
            ));
        };
        if m >= 60 {
            return Err(format!("{text:?}: minutes must be below 60"));
        }
        sign * (h * 3600 + m * 60)
    };
    if !(-12 * 3600..=14 * 3600).contains(&secs) {
        return Err(format!("{text:?} is outside UTC-12..UTC+14"));
    }
    chrono::FixedOffset::east_opt(secs).ok_or_else(|| format!("{text:?} is not a valid offset"))
}

impl EmulatorArgs {
    /// The configuration these flags describe (the flags are checked while parsing).
    pub fn into_config(self) -> EmulatorConfig {
        let defaults = EmulatorConfig::default();
        EmulatorConfig {
            tokens: if self.tokens.is_empty() {
                defaults.tokens
            } else {
                self.tokens.into_iter().map(Secret::new).collect()
            },
            users: if self.users.is_empty() {
                defaults.users
            } else {
                self.users
            },
            token_lifetime: Duration::from_secs(self.token_lifetime_secs),
            access_keys: if self.access_keys.is_empty() {
                defaults.access_keys
            } else {
                self.access_keys
            },
            ak_lock_duration: Duration::from_secs(self.ak_lock_secs),
            project_id: self.project_id,
            latency: Duration::from_millis(self.latency_ms),
            iam_latency: Duration::from_millis(self.iam_latency_ms),
            latency_jitter: Duration::from_millis(self.jitter_ms),
            rate_limit: self.rate_limit,
            error_rate: self.error_rate,
            drop_before_rate: self.drop_rate,
            drop_after_rate: self.drop_after_rate,
            hang_rate: self.hang_rate,
            hang_for: Duration::from_secs(self.hang_secs),
            unknown_task_ids: self.unknown_tasks.into_iter().collect(),
            failing_task_ids: self.failing_tasks.into_iter().collect(),
            rejected_task_ids: self.rejected_tasks.into_iter().collect(),
            deploy_duration: Duration::from_millis(self.deploy_ms),
            seed: self.seed,
            auth_required: !self.no_auth,
            record_utc_offset: self.record_utc_offset,
            clock_offset: chrono::TimeDelta::seconds(self.clock_offset_secs),
            start_script: Vec::new(),
            query_script: Vec::new(),
        }
    }
}

/// Parses `DOMAIN:USER:PASSWORD` (the password may itself contain `:`).
fn parse_user(s: &str) -> Result<IamUser, String> {
    let mut parts = s.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(d), Some(u), Some(p)) if !d.is_empty() && !u.is_empty() && !p.is_empty() => {
            Ok(IamUser::new(d, u, p))
        }
        _ => Err("expected DOMAIN:USER:PASSWORD, none of them empty".into()),
    }
}

/// Parses `AK:SK` (the SK may itself contain `:`).
fn parse_access_key(s: &str) -> Result<AccessKey, String> {
    match s.split_once(':') {
        Some((ak, sk)) if !ak.is_empty() && !sk.is_empty() => Ok(AccessKey::new(ak, sk)),
        _ => Err("expected AK:SK, neither empty".into()),
    }
}

/// Parses a fraction in `0..=1`.
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a fraction between 0 and 1, got {s:?}")),
    }
}

/// Parses a positive finite number.
fn parse_positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number, got {s:?}")),
    }
}

/// Parses a 32-character id.
fn parse_id(s: &str) -> Result<String, String> {
    rules::check_id(s).map(|()| s.to_owned())
}

/// The default zone of record times (UTC+8, China Standard Time: a guess, the API doc does not
/// say; `EmulatorConfig::record_utc_offset` changes it).
pub fn service_zone() -> chrono::FixedOffset {
    chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    /// Issue 10: `--ak-lock-secs 18446744073709551615` made `Instant + lock` overflow (a
    /// panic) at the sixth bad signature; every duration flag is bounded now.
    #[test]
    fn duration_flags_are_bounded() {
        for (flag, bad) in [
            ("--token-lifetime-secs", "0"),
            ("--token-lifetime-secs", "31536001"),
            ("--ak-lock-secs", "18446744073709551615"),
            ("--latency-ms", "3600001"),
            ("--jitter-ms", "3600001"),
            ("--hang-secs", "86401"),
            ("--deploy-ms", "86400001"),
            ("--rate-limit", "inf"),
            ("--error-rate", "1.5"),
        ] {
            assert!(
                Cli::try_parse_from(["emulator", flag, bad]).is_err(),
                "{flag} {bad}"
            );
        }
        assert!(
            Cli::try_parse_from([
                "emulator",
                "--ak-lock-secs",
                "31536000",
                "--hang-secs",
                "86400"
            ])
            .is_ok()
        );
    }

    #[test]
    fn flags_build_a_config() {
        let task = "a".repeat(32);
        let cli = Cli::try_parse_from([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--token",
            "t1",
            "--token",
            "t2",
            "--user",
            "acme:bob:pa:ss",
            "--access-key",
            "AK1:s:k",
            "--ak-lock-secs",
            "2",
            "--rate-limit",
            "2.5",
            "--drop-after-rate",
            "0.25",
            "--failing-task",
            &task,
            "--seed",
            "7",
            "--no-auth",
        ])
        .expect("valid flags");
        let config = cli.args.into_config();
        assert_eq!(config.tokens, vec![Secret::new("t1"), Secret::new("t2")]);
        assert_eq!(config.users, vec![IamUser::new("acme", "bob", "pa:ss")]);
        assert_eq!(config.access_keys, vec![AccessKey::new("AK1", "s:k")]);
        assert_eq!(config.ak_lock_duration, Duration::from_secs(2));
        assert_eq!(config.rate_limit, Some(2.5));
        assert_eq!(config.drop_after_rate, 0.25);
        assert!(config.failing_task_ids.contains(&task));
        assert_eq!(config.seed, Some(7));
        assert!(!config.auth_required);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn bad_flags_are_refused() {
        for bad in [
            ["--error-rate", "1.5"],
            ["--rate-limit", "0"],
            ["--user", "acme:bob"],
            ["--access-key", "AK1"],
            ["--access-key", ":sk"],
            ["--unknown-task", "short"],
        ] {
            assert!(
                Cli::try_parse_from(["emulator", bad[0], bad[1]]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn defaults_are_valid_and_config_checks_fractions() {
        let defaults = Cli::try_parse_from(["emulator"])
            .expect("no flags")
            .args
            .into_config();
        assert_eq!(defaults.tokens, vec![Secret::new(DEFAULT_TOKEN)]);
        assert_eq!(
            defaults.access_keys,
            vec![AccessKey::new(DEFAULT_AK, DEFAULT_SK)]
        );
        assert_eq!(defaults.ak_lock_duration, Duration::from_secs(300));
        assert!(defaults.validate().is_ok());
        let config = EmulatorConfig {
            hang_rate: -0.1,
            ..EmulatorConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Fraction {
                name: "hang_rate",
                ..
            })
        ));
        let config = EmulatorConfig {
            rate_limit: Some(f64::NAN),
            ..EmulatorConfig::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let text = format!("{:?}", EmulatorConfig::default());
        assert!(
            !text.contains(DEFAULT_TOKEN)
                && !text.contains(DEFAULT_PASSWORD)
                && !text.contains(DEFAULT_SK),
            "{text}"
        );
    }
}
