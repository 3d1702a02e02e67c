//! The commands behind the CLI, each returning an exit status. Shared set-up (settings,
//! credentials, the embedded emulator) lives here.

pub mod check;
pub mod cluster;
pub mod emulator;
pub mod exec;
pub mod generate;
pub mod next;
pub mod run;
pub mod schema;
pub mod status;

use std::process::ExitCode;

use anyhow::Context;

use crate::api::client::{DeployClient, Endpoint};
use crate::api::credentials::{Credentials, credentials_from};
use crate::cli::Common;
use crate::emulator::{Emulator, EmulatorConfig};
use crate::executor::Executor;
use crate::secret::Secret;
use crate::settings::{ConfigError, Settings};

/// Exit statuses of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything went as asked.
    Ok = 0,
    /// Some plan invalid, some task failed.
    Failed = 1,
    /// Bad command line.
    Usage = 2,
    /// Bad configuration (EX_CONFIG).
    Config = 78,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// The process environment, for code that takes `env` as a function.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Loads settings from the config file and flags, printing the errors on failure.
pub fn load_settings(common: &Common) -> Result<Settings, ConfigError> {
    Settings::load(
        common.folders.config.as_deref(),
        &common.overrides(),
        &process_env,
    )
}

/// An executor ready to call the API, and the embedded emulator when `--emulator` was given
/// (kept alive as long as the executor is used).
pub struct Target {
    /// Runs plans.
    pub executor: Executor,
    /// The embedded emulator, if any.
    pub emulator: Option<Emulator>,
}

/// Builds the client (credentials, endpoint, limits), starting the embedded emulator for
/// `--emulator`. Errors here are configuration errors.
pub async fn connect(settings: &mut Settings, use_emulator: bool) -> anyhow::Result<Target> {
    let (endpoint, credentials, emulator) = if use_emulator {
        let token = format!("emulator-{:032x}", rand::random::<u128>());
        let config = EmulatorConfig {
            tokens: vec![Secret::new(token.clone())],
            ..EmulatorConfig::default()
        };
        if settings.executor.project_id.is_none() {
            settings.executor.project_id = Some(config.project_id.clone());
        }
        let emulator = Emulator::start(config, "127.0.0.1:0".parse().expect("a valid address"))
            .await
            .context("cannot start the embedded emulator")?;
        tracing::info!("using the embedded emulator at {}", emulator.base_url());
        let endpoint = Endpoint::parse(&emulator.base_url()).context("the emulator's address")?;
        (
            endpoint,
            Credentials::Token(Secret::new(token)),
            Some(emulator),
        )
    } else {
        let endpoint = settings.endpoint.clone().context(
            "no API endpoint: pass --endpoint URL or --region ID (or endpoint/region in the config), or --emulator",
        )?;
        let credentials = credentials_from(
            &process_env,
            &settings.auth,
            settings.executor.project_id.as_deref(),
        )?;
        (endpoint, credentials, None)
    };
    tracing::info!(
        auth = credentials.method_name(),
        endpoint = endpoint.as_str(),
        "API client ready"
    );
    let client = DeployClient::new(endpoint, credentials, settings.client)?;
    Ok(Target {
        executor: settings.executor(client),
        emulator,
    })
}
