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
    fn journal_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }
}
