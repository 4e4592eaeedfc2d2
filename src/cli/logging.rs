//! Logging set-up. With RUST_LOG set (and for the long-running `serve` and `pool monitor`),
//! tracing-subscriber's formatter as before. Otherwise a short command only ever prints
//! warnings and errors, so it gets a subscriber that does just that: building the formatter's
//! span registry was a tenth of the instructions of a call such as `rcx-dm snap` (README,
//! issue 17), for spans nothing records at that level.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::LevelFilter;

/// Installs the global subscriber. `long_running`: the full formatter (timestamps, spans) with
/// `default` as the filter when RUST_LOG is unset.
pub(super) fn init(long_running: bool, default: &str) {
    if long_running || std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into()))
            .with_writer(std::io::stderr)
            .init();
        return;
    }
    // Dependencies that use the `log` crate (devicemapper) warn through it.
    let _ = tracing_log::LogTracer::init_with_filter(tracing_log::log::LevelFilter::Warn);
    let _ = tracing::subscriber::set_global_default(Warnings);
}

/// WARN and ERROR events to stderr, one line each: `rcx-dm: warning: MESSAGE key=value ...`.
struct Warnings;

impl Subscriber for Warnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are never recorded; tracing requires a non-zero id.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line(String::new(), String::new());
        event.record(&mut line);
        let what = if *event.metadata().level() == Level::ERROR { "error" } else { "warning" };
        eprintln!("rcx-dm: {what}: {}{}", line.0, line.1);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// The message, then the other fields as ` key=value`.
struct Line(String, String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.0, "{value:?}");
            }
            // A `log` record's metadata, carried as fields by LogTracer.
            n if n.starts_with("log.") => {}
            n => {
                let _ = write!(self.1, " {n}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.0.push_str(value),
            n if n.starts_with("log.") => {}
            n => {
                let _ = write!(self.1, " {n}={value}");
            }
        }
    }
}
