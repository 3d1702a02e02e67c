//! Daemon settings: the YAML config file, then command-line flags over it, then defaults,
//! validated into `Settings` before anything touches the network. Reads the one config file
//! and nothing else (credentials are resolved by `crate::api::credentials`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::client::DeployClient;
use crate::api::credentials::AuthSettings;
use crate::api::endpoint::{ClientOptions, Endpoint};
use crate::api::iam::{IamConfig, ProjectScope, default_endpoint};
use crate::duration::parse_duration;
use crate::executor::Executor;
use crate::executor::limits::{CallLimits, Limits, LimitsError};
use crate::executor::retry::{MAX_RETRY_DURATION, RetryPolicy};
use crate::executor::{ExecutorSettings, UnknownOutcomePolicy};
use crate::ha;
use crate::ha::config::{Database, HaSettings};
use crate::issue::{Issue, Issues};
use crate::retention::RetentionPolicy;
use crate::yaml;

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
    pub retry: Option<RawRetrySettings>,
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
    /// High availability: the cluster's database and this node. An `ha:` key with no value
    /// is an `ha` block without its settings (refused for its missing database), never the
    /// single host: a half-written cluster config must not run as a host that believes it
    /// is alone.
    #[serde(default, deserialize_with = "present_block")]
    pub ha: Option<RawHa>,
}

/// A block that is present counts as given, even when its value is empty (`ha:`).
fn present_block<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// `ha:` in the config.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHa {
    /// `postgres://USER@HOST:PORT/DATABASE?sslmode=...`, without a password.
    pub postgres: Option<String>,
    /// File holding the database password.
    pub password_file: Option<PathBuf>,
    /// This node's name; default the host name.
    pub node: Option<String>,
    /// How long a silent leader keeps the lead.
    pub lease: Option<String>,
    /// How late a fire missed during a takeover may be and still run.
    pub catch_up: Option<String>,
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
pub struct RawRetrySettings {
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
    /// `--ha-postgres` (or `DEPLOYD_HA_POSTGRES`).
    pub ha_postgres: Option<String>,
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
    /// The account's call limits: rate, burst, calls in flight.
    pub limits: CallLimits,
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
    /// High availability; `None`: the single-host daemon, no database.
    pub ha: Option<HaSettings>,
}

/// The largest `max_runs` accepted.
pub const MAX_RUNS_LIMIT: usize = 10_000;

/// A bad configuration (exit status 78): every problem found, each at its place in the
/// config file when it has one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub Issues);

/// The config file as YAML: its budget and how messages name it.
const CONFIG_FILE: yaml::Kind = yaml::Kind {
    noun: "the config file",
    max_bytes: MAX_CONFIG_BYTES,
    too_large: config_too_large,
};

fn config_too_large() -> String {
    format!("larger than {MAX_CONFIG_BYTES} bytes")
}

/// Collects the problems of one configuration, each placed at its key in the config file
/// (found by walking the parser's events) when the file has that key.
struct Problems<'a> {
    /// The config file, or `settings` when there is none.
    file: PathBuf,
    /// The config file's text, to place problems; `None` when there is no file.
    text: Option<&'a str>,
    issues: Vec<Issue>,
}

impl<'a> Problems<'a> {
    fn new(config: Option<&Path>, text: Option<&'a str>) -> Self {
        Self {
            file: config.map_or_else(|| PathBuf::from("settings"), Path::to_path_buf),
            text,
            issues: Vec::new(),
        }
    }

    /// A problem with a setting of the file. `field` is a dotted path (`retry.base`) or
    /// alternatives (`retry.base/retry.cap`: placed at the first one the file has). A setting
    /// the file lacks (`auth.iam.user: required`) is placed at its nearest enclosing block the
    /// file has (`auth.iam`).
    fn field(&mut self, field: &str, message: impl Into<String>) {
        let place = self.text.and_then(|text| {
            field
                .split('/')
                .find_map(|f| yaml::key_position(text, f))
                .or_else(|| {
                    let first = field.split('/').next().unwrap_or(field);
                    let mut block = first;
                    while let Some((parent, _)) = block.rsplit_once('.') {
                        if let Some(at) = yaml::key_position(text, parent) {
                            return Some(at);
                        }
                        block = parent;
                    }
                    None
                })
        });
        self.issues.push(match place {
            Some((line, column)) => Issue::new(&self.file, line, column, field, message),
            None => Issue::unplaced(&self.file, field, message),
        });
    }

    /// A problem with a flag's value: not placed in the file, whose line did not count.
    fn flag(&mut self, flag: &str, message: impl Into<String>) {
        self.issues.push(Issue::unplaced(&self.file, flag, message));
    }

    /// A setting from a flag when `from_flag`, else from the file.
    fn setting(&mut self, from_flag: bool, flag: &str, field: &str, message: impl Into<String>) {
        if from_flag {
            self.flag(flag, message);
        } else {
            self.field(field, message);
        }
    }

    /// A duration setting: its default when absent; its default and a problem (naming
    /// `field`) when it does not parse or lies outside its range in [`DURATION_RANGES`].
    fn duration(&mut self, field: &str, value: Option<String>, default: Duration) -> Duration {
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
                self.field(
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
                self.field(field, e);
                default
            }
        }
    }
}

/// The three folders: flags, then the file, then defaults (under `$STATE_DIRECTORY` when
/// systemd's `StateDirectory=` sets it, else relative to the working folder).
struct Folders {
    plans: PathBuf,
    results: PathBuf,
    state: PathBuf,
}

impl Folders {
    fn from(raw: &mut RawConfig, o: &Overrides, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let state_root = env("STATE_DIRECTORY").map(PathBuf::from);
        let under_root = |name: &str| {
            state_root
                .as_ref()
                .map_or_else(|| PathBuf::from(name), |s| s.join(name))
        };
        Self {
            plans: o
                .plans_dir
                .clone()
                .or(raw.plans_dir.take())
                .unwrap_or_else(|| PathBuf::from("plans")),
            results: o
                .results_dir
                .clone()
                .or(raw.results_dir.take())
                .unwrap_or_else(|| under_root("results")),
            state: o
                .state_dir
                .clone()
                .or(raw.state_dir.take())
                .unwrap_or_else(|| under_root("state")),
        }
    }
}

impl Settings {
    /// The executor these settings describe, calling through `client`: the one place a client,
    /// the account's limits and the executor are put together (the daemon, `exec`, a reload,
    /// the tests and the benchmarks all build it here).
    pub fn executor(&self, client: DeployClient) -> Executor {
        Executor::new(
            client,
            std::sync::Arc::new(Limits::of(self.limits)),
            self.executor.clone(),
        )
    }

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
            ConfigError(Issues(vec![Issue::unplaced(
                path,
                "",
                format!("cannot read the config file: {e}"),
            )]))
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
        let (raw, text) = parse_config(path, bytes)?;
        Self::validate(raw, overrides, env, Problems::new(Some(path), Some(&text)))
    }

    /// Validates a parsed config with the flags applied; reports every problem at once.
    /// `config` is only named in messages (problems are not placed at lines: see
    /// [`Settings::from_config_bytes`]).
    pub fn from_raw(
        raw: RawConfig,
        o: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
        config: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        Self::validate(raw, o, env, Problems::new(config, None))
    }

    fn validate(
        mut raw: RawConfig,
        o: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
        mut p: Problems<'_>,
    ) -> Result<Self, ConfigError> {
        let folders = Folders::from(&mut raw, o, env);
        let region = o.region.clone().or(raw.region.take());
        let endpoint = api_endpoint(
            (o.endpoint.clone(), raw.endpoint.take()),
            (region.as_deref(), o.region.is_some()),
            &mut p,
        );
        // A value from a flag or the environment is named as such, never placed at the file's
        // line, which did not count.
        let (project_id, from) = match (&o.project_id, raw.project_id.take()) {
            (Some(flag), _) => (Some(flag.clone()), Some("--project-id")),
            (None, Some(file)) => (Some(file), None),
            (None, None) => (env("CLOUD_SDK_PROJECT_ID"), Some("CLOUD_SDK_PROJECT_ID")),
        };
        if let Some(id) = &project_id
            && let Err(e) = crate::api::rules::check_id(id)
        {
            match from {
                Some(source) => p.flag(source, e),
                None => p.field("project_id", e),
            }
        }
        let limits = call_limits(&raw, o, &mut p);
        let max_runs = raw.max_runs;
        if let Some(n) = max_runs
            && !(1..=MAX_RUNS_LIMIT).contains(&n)
        {
            p.field(
                "max_runs",
                format!("{n} is outside 1..={MAX_RUNS_LIMIT} (runs alive at once)"),
            );
        }
        let shutdown_grace = p.duration(
            "shutdown_grace",
            raw.shutdown_grace.take(),
            Duration::from_secs(30),
        );
        let rescan_interval = p.duration(
            "rescan_interval",
            raw.rescan_interval.take(),
            Duration::from_secs(60),
        );
        let settle = p.duration("settle", raw.settle.take(), Duration::from_secs(10));
        let retry = retry_policy(raw.retry.take().unwrap_or_default(), &mut p);
        let client = client_options(raw.timeouts.take().unwrap_or_default(), &mut p);
        let auth = auth_settings(
            raw.auth.take().unwrap_or_default(),
            region.as_deref(),
            project_id.as_deref(),
            client,
            &mut p,
        );
        let keep_results = retention_policy(raw.keep_results.take(), &mut p);
        let history_offset_hint = history_offset(raw.history_utc_offset.as_deref(), &mut p);
        let ha = ha_settings(raw.ha.take(), o.ha_postgres.as_deref(), &mut p);

        if !p.issues.is_empty() {
            return Err(ConfigError(Issues(p.issues)));
        }
        Ok(Self {
            plans_dir: folders.plans,
            results_dir: folders.results,
            state_dir: folders.state.clone(),
            endpoint,
            limits,
            shutdown_grace,
            rescan_interval,
            executor: ExecutorSettings {
                retry,
                project_id,
                unknown_outcome: raw.unknown_outcome.unwrap_or_default(),
                settle,
                state_dir: Some(folders.state),
                forbidden_files: secret_paths(&auth, ha.as_ref(), env),
                history_offset_hint,
            },
            client,
            auth,
            keep_results,
            max_runs,
            ha,
        })
    }
}

/// `endpoint` (a URL) wins over `region` (the SDK's endpoint pattern); neither: `None`, for
/// `--emulator`. `(flag, file)` for the endpoint; `(region, from its flag)`.
fn api_endpoint(
    (flag, file): (Option<String>, Option<String>),
    (region, region_from_flag): (Option<&str>, bool),
    p: &mut Problems<'_>,
) -> Option<Endpoint> {
    let from_flag = flag.is_some();
    match (flag.or(file), region) {
        (Some(e), _) => Endpoint::parse(&e)
            .map_err(|e| p.setting(from_flag, "--endpoint", "endpoint", e.to_string()))
            .ok(),
        (None, Some(r)) => Endpoint::for_region(r)
            .map_err(|e| p.setting(region_from_flag, "--region", "region", e.to_string()))
            .ok(),
        (None, None) => None,
    }
}

/// `rate`, `burst`, `concurrency`. A value from a flag is named as the flag, so the message
/// does not point at a line of the config file that did not count.
fn call_limits(raw: &RawConfig, o: &Overrides, p: &mut Problems<'_>) -> CallLimits {
    let rate = o.rate.or(raw.rate).unwrap_or(CallLimits::default().rate());
    let burst = o
        .burst
        .or(raw.burst)
        .unwrap_or(CallLimits::default().burst());
    let concurrency = o
        .concurrency
        .or(raw.concurrency)
        .unwrap_or(CallLimits::default().concurrency());
    CallLimits::new(rate, burst, concurrency).unwrap_or_else(|problems| {
        for e in problems {
            let (flag, from_flag) = match e {
                LimitsError::Rate(_) => ("--rate", o.rate.is_some()),
                LimitsError::Burst(_) => ("--burst", o.burst.is_some()),
                LimitsError::Concurrency(_) => ("--concurrency", o.concurrency.is_some()),
            };
            p.setting(from_flag, flag, e.setting(), e.to_string());
        }
        CallLimits::default()
    })
}

/// `retry:`; its durations each in range, then checked against each other.
fn retry_policy(r: RawRetrySettings, p: &mut Problems<'_>) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let base = p.duration("retry.base", r.base, defaults.base());
    let cap = p.duration("retry.cap", r.cap, defaults.cap());
    let deadline = p.duration("retry.deadline", r.deadline, defaults.deadline());
    RetryPolicy::try_new(
        r.max_attempts.unwrap_or(defaults.max_attempts()),
        base,
        cap,
        deadline,
    )
    .unwrap_or_else(|e| {
        p.field(e.setting(), e.to_string());
        defaults
    })
}

/// `timeouts:`.
fn client_options(t: RawTimeouts, p: &mut Problems<'_>) -> ClientOptions {
    let defaults = ClientOptions::default();
    ClientOptions {
        connect_timeout: p.duration("timeouts.connect", t.connect, defaults.connect_timeout),
        request_timeout: p.duration("timeouts.request", t.request, defaults.request_timeout),
        pool_idle_timeout: defaults.pool_idle_timeout,
    }
}

/// `auth:`: the credential files as given, and `auth.iam` checked.
fn auth_settings(
    raw: RawAuth,
    region: Option<&str>,
    project_id: Option<&str>,
    client: ClientOptions,
    p: &mut Problems<'_>,
) -> AuthSettings {
    let iam = raw
        .iam
        .and_then(|iam| check_iam(iam, region, project_id, client, p));
    AuthSettings {
        token_file: raw.token_file,
        ak_file: raw.ak_file,
        sk_file: raw.sk_file,
        security_token_file: raw.security_token_file,
        iam,
    }
}

/// `keep_results:`; everything is kept when it is absent.
fn retention_policy(raw: Option<RawKeepResults>, p: &mut Problems<'_>) -> RetentionPolicy {
    let Some(k) = raw else {
        return RetentionPolicy::KEEP_ALL;
    };
    let age = k.age.map(|a| {
        parse_duration(&a).unwrap_or_else(|e| {
            p.field("keep_results.age", e);
            Duration::MAX
        })
    });
    RetentionPolicy::try_new(k.count, age).unwrap_or_else(|e| {
        p.field("keep_results", e.to_string());
        RetentionPolicy::KEEP_ALL
    })
}

/// `ha:` (or `--ha-postgres`, which alone turns it on). The node defaults to the host name.
fn ha_settings(raw: Option<RawHa>, flag: Option<&str>, p: &mut Problems<'_>) -> Option<HaSettings> {
    if raw.is_none() && flag.is_none() {
        return None;
    }
    let raw = raw.unwrap_or_default();
    let lease = p.duration("ha.lease", raw.lease, ha::config::DEFAULT_LEASE);
    let catch_up = p.duration("ha.catch_up", raw.catch_up, ha::config::DEFAULT_CATCH_UP);
    let node = match raw.node {
        Some(n) => n,
        None => ha::config::host_name().unwrap_or_default(),
    };
    if let Err(e) = ha::config::check_node(&node) {
        p.field("ha.node", e);
    }
    let database = match (flag, raw.postgres) {
        (Some(url), _) => Database::parse(url)
            .map_err(|e| p.flag("--ha-postgres", e))
            .ok(),
        (None, Some(url)) => Database::parse(&url)
            .map_err(|e| p.field("ha.postgres", e))
            .ok(),
        (None, None) => {
            p.field("ha.postgres", "required: the database the nodes share");
            None
        }
    }?;
    Some(HaSettings {
        database,
        password_file: raw.password_file.filter(|f| !f.as_os_str().is_empty()),
        node,
        lease,
        catch_up,
    })
}

/// `history_utc_offset:`, the operator's hint about the history's time zone.
fn history_offset(text: Option<&str>, p: &mut Problems<'_>) -> Option<chrono::FixedOffset> {
    let text = text?;
    let offset = parse_offset(text);
    if offset.is_none() {
        p.field(
            "history_utc_offset",
            format!("{text:?} is not a UTC offset from -12:00 to +14:00 like +08:00 or -05:30"),
        );
    }
    offset
}

/// The range of every duration setting of the config file (the README's table lists them).
/// `retry.*` are also checked against each other by [`RetryPolicy::try_new`].
pub const DURATION_RANGES: [(&str, Duration, Duration); 10] = [
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
    (
        "ha.lease",
        ha::config::LEASE_RANGE.0,
        ha::config::LEASE_RANGE.1,
    ),
    ("ha.catch_up", Duration::ZERO, ha::config::MAX_CATCH_UP),
];

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
    p: &mut Problems<'_>,
) -> Option<IamConfig> {
    let mut ok = true;
    let mut required = |field: &str, value: Option<String>| {
        let value = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if value.is_none() {
            p.field(field, "required");
            ok = false;
        }
        value.unwrap_or_default()
    };
    let domain = required("auth.iam.domain", raw.domain);
    let user = required("auth.iam.user", raw.user);
    let password_file = raw.password_file.filter(|p| !p.as_os_str().is_empty());
    if password_file.is_none() {
        p.field("auth.iam.password_file", "required");
        ok = false;
    }
    let project = match (raw.project_id, raw.project_name) {
        (Some(_), Some(_)) => {
            p.field("auth.iam", "give project_id or project_name, not both");
            None
        }
        (Some(id), None) => match crate::api::rules::check_id(&id) {
            Ok(()) => Some(ProjectScope::Id(id)),
            Err(e) => {
                p.field("auth.iam.project_id", e);
                None
            }
        },
        (None, Some(name)) if !name.trim().is_empty() => Some(ProjectScope::Name(name)),
        (None, Some(_)) => {
            p.field("auth.iam.project_name", "must not be empty");
            None
        }
        (None, None) => match (project_id, region) {
            (Some(id), _) => Some(ProjectScope::Id(id.to_owned())),
            (None, Some(r)) => Some(ProjectScope::Name(r.to_owned())),
            (None, None) => {
                p.field(
                    "auth.iam",
                    "give project_id or project_name (or set project_id or region)",
                );
                None
            }
        },
    };
    let endpoint = match (raw.endpoint, region) {
        (Some(e), _) => Endpoint::parse(&e)
            .map_err(|e| p.field("auth.iam.endpoint", e.to_string()))
            .ok(),
        (None, Some(r)) => default_endpoint(r)
            .map_err(|e| p.field("auth.iam.endpoint", e.to_string()))
            .ok(),
        (None, None) => {
            p.field("auth.iam.endpoint", "required when no region is set");
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
fn secret_paths(
    auth: &AuthSettings,
    ha: Option<&HaSettings>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<PathBuf> {
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
    .chain(auth.iam.as_ref().map(|iam| iam.password_file.clone()))
    .chain(ha.and_then(|ha| ha.password_file.clone()));
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

/// Parses the config file's bytes (`Ok` with the defaults for an empty file); a problem is
/// placed at its line and column with its field path.
fn parse_config(path: &Path, bytes: &[u8]) -> Result<(RawConfig, String), ConfigError> {
    let fail = |line: usize, column: usize, message: String| {
        ConfigError(Issues(vec![Issue::new(path, line, column, "", message)]))
    };
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(fail(1, 1, config_too_large()));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
        let (line, column) = yaml::position_after(valid);
        fail(line, column, "not UTF-8 text".into())
    })?;
    if text.trim().is_empty() {
        return Ok((RawConfig::default(), String::new()));
    }
    let raw =
        serde_saphyr::from_str_with_options::<Option<RawConfig>>(text, yaml::options(&CONFIG_FILE))
            .map_err(|e| ConfigError(Issues(vec![yaml::issue(path, text, &e, &CONFIG_FILE)])))?
            .unwrap_or_default();
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
        assert_eq!(s.limits, CallLimits::new(5.0, 1, 8).expect("valid"));
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
        assert_eq!(s.limits.rate(), 9.0);
        assert_eq!(s.limits.concurrency(), 3);
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
mod ha_tests {
    use super::*;

    fn load(yaml: &str, o: &Overrides) -> Result<Settings, String> {
        Settings::from_config_bytes(Path::new("c.yaml"), yaml.as_bytes(), o, &|_| None)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn ha_is_off_without_a_database_and_defaults_follow_the_contract() {
        assert!(
            load("rate: 5\n", &Overrides::default())
                .expect("valid")
                .ha
                .is_none()
        );
        let s = load(
            "ha:\n  postgres: postgres://deployd@db:5432/deployd?sslmode=verify-full\n  node: web-1\n",
            &Overrides::default(),
        )
        .expect("valid");
        let ha = s.ha.expect("on");
        assert_eq!(ha.node, "web-1");
        assert_eq!(ha.lease, Duration::from_secs(15));
        assert_eq!(ha.catch_up, Duration::from_secs(300));
        assert_eq!(ha.database.sslmode, crate::ha::config::SslMode::VerifyFull);
        // The flag alone turns it on; the node is the host's name.
        let o = Overrides {
            ha_postgres: Some("postgres://deployd@db/deployd".into()),
            ..Default::default()
        };
        let ha = load("", &o).expect("valid").ha.expect("on");
        assert_eq!(Some(ha.node), crate::ha::config::host_name());
    }

    #[test]
    fn ha_mistakes_are_placed_and_never_show_a_password() {
        let e = load(
            "rate: 5\nha:\n  postgres: postgres://u:hunter2@db/d\n  lease: 1s\n  node: two words\n",
            &Overrides::default(),
        )
        .expect_err("bad");
        for needle in [
            "c.yaml:3:3: ha.postgres: holds a password",
            "c.yaml:4:3: ha.lease: must be from 5s to 5m",
            "c.yaml:5:3: ha.node: holds ' '",
        ] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
        assert!(!e.contains("hunter2"), "{e}");
        let e = load("ha: {node: a}\n", &Overrides::default()).expect_err("no database");
        assert!(e.contains("ha.postgres: required"), "{e}");
        let o = Overrides {
            ha_postgres: Some("mysql://db".into()),
            ..Default::default()
        };
        let e = load("", &o).expect_err("bad flag");
        assert!(e.starts_with("c.yaml: --ha-postgres: "), "{e}");
    }

    #[test]
    fn plans_cannot_read_the_database_password() {
        let s = load(
            "ha: {postgres: 'postgres://u@db/d', password_file: /etc/deployd/pg-password}\n",
            &Overrides::default(),
        )
        .expect("valid");
        assert!(
            s.executor
                .forbidden_files
                .contains(&PathBuf::from("/etc/deployd/pg-password"))
        );
    }
}

#[cfg(test)]
mod placement_tests {
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
        // Out-of-range values are placed too, in block and in flow style.
        std::fs::write(
            &path,
            "burst: 2\nrate: 1e-20\nretry:\n  cap: 25h\ntimeouts: {connect: 1ms, request: 2s}\n",
        )
        .expect("write");
        let text = super::Settings::load(Some(&path), &super::Overrides::default(), &|_| None)
            .expect_err("bad")
            .to_string();
        for needle in [
            "2:1: rate: must be",
            "4:3: retry.cap: must be",
            "5:12: timeouts.connect: must be",
        ] {
            assert!(
                text.contains(&format!("{}:{needle}", path.display())),
                "{text}"
            );
        }
    }

    /// A YAML mistake is placed and names the field, like a plan's.
    #[test]
    fn parse_errors_are_placed_with_their_field() {
        let path = std::path::Path::new("/etc/deployd/config.yaml");
        let parse = |yaml: &str| {
            super::Settings::from_config_bytes(
                path,
                yaml.as_bytes(),
                &super::Overrides::default(),
                &|_| None,
            )
            .expect_err(yaml)
            .to_string()
        };
        let text = parse("rate: 5\nretry:\n  bse: 1s\n");
        assert!(
            text.starts_with("/etc/deployd/config.yaml:3:3: retry.bse: unknown field `bse`"),
            "{text}"
        );
        let text = parse("rate: 5\nburst: many\n");
        assert!(
            text.starts_with("/etc/deployd/config.yaml:2:8: burst: "),
            "{text}"
        );
        let text = parse("rate: 5\n---\nrate: 6\n");
        assert!(
            text.contains("The config file holds a single YAML document"),
            "{text}"
        );
        // Comments only, or null: the defaults.
        for empty in ["# nothing yet\n", "~\n", ""] {
            super::Settings::from_config_bytes(
                path,
                empty.as_bytes(),
                &super::Overrides::default(),
                &|_| None,
            )
            .expect(empty);
        }
    }

    /// A flag's value is not placed in the file.
    #[test]
    fn flag_problems_have_no_place() {
        let path = std::path::Path::new("c.yaml");
        let o = super::Overrides {
            rate: Some(0.0),
            ..Default::default()
        };
        let text = super::Settings::from_config_bytes(path, b"rate: 5\n", &o, &|_| None)
            .expect_err("bad")
            .to_string();
        assert!(text.starts_with("c.yaml: --rate: must be"), "{text}");
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
