//! Logging: a human format on a terminal; under systemd (`JOURNAL_STREAM` set) no timestamps,
//! no colours, and a `<N>` syslog priority prefix the journal turns into the entry's level.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the global subscriber. `default_level` applies unless `RUST_LOG` is set.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(JournalFormat)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init();
    }
}

/// Replaces the default panic hook: a panic (always a bug) is logged through `tracing` at
/// error level, so under systemd it reaches the journal as an error, then the process goes on
/// unwinding and exits as before (101 from the main thread).
///
/// Only what the code wrote is logged: the source location, and of the message what the code
/// wrote. A message formatted at run time may hold anything (the value of an `Err`, a secret),
/// so only a string literal (`panic!("...")`) is logged whole; of a formatted message, only the
/// part before its first `": "`, which is where `Result::expect("...")`, `unwrap()` and the
/// standard library's own messages put the data (`called `Result::unwrap()` on an `Err`
/// value: ...`, `cannot convert float seconds to Duration: ...`). A formatted message without
/// `": "` is left out. Without a subscriber (`check`, `next`, ...) the line goes to stderr.
/// The default hook is not called: it would print the whole message.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let written = match payload.downcast_ref::<&'static str>() {
            Some(literal) => Some(*literal),
            None => payload
                .downcast_ref::<String>()
                .and_then(|m| m.split_once(": "))
                .map(|(head, _)| head),
        };
        let line = panic_line(written, info.location(), std::thread::current().name());
        let subscribed =
            tracing::dispatcher::get_default(|d| !d.is::<tracing::subscriber::NoSubscriber>());
        if subscribed {
            tracing::error!("{line}");
        } else {
            eprintln!("deployd: {line}");
        }
    }));
}

/// The line logged for a panic (see [`install_panic_hook`]).
fn panic_line(
    literal: Option<&str>,
    location: Option<&std::panic::Location<'_>>,
    thread: Option<&str>,
) -> String {
    let at = location.map_or_else(
        || "an unknown location".to_string(),
        |l| format!("{}:{}:{}", l.file(), l.line(), l.column()),
    );
    let message =
        literal.unwrap_or("(the message was formatted at run time and may hold data: not logged)");
    format!(
        "panic (a bug in deployd, please report it) in thread {} at {at}: {message}",
        thread.unwrap_or("<unnamed>")
    )
}

/// `<priority>span{fields}: message fields`, one line per event.
struct JournalFormat;

/// The syslog priority the journal reads from a `<N>` prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Formatted into a buffer first: the journal splits a message on newlines, so every
        // line gets the priority prefix (a multi-line error stays an error).
        let mut line = String::new();
        let mut buf = format::Writer::new(&mut line);
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(buf, "{}", span.name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(buf, "{{{fields}}}")?;
                }
                write!(buf, ": ")?;
            }
        }
        ctx.field_format().format_fields(buf.by_ref(), event)?;
        writeln!(
            writer,
            "{}",
            prefix_lines(&line, priority(event.metadata().level()))
        )
    }
}

/// Every line of `text` with a `<N>` priority prefix.
fn prefix_lines(text: &str, priority: u8) -> String {
    text.lines()
        .map(|l| format!("<{priority}>{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_a_multi_line_message_keeps_its_priority() {
        assert_eq!(
            prefix_lines("bad configuration:\na: x\nb: y", 3),
            "<3>bad configuration:\n<3>a: x\n<3>b: y"
        );
        assert_eq!(prefix_lines("one", 6), "<6>one");
    }

    #[test]
    fn panic_lines_keep_to_what_the_code_wrote() {
        let here = std::panic::Location::caller();
        let line = panic_line(Some("index out of range"), Some(here), Some("main"));
        assert!(
            line.contains("in thread main at src/telemetry.rs:"),
            "{line}"
        );
        assert!(line.ends_with(": index out of range"), "{line}");
        let line = panic_line(None, None, None);
        assert!(line.contains("not logged"), "{line}");
    }

    /// Captures what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 10: the hook itself, on real panics: logged at error level with the location; a
    /// literal message is kept, a formatted one (which may hold a secret) is not.
    #[test]
    fn the_hook_logs_panics_at_error_level_without_formatted_messages() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            install_panic_hook();
            let secret = String::from("hunter2-secret");
            let results: Vec<bool> = [
                std::panic::catch_unwind(|| {
                    let r: Result<(), String> = std::hint::black_box(Err(secret.clone()));
                    r.expect("the token answer");
                }),
                std::panic::catch_unwind(|| panic!("a literal message")),
                std::panic::catch_unwind(|| panic!("{}", secret.clone())),
                std::panic::catch_unwind(|| {
                    let _ = std::time::Duration::from_secs_f64(1e20);
                }),
            ]
            .iter()
            .map(Result::is_err)
            .collect();
            let _ = std::panic::take_hook();
            assert_eq!(results, [true; 4]);
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.matches("ERROR").count(), 4, "{text}");
        assert!(text.contains("src/telemetry.rs:"), "{text}");
        assert!(text.contains(": the token answer\n"), "{text}");
        assert!(text.contains(": a literal message\n"), "{text}");
        assert!(text.contains("may hold data: not logged"), "{text}");
        assert!(
            text.contains(": cannot convert float seconds to Duration\n"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn journal_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }
}
