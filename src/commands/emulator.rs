//! `deployd emulator --listen ADDR`: the emulator in the foreground until SIGTERM/SIGINT.

use super::Exit;
use crate::emulator::EmulatorArgs;

/// Runs the emulator.
pub async fn emulator(args: EmulatorArgs) -> Exit {
    let listen = args.listen;
    match crate::emulator::serve_until(args.into_config(), listen, async {
        crate::signals::terminate().await;
    })
    .await
    {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("deployd emulator: cannot serve on {listen}: {e}");
            Exit::Config
        }
    }
}
