//! Daemon settings: the YAML config file, then command-line flags over it, then defaults,
//! validated into `Settings` before anything touches the network. Reads the one config file
//! and nothing else (credentials are resolved by `crate::api::credentials`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::credentials::AuthSettings;
use crate::api::endpoint::{ClientOptions, Endpoint};
use crate::api::iam::{IamConfig, ProjectScope, default_endpoint};
use crate::duration::parse_duration;
use crate::executor::limits::Limits;
use crate::executor::retry::{MAX_RETRY_DURATION, RetryPolicy};
use crate::executor::{ExecutorSettings, UnknownOutcomePolicy};
use crate::retention::RetentionPolicy;

/// Largest config file read.
const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// The config file as written. Unknown fields are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Watched plans folder.
    pub plans_dir: Option<PathBuf>,
    /// Where result files go.
    pub results_dir: Option<PathBuf>,
    /// Where run-once memory and run journals go.
    pub state_dir: Option<PathBuf>,
    /// API base URL.
    pub endpoint: Option<String>,
    /// Region id (endpoint from the SDK's pattern).
    pub region: Option<String>,
    /// Project id for history lookups (and AK/SK's `X-Project-Id`).
    pub project_id: Option<String>,
    /// Start calls per second, all plans together.
    pub rate: Option<f64>,
    /// Calls allowed at once after an idle period.
    pub burst: Option<u32>,
    /// Calls in flight, all plans together.
    pub concurrency: Option<usize>,
    /// Runs alive at once, all plans together (the rest wait their turn, in order); default
    /// from the open-files limit.
    pub max_runs: Option<usize>,
    /// How long calls in flight may finish after SIGTERM.
    pub shutdown_grace: Option<String>,
    /// Periodic rescan of the plans folder.
    pub rescan_interval: Option<String>,
    /// Retry policy.
    pub retry: Option<RawRetry>,
    /// Unknown outcomes without a project id: `fail` or `resend`.
    pub unknown_outcome: Option<UnknownOutcomePolicy>,
    /// How long to wait for a record to show up in the history.
    pub settle: Option<String>,
    /// What the operator believes the zone of the history's `start_time` values is, as
    /// `+08:00`: a hint, compared with the zone deployd learns, never trusted over it.
    pub history_utc_offset: Option<String>,
    /// HTTP timeouts.
    pub timeouts: Option<RawTimeouts>,
    /// Credentials (file paths only: secrets never sit in the config itself).
    pub auth: Option<RawAuth>,
    /// How many result files to keep per plan.
    pub keep_results: Option<RawKeepResults>,
}

/// `keep_results:` in the config: `{count: N, age: "30d"}`, either or both.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepResults {
    /// Result files kept per plan (the newest ones).
    pub count: Option<usize>,
    /// Results of runs that started longer ago than this are removed.
    pub age: Option<String>,
}

/// `retry:` in the config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Calls per task.
    pub max_attempts: Option<u32>,
    /// First backoff.
    pub base: Option<String>,
    /// Largest backoff.
    pub cap: Option<String>,
    /// Time per task.
    pub deadline: Option<String>,
}

/// `timeouts:` in the config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Connect timeout.
    pub connect: Option<String>,
    /// Whole-request timeout.
    pub request: Option<String>,
}

/// `auth:` in the config.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// File holding an IAM token.
    pub token_file: Option<PathBuf>,
    /// File holding the access key id.
    pub ak_file: Option<PathBuf>,
    /// File holding the secret key.
    pub sk_file: Option<PathBuf>,
    /// File holding an STS security token (temporary AK/SK).
    pub security_token_file: Option<PathBuf>,
    /// IAM user and password file, to obtain and refresh tokens.
    pub iam: Option<RawIam>,
}

/// `auth.iam:` in the config.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIam {
    /// Account (domain) name.
    pub domain: Option<String>,
    /// IAM user name.
    pub user: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// Token scope by project name (a region id such as `cn-north-4`).
    pub project_name: Option<String>,
    /// Token scope by project id.
    pub project_id: Option<String>,
    /// IAM endpoint; default `https://iam.{region}.myhuaweicloud.com`.
    pub endpoint: Option<String>,
}

/// Flags that override the config file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--plans-dir`.
    pub plans_dir: Option<PathBuf>,
    /// `--results-dir`.
    pub results_dir: Option<PathBuf>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--endpoint`.
    pub endpoint: Option<String>,
    /// `--region`.
    pub region: Option<String>,
    /// `--project-id`.
    pub project_id: Option<String>,
    /// `--rate`.
    pub rate: Option<f64>,
    /// `--burst`.
    pub burst: Option<u32>,
    /// `--concurrency`.
    pub concurrency: Option<usize>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Watched plans folder.
    pub plans_dir: PathBuf,
    /// Result files root.
    pub results_dir: PathBuf,
    /// State root.
    pub state_dir: PathBuf,
    /// API endpoint; `None` only when `--emulator` will provide one.
    pub endpoint: Option<Endpoint>,
    /// Calls per second.
    pub rate: f64,
    /// Burst.
    pub burst: u32,
    /// Calls in flight.
    pub concurrency: usize,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Periodic rescan.
    pub rescan_interval: Duration,
    /// Executor settings (retry, project id, unknown outcomes).
    pub executor: ExecutorSettings,
    /// HTTP client settings.
    pub client: ClientOptions,
    /// Credential files and the IAM user from the config.
    pub auth: AuthSettings,
    /// Which result files to keep per plan (everything when `keep_results` is absent).
    pub keep_results: RetentionPolicy,
    /// Runs alive at once; `None`: sized from the open-files limit at start-up.
    pub max_runs: Option<usize>,
}

/// The largest `max_runs` accepted.
pub const MAX_RUNS_LIMIT: usize = 10_000;

/// A bad configuration (exit status 78).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

impl Settings {
    /// Reads the config file (if any), applies the flags, validates everything. `env` looks up
    /// environment variables (injected so tests need not touch the process environment).
    pub fn load(
        config: Option<&Path>,
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let Some(path) = config else {
            return Self::from_raw(RawConfig::default(), overrides, env, None);
        };
        let bytes = std::fs::read(path).map_err(|e| {
            ConfigError(vec![format!(
                "{}: cannot read the config file: {e}",
                path.display()
            )])
        })?;
        Self::from_config_bytes(path, &bytes, overrides, env)
    }

    /// [`Settings::load`] without the file read: `bytes` are the config file's content and
    /// `path` is only named in messages. No I/O (the fuzz target `config` drives it).
    pub fn from_config_bytes(
        path: &Path,
        bytes: &[u8],
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let config = Some(path);
        let (raw, text) = parse_config(path, bytes)?;
        // Point every field error at its line in the file.
        Self::from_raw(raw, overrides, env, config).map_err(|ConfigError(errors)| {
            let origin = format!("{}: ", path.display());
            ConfigError(
                errors
                    .into_iter()
                    .map(|e| {
                        let Some(rest) = e.strip_prefix(&origin) else {
                            return e;
                        };
                        let field = rest.split(": ").next().unwrap_or_default();
                        match locate_field(&text, field) {
                            Some((line, col)) => format!("{}:{line}:{col}: {rest}", path.display()),
                            None => e,
                        }
                    })
                    .collect(),
            )
        })
    }

    /// Validates a parsed config with the flags applied; reports every problem at once.
    pub fn from_raw(
        raw: RawConfig,
        o: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
        config: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        let origin = config.map_or_else(|| "settings".to_string(), |p| p.display().to_string());
        let mut err = |field: &str, msg: String| errors.push(format!("{origin}: {field}: {msg}"));

        // systemd's StateDirectory= sets $STATE_DIRECTORY: a sensible default under the unit.
        let state_root = env("STATE_DIRECTORY").map(PathBuf::from);
        let plans_dir = o
            .plans_dir
            .clone()
            .or(raw.plans_dir)
            .unwrap_or_else(|| PathBuf::from("plans"));
        let results_dir = o
            .results_dir
            .clone()
            .or(raw.results_dir)
            .unwrap_or_else(|| {
                state_root
                    .as_ref()
                    .map_or_else(|| PathBuf::from("results"), |s| s.join("results"))
            });
        let state_dir = o.state_dir.clone().or(raw.state_dir).unwrap_or_else(|| {
            state_root
                .as_ref()
                .map_or_else(|| PathBuf::from("state"), |s| s.join("state"))
        });

        let endpoint_text = o.endpoint.clone().or(raw.endpoint);
        let region = o.region.clone().or(raw.region);
        let endpoint = match (endpoint_text, region.as_deref()) {
            (Some(e), _) => Endpoint::parse(&e)
                .map_err(|e| err("endpoint", e.to_string()))
                .ok(),
            (None, Some(r)) => Endpoint::for_region(r)
                .map_err(|e| err("region", e.to_string()))
                .ok(),
            (None, None) => None,
        };

        let project_id = o
            .project_id
            .clone()
            .or(raw.project_id)
            .or_else(|| env("CLOUD_SDK_PROJECT_ID"));
        if let Some(p) = &project_id
            && let Err(e) = crate::api::rules::check_id(p)
        {
            err("project_id", e);
        }

        // A value from a flag is named as the flag, so the message does not point at a line
        // of the config file that did not count.
        let rate = o.rate.or(raw.rate).unwrap_or(5.0);
        let burst = o.burst.or(raw.burst).unwrap_or(1);
        let concurrency = o.concurrency.or(raw.concurrency).unwrap_or(8);
        for (flag, from_flag, value) in [
            ("--rate", o.rate.is_some(), Limits::new(rate, 1, 1).err()),
            (
                "--burst",
                o.burst.is_some(),
                Limits::new(1.0, burst, 1).err(),
            ),
            (
                "--concurrency",
                o.concurrency.is_some(),
                Limits::new(1.0, 1, concurrency).err(),
            ),
        ] {
            if let Some(e) = value {
                err(if from_flag { flag } else { e.setting() }, e.to_string());
            }
        }
        let max_runs = raw.max_runs;
        if let Some(n) = max_runs
            && !(1..=MAX_RUNS_LIMIT).contains(&n)
        {
            err(
                "max_runs",
                format!("{n} is outside 1..={MAX_RUNS_LIMIT} (runs alive at once)"),
            );
        }

        let mut duration = |field: &str, value: Option<String>, default: Duration| {
            duration_setting(field, value, default, &mut err)
        };
        let shutdown_grace = duration(
            "shutdown_grace",
            raw.shutdown_grace,
            Duration::from_secs(30),
        );
        let rescan_interval = duration(
            "rescan_interval",
            raw.rescan_interval,
            Duration::from_secs(60),
        );
        let settle = duration("settle", raw.settle, Duration::from_secs(10));

        let defaults = RetryPolicy::default();
        let r = raw.retry.unwrap_or_default();
        let base = duration("retry.base", r.base, defaults.base());
        let cap = duration("retry.cap", r.cap, defaults.cap());
        let deadline = duration("retry.deadline", r.deadline, defaults.deadline());

        let t = raw.timeouts.unwrap_or_default();
        let client_defaults = ClientOptions::default();
        let client = ClientOptions {
            connect_timeout: duration(
                "timeouts.connect",
                t.connect,
                client_defaults.connect_timeout,
            ),
            request_timeout: duration(
                "timeouts.request",
                t.request,
                client_defaults.request_timeout,
            ),
            pool_idle_timeout: client_defaults.pool_idle_timeout,
        };
        let retry = RetryPolicy::try_new(
            r.max_attempts.unwrap_or(defaults.max_attempts()),
            base,
            cap,
            deadline,
        )
        .unwrap_or_else(|e| {
            err(e.setting(), e.to_string());
            defaults
        });

        let raw_auth = raw.auth.unwrap_or_default();
        let iam = raw_auth.iam.map(|iam| {
            check_iam(
                iam,
                region.as_deref(),
                project_id.as_deref(),
                client,
                &mut err,
            )
        });
        let auth = AuthSettings {
            token_file: raw_auth.token_file,
            ak_file: raw_auth.ak_file,
            sk_file: raw_auth.sk_file,
            security_token_file: raw_auth.security_token_file,
            iam: iam.flatten(),
        };
        let keep_results = match raw.keep_results {
            None => RetentionPolicy::KEEP_ALL,
            Some(k) => {
                let age = k.age.map(|a| {
                    parse_duration(&a).unwrap_or_else(|e| {
                        err("keep_results.age", e);
                        Duration::MAX
                    })
                });
                RetentionPolicy::try_new(k.count, age).unwrap_or_else(|e| {
                    err("keep_results", e.to_string());
                    RetentionPolicy::KEEP_ALL
                })
            }
        };

        let history_offset_hint = match raw.history_utc_offset.as_deref() {
            None => None,
            Some(text) => match parse_offset(text) {
                Some(offset) => Some(offset),
                None => {
                    err(
                        "history_utc_offset",
                        format!(
                            "{text:?} is not a UTC offset from -12:00 to +14:00 like +08:00 or -05:30"
                        ),
                    );
                    None
                }
            },
        };

        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        Ok(Self {
            plans_dir,
            results_dir,
            state_dir: state_dir.clone(),
            endpoint,
            rate,
            burst,
            concurrency,
            shutdown_grace,
            rescan_interval,
            executor: ExecutorSettings {
                retry,
                project_id,
                unknown_outcome: raw.unknown_outcome.unwrap_or_default(),
                settle,
                state_dir: Some(state_dir.clone()),
                forbidden_files: secret_paths(&auth, env),
                history_offset_hint,
            },
            client,
            auth,
            keep_results,
            max_runs,
        })
    }
}

/// The range of every duration setting of the config file (the README's table lists them).
/// `retry.*` are also checked against each other by [`RetryPolicy::try_new`].
pub const DURATION_RANGES: [(&str, Duration, Duration); 8] = [
    ("shutdown_grace", Duration::ZERO, Duration::from_secs(3600)),
    (
        "rescan_interval",
        Duration::from_secs(1),
        Duration::from_secs(86_400),
    ),
    ("settle", Duration::ZERO, Duration::from_secs(600)),
    ("retry.base", Duration::from_millis(1), MAX_RETRY_DURATION),
    ("retry.cap", Duration::from_millis(1), MAX_RETRY_DURATION),
    (
        "retry.deadline",
        Duration::from_millis(1),
        MAX_RETRY_DURATION,
    ),
    (
        "timeouts.connect",
        Duration::from_millis(100),
        Duration::from_secs(300),
    ),
    (
        "timeouts.request",
        Duration::from_millis(100),
        Duration::from_secs(3600),
    ),
];

/// A duration setting: its default when absent; its default and an error (naming `field`)
/// when it does not parse or lies outside its range in [`DURATION_RANGES`].
fn duration_setting(
    field: &str,
    value: Option<String>,
    default: Duration,
    err: &mut dyn FnMut(&str, String),
) -> Duration {
    let (min, max) = DURATION_RANGES
        .iter()
        .find(|(name, ..)| *name == field)
        .map_or((Duration::ZERO, Duration::MAX), |(_, min, max)| {
            (*min, *max)
        });
    match value.as_deref().map(parse_duration) {
        None => default,
        Some(Ok(d)) if (min..=max).contains(&d) => d,
        Some(Ok(d)) => {
            err(
                field,
                format!(
                    "must be from {} to {}, got {}",
                    human(min),
                    human(max),
                    human(d)
                ),
            );
            default
        }
        Some(Err(e)) => {
            err(field, e);
            default
        }
    }
}

/// A duration in the config file's own units (`0s`, `100ms`, `5m`, `24h`).
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Validates `auth.iam`. The project defaults to the project id (`project_id`,
/// `--project-id`, `CLOUD_SDK_PROJECT_ID`), then to the region's name; the endpoint to the
/// region's IAM endpoint.
fn check_iam(
    raw: RawIam,
    region: Option<&str>,
    project_id: Option<&str>,
    options: ClientOptions,
    err: &mut dyn FnMut(&str, String),
) -> Option<IamConfig> {
    let mut ok = true;
    let mut required = |field: &str, value: Option<String>| {
        let value = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if value.is_none() {
            err(field, "required".into());
            ok = false;
        }
        value.unwrap_or_default()
    };
    let domain = required("auth.iam.domain", raw.domain);
    let user = required("auth.iam.user", raw.user);
    let password_file = raw.password_file.filter(|p| !p.as_os_str().is_empty());
    if password_file.is_none() {
        err("auth.iam.password_file", "required".into());
        ok = false;
    }
    let project = match (raw.project_id, raw.project_name) {
        (Some(_), Some(_)) => {
            err(
                "auth.iam",
                "give project_id or project_name, not both".into(),
            );
            None
        }
        (Some(id), None) => match crate::api::rules::check_id(&id) {
            Ok(()) => Some(ProjectScope::Id(id)),
            Err(e) => {
                err("auth.iam.project_id", e);
                None
            }
        },
        (None, Some(name)) if !name.trim().is_empty() => Some(ProjectScope::Name(name)),
        (None, Some(_)) => {
            err("auth.iam.project_name", "must not be empty".into());
            None
        }
        (None, None) => match (project_id, region) {
            (Some(id), _) => Some(ProjectScope::Id(id.to_owned())),
            (None, Some(r)) => Some(ProjectScope::Name(r.to_owned())),
            (None, None) => {
                err(
                    "auth.iam",
                    "give project_id or project_name (or set project_id or region)".into(),
                );
                None
            }
        },
    };
    let endpoint = match (raw.endpoint, region) {
        (Some(e), _) => Endpoint::parse(&e)
            .map_err(|e| err("auth.iam.endpoint", e.to_string()))
            .ok(),
        (None, Some(r)) => default_endpoint(r)
            .map_err(|e| err("auth.iam.endpoint", e.to_string()))
            .ok(),
        (None, None) => {
            err("auth.iam.endpoint", "required when no region is set".into());
            None
        }
    };
    match (ok, project, endpoint, password_file) {
        (true, Some(project), Some(endpoint), Some(password_file)) => Some(IamConfig {
            endpoint,
            domain,
            user,
            password_file,
            project,
            options,
        }),
        _ => None,
    }
}

/// deployd's own secret files and the systemd credentials folder: plans may not read them.
fn secret_paths(auth: &AuthSettings, env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let credentials = env("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let files = [
        &auth.token_file,
        &auth.ak_file,
        &auth.sk_file,
        &auth.security_token_file,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .chain(auth.iam.as_ref().map(|iam| iam.password_file.clone()));
    let files = files.chain(env("DEPLOYD_TOKEN_FILE").map(PathBuf::from));
    let mut out: Vec<PathBuf> = files
        .map(|f| match &credentials {
            Some(dir) if f.is_relative() => dir.join(f),
            _ => f,
        })
        .collect();
    out.extend(credentials);
    out
}

/// `+08:00`, `-05:30`, `Z`: a real-world offset, from -12:00 to +14:00.
fn parse_offset(text: &str) -> Option<chrono::FixedOffset> {
    let t = text.trim();
    if t == "Z" || t == "+00:00" {
        return chrono::FixedOffset::east_opt(0);
    }
    chrono::DateTime::parse_from_rfc3339(&format!("2000-01-01T00:00:00{t}"))
        .ok()
        .map(|d| *d.offset())
        .filter(|o| (-12 * 3600..=14 * 3600).contains(&o.local_minus_utc()))
}

/// The 1-based line and column of a field (`rate`, `retry.base`, `a/b` for either) in a
/// config file, in block (`retry:` then an indented `base:`) or flow (`retry: {base: 1s}`)
/// style. Best effort: `None` when not found (the message then names the field only).
fn locate_field(text: &str, field: &str) -> Option<(usize, usize)> {
    if field.contains('/') {
        return field.split('/').find_map(|f| locate_field(text, f));
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut min_indent = 0;
    let mut found: Option<(usize, usize)> = None;
    for (depth, part) in field.split('.').enumerate() {
        let key = format!("{part}:");
        // In a flow mapping on the parent's line.
        if let Some((line, _)) = found {
            let text = lines[line - 1];
            if let Some(brace) = text.find('{') {
                let flow = &text[brace..];
                let hit = [format!("{{{key}"), format!(" {key}"), format!(",{key}")]
                    .iter()
                    .find_map(|needle| flow.find(needle.as_str()));
                if let Some(at) = hit {
                    // +1 past the separator, +1 to be 1-based.
                    found = Some((line, brace + at + 2));
                    continue;
                }
            }
        }
        let hit = lines.iter().enumerate().skip(from).find(|(_, l)| {
            let indent = l.len() - l.trim_start().len();
            l.trim_start().starts_with(&key)
                && (if depth == 0 {
                    indent == 0
                } else {
                    indent >= min_indent
                })
        })?;
        let indent = hit.1.len() - hit.1.trim_start().len();
        found = Some((hit.0 + 1, indent + 1));
        from = hit.0 + 1;
        min_indent = indent + 1;
    }
    found
}

fn parse_config(path: &Path, bytes: &[u8]) -> Result<(RawConfig, String), ConfigError> {
    let fail = |msg: String| ConfigError(vec![format!("{}: {msg}", path.display())]);
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(fail(format!("larger than {MAX_CONFIG_BYTES} bytes")));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))?;
    if text.trim().is_empty() {
        return Ok((RawConfig::default(), String::new()));
    }
    let raw = serde_saphyr::from_str(text).map_err(|e| fail(e.to_string()))?;
    Ok((raw, text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = Settings::from_raw(RawConfig::default(), &Overrides::default(), &no_env, None)
            .expect("valid");
        assert_eq!((s.rate, s.burst, s.concurrency), (5.0, 1, 8));
        assert_eq!(s.shutdown_grace, Duration::from_secs(30));
        assert_eq!(s.executor.retry, RetryPolicy::default());
        assert_eq!(s.executor.unknown_outcome, UnknownOutcomePolicy::Fail);
        assert!(s.endpoint.is_none());
    }

    #[test]
    fn flags_win_over_the_file_and_state_directory_is_used() {
        let raw: RawConfig =
            serde_saphyr::from_str("rate: 2\nconcurrency: 3\nendpoint: https://a.example\n")
                .expect("yaml");
        let o = Overrides {
            rate: Some(9.0),
            endpoint: Some("http://127.0.0.1:9".into()),
            ..Default::default()
        };
        let env = |k: &str| (k == "STATE_DIRECTORY").then(|| "/var/lib/deployd".to_string());
        let s = Settings::from_raw(raw, &o, &env, None).expect("valid");
        assert_eq!(s.rate, 9.0);
        assert_eq!(s.concurrency, 3);
        assert_eq!(s.endpoint.expect("set").as_str(), "http://127.0.0.1:9");
        assert_eq!(s.results_dir, PathBuf::from("/var/lib/deployd/results"));
    }

    #[test]
    fn every_error_is_reported() {
        let raw: RawConfig = serde_saphyr::from_str(
            "rate: 0\nendpoint: http://example.com\nshutdown_grace: soon\nretry: {max_attempts: 0}\nproject_id: short\n",
        )
        .expect("yaml");
        let e = Settings::from_raw(raw, &Overrides::default(), &no_env, None).expect_err("invalid");
        let text = e.to_string();
        for needle in ["rate", "endpoint", "shutdown_grace", "retry", "project_id"] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }

    fn config_errors(yaml: &str, o: &Overrides) -> String {
        let raw: RawConfig = serde_saphyr::from_str(yaml).expect("yaml");
        Settings::from_raw(raw, o, &no_env, None)
            .expect_err(yaml)
            .to_string()
    }

    /// Issue 10: every numeric setting has a range, and a value outside it is an error naming
    /// the setting (`rate: 1e-20` used to panic).
    #[test]
    fn every_numeric_setting_is_range_checked() {
        let none = Overrides::default();
        for (yaml, needle) in [
            (
                "rate: 1e-20\n",
                "rate: must be a number of calls per second from 0.001",
            ),
            ("rate: 10001\n", "rate: must be"),
            ("rate: .nan\n", "rate: must be"),
            ("rate: .inf\n", "rate: must be"),
            ("burst: 0\n", "burst: must be from 1 to 10000, got 0"),
            ("burst: 4294967295\n", "burst: must be from 1 to 10000"),
            (
                "concurrency: 0\n",
                "concurrency: must be from 1 to 10000, got 0",
            ),
            ("concurrency: 10001\n", "concurrency: must be"),
            (
                "shutdown_grace: 2h\n",
                "shutdown_grace: must be from 0s to 1h, got 2h",
            ),
            (
                "rescan_interval: 500ms\n",
                "rescan_interval: must be from 1s to 1d",
            ),
            (
                "rescan_interval: 2d\n",
                "rescan_interval: must be from 1s to 1d",
            ),
            ("settle: 11m\n", "settle: must be from 0s to 10m"),
            ("retry: {base: 0ms}\n", "retry.base: must be from 1ms to 1d"),
            ("retry: {cap: 25h}\n", "retry.cap: must be from 1ms to 1d"),
            ("retry: {deadline: 99999999d}\n", "retry.deadline: must be"),
            (
                "retry: {max_attempts: 21}\n",
                "retry.max_attempts: max_attempts must be",
            ),
            ("retry: {base: 2s, cap: 1s}\n", "retry.cap: cap (1s)"),
            (
                "timeouts: {connect: 99ms}\n",
                "timeouts.connect: must be from 100ms to 5m",
            ),
            (
                "timeouts: {request: 2h}\n",
                "timeouts.request: must be from 100ms to 1h",
            ),
            (
                "history_utc_offset: '+15:00'\n",
                "history_utc_offset: \"+15:00\"",
            ),
            (
                "keep_results: {count: 0}\n",
                "keep_results: count must be at least 1",
            ),
        ] {
            let e = config_errors(yaml, &none);
            assert!(e.contains(needle), "{yaml}: {e}");
        }
        // The corners of every range are accepted.
        for yaml in [
            "rate: 0.001\nburst: 10000\nconcurrency: 10000\n",
            "rate: 10000\nburst: 1\nconcurrency: 1\n",
            "shutdown_grace: 0s\nrescan_interval: 1s\nsettle: 0s\n",
            "shutdown_grace: 1h\nrescan_interval: 1d\nsettle: 10m\n",
            "retry: {base: 1ms, cap: 1ms, deadline: 1ms}\ntimeouts: {connect: 100ms, request: 100ms}\n",
            "retry: {base: 24h, cap: 24h, deadline: 24h}\ntimeouts: {connect: 5m, request: 1h}\n",
            "history_utc_offset: '-12:00'\n",
        ] {
            let raw: RawConfig = serde_saphyr::from_str(yaml).expect("yaml");
            Settings::from_raw(raw, &none, &no_env, None).expect(yaml);
        }
    }

    /// A value given by a flag is reported as the flag, not as the config file's field.
    #[test]
    fn flag_values_out_of_range_name_the_flag() {
        let o = Overrides {
            rate: Some(1e-20),
            burst: Some(0),
            concurrency: Some(usize::MAX),
            ..Default::default()
        };
        let e = config_errors("rate: 5\n", &o);
        for needle in [
            "--rate: must be",
            "--burst: must be",
            "--concurrency: must be",
        ] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
    }

    fn iam_of(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<IamConfig, String> {
        let raw: RawConfig = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        Settings::from_raw(raw, &Overrides::default(), env, None)
            .map_err(|e| e.to_string())
            .map(|s| s.auth.iam.expect("auth.iam set"))
    }

    #[test]
    fn iam_defaults_come_from_the_region_and_the_project_id() {
        let iam = iam_of(
            "region: cn-north-4\nauth: {iam: {domain: acme, user: bob, password_file: pw}}\n",
            &no_env,
        )
        .expect("valid");
        assert_eq!(
            iam.endpoint.as_str(),
            "https://iam.cn-north-4.myhuaweicloud.com"
        );
        assert_eq!(iam.project, ProjectScope::Name("cn-north-4".into()));
        assert_eq!((iam.domain.as_str(), iam.user.as_str()), ("acme", "bob"));
        assert_eq!(iam.password_file, PathBuf::from("pw"));

        let id = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
        let env = |k: &str| (k == "CLOUD_SDK_PROJECT_ID").then(|| id.to_string());
        let iam = iam_of(
            "region: cn-north-4\nauth: {iam: {domain: acme, user: bob, password_file: pw}}\n",
            &env,
        )
        .expect("valid");
        assert_eq!(iam.project, ProjectScope::Id(id.into()));

        let iam = iam_of(
            "endpoint: http://127.0.0.1:9\nauth: {iam: {domain: a, user: b, password_file: p, project_name: x, endpoint: 'http://127.0.0.1:8'}}\n",
            &no_env,
        )
        .expect("valid");
        assert_eq!(iam.endpoint.as_str(), "http://127.0.0.1:8");
        assert_eq!(iam.project, ProjectScope::Name("x".into()));
    }

    #[test]
    fn iam_mistakes_are_all_reported() {
        let e = iam_of("auth: {iam: {user: ' '}}\n", &no_env).expect_err("invalid");
        for needle in [
            "auth.iam.domain: required",
            "auth.iam.user: required",
            "auth.iam.password_file: required",
            "auth.iam: give project_id or project_name",
            "auth.iam.endpoint: required when no region is set",
        ] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
        let e = iam_of(
            "auth: {iam: {domain: a, user: b, password_file: p, project_id: short, project_name: x, endpoint: 'http://iam.example.com'}}\n",
            &no_env,
        )
        .expect_err("invalid");
        assert!(e.contains("not both") && e.contains("http://"), "{e}");
        assert!(iam_of("auth: {iam: {passwd: x}}\n", &no_env).is_err());
    }

    #[test]
    fn keep_results_is_validated() {
        let parse = |yaml: &str| {
            let raw: RawConfig = serde_saphyr::from_str(yaml).expect("yaml");
            Settings::from_raw(raw, &Overrides::default(), &no_env, None)
        };
        let s = parse("keep_results: {count: 50, age: 30d}\n").expect("valid");
        assert_eq!(s.keep_results.count().map(|n| n.get()), Some(50));
        assert_eq!(s.keep_results.age(), Some(Duration::from_secs(30 * 86_400)));
        let s = parse("keep_results: {age: 12h}\n").expect("valid");
        assert_eq!(s.keep_results.count(), None);
        assert!(parse("rate: 1\n").expect("valid").keep_results.keeps_all());
        for (bad, needle) in [
            ("keep_results: {count: 0}\n", "count must be at least 1"),
            ("keep_results: {age: soon}\n", "keep_results.age"),
            ("keep_results: {age: 0s}\n", "age must be longer than 0"),
            ("keep_results: {}\n", "give count, age or both"),
        ] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        assert!(serde_saphyr::from_str::<RawConfig>("keep_results: {max: 3}\n").is_err());
    }

    #[test]
    fn unknown_fields_are_errors() {
        assert!(serde_saphyr::from_str::<RawConfig>("rat: 5\n").is_err());
    }
}

#[cfg(test)]
mod locate_tests {
    use super::locate_field;

    const TEXT: &str = "rate: 0\nretry:\n  base: soon\n  cap: 1s\ntimeouts: {connect: 1ms, request: 2s}\nendpoint: x\n";

    #[test]
    fn config_errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "concurrency: 3\nretry:\n  base: soon\n").expect("write");
        let e = super::Settings::load(Some(&path), &super::Overrides::default(), &|_| None)
            .expect_err("bad");
        let text = e.to_string();
        assert!(
            text.contains(&format!("{}:3:3: retry.base: ", path.display())),
            "{text}"
        );
        // Out-of-range values are located too.
        std::fs::write(&path, "burst: 2\nrate: 1e-20\nretry:\n  cap: 25h\n").expect("write");
        let text = super::Settings::load(Some(&path), &super::Overrides::default(), &|_| None)
            .expect_err("bad")
            .to_string();
        for needle in ["2:1: rate: must be", "4:3: retry.cap: must be"] {
            assert!(
                text.contains(&format!("{}:{needle}", path.display())),
                "{text}"
            );
        }
    }

    #[test]
    fn finds_block_and_flow_fields() {
        assert_eq!(locate_field(TEXT, "rate"), Some((1, 1)));
        assert_eq!(locate_field(TEXT, "retry.base"), Some((3, 3)));
        assert_eq!(locate_field(TEXT, "retry.cap"), Some((4, 3)));
        assert_eq!(locate_field(TEXT, "timeouts.connect"), Some((5, 12)));
        assert_eq!(locate_field(TEXT, "timeouts.request"), Some((5, 26)));
        assert_eq!(locate_field(TEXT, "rate/burst/concurrency"), Some((1, 1)));
        assert_eq!(locate_field(TEXT, "retry.deadline"), None);
        assert_eq!(locate_field(TEXT, "burst"), None);
    }
}

#[cfg(test)]
mod offset_tests {
    use super::parse_offset;

    #[test]
    fn offsets() {
        assert_eq!(
            parse_offset("+08:00").map(|o| o.local_minus_utc()),
            Some(8 * 3600)
        );
        assert_eq!(
            parse_offset("-05:30").map(|o| o.local_minus_utc()),
            Some(-(5 * 3600 + 1800))
        );
        assert_eq!(parse_offset("Z").map(|o| o.local_minus_utc()), Some(0));
        assert_eq!(parse_offset("8"), None);
        assert_eq!(parse_offset("+25:00"), None);
        assert_eq!(
            parse_offset("+14:00").map(|o| o.local_minus_utc()),
            Some(14 * 3600)
        );
        assert_eq!(parse_offset("+14:30"), None);
        assert_eq!(parse_offset("-12:01"), None);
    }
}
