//! The `deployd` binary: parse the command line, set up logging, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use deployd::cli::{Cli, Command};
use deployd::commands::{self, Exit};

#[tokio::main]
async fn main() -> ExitCode {
    deployd::telemetry::install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    let exit = match cli.command {
        Command::Run(args) => {
            deployd::telemetry::init(args.common.log_level("info"));
            commands::run::run(args).await
        }
        Command::Exec(args) => {
            deployd::telemetry::init(args.common.log_level("warn"));
            commands::exec::exec(args).await
        }
        Command::Check(args) => commands::check::check(&args),
        Command::Next(args) => commands::next::next(&args),
        Command::Emulator(args) => {
            deployd::telemetry::init("info");
            commands::emulator::emulator(args).await
        }
        Command::Schema => commands::schema::schema(),
        Command::Status(args) => commands::status::status(&args).await,
        Command::Generate(args) => commands::generate::generate(&args),
    };
    exit.into()
}
