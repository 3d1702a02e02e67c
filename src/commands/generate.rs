//! `deployd generate completions SHELL | man [--out DIR]` (hidden): shell completion scripts
//! and man pages generated from the clap definitions, so that they never drift from the real
//! options. Packagers run it after the build (`debian/build-deb.sh`); users of
//! `cargo install` can run it themselves.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use super::Exit;
use crate::cli::{Cli, Generate, GenerateArgs};

/// The binary's name in completions and man pages.
const BIN: &str = "deployd";

/// Runs `deployd generate`.
pub fn generate(args: &GenerateArgs) -> Exit {
    let result = match &args.what {
        Generate::Completions { shell, out: None } => {
            let mut out = std::io::stdout().lock();
            clap_complete::generate(*shell, &mut Cli::command(), BIN, &mut out);
            out.flush()
        }
        Generate::Completions {
            shell,
            out: Some(dir),
        } => ensure_dir(dir)
            .and_then(|()| clap_complete::generate_to(*shell, &mut Cli::command(), BIN, dir))
            .map(|path| println!("{}", path.display())),
        Generate::Man { out: None } => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .and_then(|()| out.flush())
        }
        Generate::Man { out: Some(dir) } => ensure_dir(dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
            .map(|()| println!("{}", dir.display())),
    };
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("deployd: cannot write: {e}");
            Exit::Failed
        }
    }
}

fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}
