//! The command line (clap derive): `run`, `check`, `exec`, `next`, `status`, `emulator`,
//! `schema`, the hidden `generate` (completions and man pages for packagers), and the options
//! they share. Parsing only: no files read, nothing built here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::settings::Overrides;

/// deployd: declarative batch deploys on Huawei Cloud CodeArts Deploy.
#[derive(Debug, Parser)]
#[command(name = "deployd", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: watch the plans folder, fire schedules, run plans, write results.
    Run(RunArgs),
    /// Validate plan files or folders; print every error as FILE:LINE:COL: field: message.
    Check(CheckArgs),
    /// Run one plan now, in the foreground, and write its result file.
    Exec(ExecArgs),
    /// Print the next fire times of scheduled plans, in the plan's zone and in UTC.
    Next(NextArgs),
    /// Run a local CodeArts Deploy server (for trying plans and for tests).
    Emulator(crate::emulator::EmulatorArgs),
    /// Print the JSON Schema of the plan format.
    Schema,
    /// Show each plan's last run and next fire, from the results, state and plans folders.
    Status(StatusArgs),
    /// Write shell completions or man pages generated from these definitions (for packagers).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

/// Options shared by the commands that talk to the API.
#[derive(Debug, Clone, Default, Args)]
pub struct Common {
    /// The config file and the folders.
    #[command(flatten)]
    pub folders: Folders,
    /// API base URL (https://..., or http:// to a loopback address).
    #[arg(long, value_name = "URL", conflicts_with = "region")]
    pub endpoint: Option<String>,
    /// Region id: the endpoint becomes https://codearts-deploy.REGION.myhuaweicloud.com.
    #[arg(long, value_name = "ID")]
    pub region: Option<String>,
    /// Project id (32 letters and digits), for history lookups [env: CLOUD_SDK_PROJECT_ID].
    #[arg(long, value_name = "ID")]
    pub project_id: Option<String>,
    /// Start calls per second, all plans together [default: 5].
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Calls allowed at once after an idle period [default: 1].
    #[arg(long, value_name = "N")]
    pub burst: Option<u32>,
    /// Calls in flight, all plans together [default: 8].
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Run against an embedded emulator instead of the cloud (no credentials needed).
    #[arg(long, conflicts_with_all = ["endpoint", "region"])]
    pub emulator: bool,
    /// More logs (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Common {
    /// The flags that override the config file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            project_id: self.project_id.clone(),
            rate: self.rate,
            burst: self.burst,
            concurrency: self.concurrency,
            ..self.folders.overrides()
        }
    }

    /// The log level from `-v`, above `base`.
    pub fn log_level(&self, base: &'static str) -> &'static str {
        match self.verbose {
            0 => base,
            1 => "debug",
            _ => "trace",
        }
    }
}

/// `deployd run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Shared options.
    #[command(flatten)]
    pub common: Common,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `deployd check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Plan files or folders.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Treat warnings (such as a plain-text encrypt value) as errors.
    #[arg(long)]
    pub deny_warnings: bool,
}

/// `deployd exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The plan file to run.
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// Shared options.
    #[command(flatten)]
    pub common: Common,
}

/// The config file and folder options (part of [`Common`]; alone for commands that only read
/// the folders).
#[derive(Debug, Clone, Default, Args)]
pub struct Folders {
    /// Config file (YAML). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Plans folder [default: plans].
    #[arg(long, value_name = "DIR")]
    pub plans_dir: Option<PathBuf>,
    /// Result files folder [default: results, or $STATE_DIRECTORY/results].
    #[arg(long, value_name = "DIR")]
    pub results_dir: Option<PathBuf>,
    /// State folder [default: state, or $STATE_DIRECTORY/state].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// High availability: the PostgreSQL database the nodes share
    /// (postgres://USER@HOST:PORT/DATABASE?sslmode=verify-full; no password in it).
    #[arg(long, value_name = "URL", env = "DEPLOYD_HA_POSTGRES")]
    pub ha_postgres: Option<String>,
}

impl Folders {
    /// The flags that override the config file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            plans_dir: self.plans_dir.clone(),
            results_dir: self.results_dir.clone(),
            state_dir: self.state_dir.clone(),
            ha_postgres: self.ha_postgres.clone(),
            ..Overrides::default()
        }
    }
}

/// `deployd status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The folders to read.
    #[command(flatten)]
    pub folders: Folders,
}

/// `deployd generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to generate.
    #[command(subcommand)]
    pub what: Generate,
}

/// What `deployd generate` writes.
#[derive(Debug, Subcommand)]
pub enum Generate {
    /// A shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
        /// Write the file here (named as the shell expects: deployd.bash, _deployd,
        /// deployd.fish, ...) instead of printing it.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Man pages: deployd.1, and with --out one page per command (deployd-run.1, ...).
    Man {
        /// Write the pages here instead of printing deployd.1.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// `deployd next`.
#[derive(Debug, Args)]
pub struct NextArgs {
    /// Plan files or folders.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// How many fire times per plan.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub count: u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_common_flags() {
        let cli = Cli::try_parse_from([
            "deployd",
            "exec",
            "p.yaml",
            "--rate",
            "50",
            "--concurrency",
            "50",
            "--emulator",
        ])
        .expect("parses");
        let Command::Exec(args) = cli.command else {
            panic!("exec expected")
        };
        assert_eq!(args.common.rate, Some(50.0));
        assert!(args.common.emulator);
        assert!(
            Cli::try_parse_from([
                "deployd",
                "exec",
                "p.yaml",
                "--emulator",
                "--endpoint",
                "https://x"
            ])
            .is_err()
        );
    }

    #[test]
    fn status_takes_the_folder_flags_only() {
        let cli = Cli::try_parse_from(["deployd", "status", "--json", "--results-dir", "r"])
            .expect("parses");
        let Command::Status(args) = cli.command else {
            panic!("status expected")
        };
        assert!(args.json);
        assert_eq!(args.folders.overrides().results_dir, Some("r".into()));
        assert!(Cli::try_parse_from(["deployd", "status", "--emulator"]).is_err());
    }

    #[test]
    fn generate_is_hidden_but_parses() {
        let help = Cli::command().render_help().to_string();
        assert!(
            help.contains("status") && !help.contains("generate"),
            "{help}"
        );
        let cli = Cli::try_parse_from(["deployd", "generate", "completions", "zsh", "--out", "d"])
            .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Generate(GenerateArgs {
                what: Generate::Completions {
                    shell: clap_complete::Shell::Zsh,
                    out: Some(_)
                }
            })
        ));
        assert!(Cli::try_parse_from(["deployd", "generate", "completions", "tcsh"]).is_err());
    }
}
