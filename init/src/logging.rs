//! Logging for PID 1 and hosted nodes, on `tracing`.
//!
//! Every event goes to the console (stderr, which the kernel connected to
//! `/dev/console` for PID 1) with a timestamp in seconds since boot, like the kernel's
//! own lines; once `/dev` is mounted, PID 1 also writes each event as one record to
//! `/dev/kmsg`, so the kernel log holds the whole story. Events inside a `service`
//! span are also kept, per service, in a ring of recent lines that status reports
//! and the machine API show.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use nix::time::{ClockId, clock_gettime};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The filter used when none is given: our info, the netlink crates' warnings.
pub const DEFAULT_FILTER: &str = "info,netlink_proto=warn,rtnetlink=warn";

/// How many recent lines are kept per service.
pub const SERVICE_LOG_LINES: usize = 500;

/// Seconds since boot, the clock of the kernel's own log lines.
pub fn uptime() -> std::time::Duration {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(std::time::Duration::from)
        .unwrap_or_default()
}

/// Formats timestamps as `[    1.234567]`, like the kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct UptimeTimer;

impl FormatTime for UptimeTimer {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let t = uptime();
        write!(w, "[{:>5}.{:06}]", t.as_secs(), t.subsec_micros())
    }
}

/// Where `/dev/kmsg` records go once it can be opened.
#[derive(Clone, Default)]
pub struct KmsgSink {
    file: Arc<OnceLock<File>>,
}

impl KmsgSink {
    /// Starts copying events to `/dev/kmsg` (call once `/dev` is mounted).
    pub fn open(&self) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open("/dev/kmsg")?;
        let _ = self.file.set(file);
        Ok(())
    }
}

/// One event's worth of output to `/dev/kmsg`: a single `write(2)` is a single record.
pub struct KmsgRecord<'a> {
    file: Option<&'a File>,
    priority: u8,
}

impl Write for KmsgRecord<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(mut file) = self.file {
            let text = String::from_utf8_lossy(buf);
            // Facility "user" (1 << 3) plus the syslog severity.
            let record = format!("<{}>cairn: {}", 8 + self.priority, text.trim_end());
            // A full log buffer must not become an error in the caller.
            let _ = file.write(record.as_bytes());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for KmsgSink {
    type Writer = KmsgRecord<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        KmsgRecord {
            file: self.file.get(),
            priority: 6,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        // Errors go in as warnings: the kernel echoes records more severe than its
        // console level (4 after boot) to the console, where we already printed them,
        // and the echo can land in the middle of our own line. The text keeps "ERROR".
        let priority = match *meta.level() {
            Level::ERROR | Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        KmsgRecord {
            file: self.file.get(),
            priority,
        }
    }
}

/// Recent log lines of every service, shared between the logger and status readers,
/// with a live feed for followers (`cairnctl logs -f`).
#[derive(Clone, Default)]
pub struct ServiceLogs {
    rings: Arc<Mutex<HashMap<String, Ring>>>,
}

struct Ring {
    lines: VecDeque<String>,
    feed: broadcast::Sender<String>,
}

impl Ring {
    fn new() -> Self {
        Self {
            lines: VecDeque::new(),
            feed: broadcast::channel(SERVICE_LOG_LINES).0,
        }
    }

    fn tail(&self, n: usize) -> Vec<String> {
        self.lines
            .iter()
            .skip(self.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

impl ServiceLogs {
    /// Appends a line to a service's ring, dropping the oldest beyond the capacity.
    pub fn push(&self, service: &str, line: String) {
        let Ok(mut rings) = self.rings.lock() else {
            return;
        };
        let ring = rings.entry(service.to_owned()).or_insert_with(Ring::new);
        if ring.lines.len() == SERVICE_LOG_LINES {
            ring.lines.pop_front();
        }
        // No follower is not an error.
        let _ = ring.feed.send(line.clone());
        ring.lines.push_back(line);
    }

    /// The last `n` lines of a service, oldest first.
    pub fn tail(&self, service: &str, n: usize) -> Vec<String> {
        let Ok(rings) = self.rings.lock() else {
            return Vec::new();
        };
        rings
            .get(service)
            .map(|ring| ring.tail(n))
            .unwrap_or_default()
    }

    /// The last `n` lines and a feed of every line after them, with nothing lost or
    /// repeated between the two.
    pub fn follow(&self, service: &str, n: usize) -> (Vec<String>, broadcast::Receiver<String>) {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let ring = rings.entry(service.to_owned()).or_insert_with(Ring::new);
        (ring.tail(n), ring.feed.subscribe())
    }
}

/// The name recorded on a `service` span.
struct ServiceName(String);

/// Copies events that happen inside a `service{name=…}` span into [`ServiceLogs`].
pub struct ServiceLogLayer {
    logs: ServiceLogs,
}

impl<S> Layer<S> for ServiceLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "service" {
            return;
        }
        let mut visitor = FieldText::default();
        attrs.record(&mut visitor);
        if let (Some(name), Some(span)) = (visitor.name, ctx.span(id)) {
            span.extensions_mut().insert(ServiceName(name));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            if let Some(ServiceName(name)) = span.extensions().get::<ServiceName>() {
                let mut visitor = FieldText::default();
                event.record(&mut visitor);
                let t = uptime();
                let line = format!(
                    "[{:>5}.{:06}] {} {}",
                    t.as_secs(),
                    t.subsec_micros(),
                    event.metadata().level(),
                    visitor.text
                );
                self.logs.push(name, line);
                return;
            }
        }
    }
}

/// Renders an event's fields as `message key=value …`, and picks out a `name` field.
#[derive(Default)]
struct FieldText {
    text: String,
    name: Option<String>,
}

impl Visit for FieldText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            if field.name() == "name" {
                self.name = Some(format!("{value:?}").trim_matches('"').to_owned());
            }
            let _ = write!(self.text, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.push_str(value);
        } else {
            if field.name() == "name" {
                self.name = Some(value.to_owned());
            }
            let _ = write!(self.text, " {}={value}", field.name());
        }
    }
}

/// What the logger hands back: the kmsg switch and the per-service rings.
#[derive(Clone, Default)]
pub struct LogHandles {
    /// Open it once `/dev` is mounted (PID 1 only).
    pub kmsg: KmsgSink,
    /// Recent lines per service.
    pub services: ServiceLogs,
}

/// Installs the process-wide logger. `filter` uses `tracing`'s target syntax
/// (`info,cairn_net=debug`); an invalid filter falls back to [`DEFAULT_FILTER`] and
/// says so. Calling it twice keeps the first logger.
pub fn init(filter: &str) -> LogHandles {
    let handles = LogHandles::default();
    let (targets, bad_filter) = match Targets::from_str(filter) {
        Ok(targets) => (targets, None),
        Err(err) => (
            Targets::from_str(DEFAULT_FILTER).unwrap_or_default(),
            Some(err.to_string()),
        ),
    };
    let console = tracing_subscriber::fmt::layer()
        .with_timer(UptimeTimer)
        .with_target(false)
        .with_writer(io::stderr);
    let kmsg = tracing_subscriber::fmt::layer()
        .without_time()
        .with_level(true)
        .with_target(false)
        .with_writer(handles.kmsg.clone());
    let services = ServiceLogLayer {
        logs: handles.services.clone(),
    };
    let installed = tracing_subscriber::registry()
        .with(
            console
                .and_then(kmsg)
                .and_then(services)
                .with_filter(targets),
        )
        .try_init();
    if installed.is_ok()
        && let Some(err) = bad_filter
    {
        tracing::warn!(filter, error = %err, "invalid log filter; using {DEFAULT_FILTER}");
    }
    handles
}

/// Logs panics through `tracing` (so they land in the console, `/dev/kmsg` and the
/// ring of the service that panicked) instead of raw stderr.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%location, "panic: {message}");
    }));
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-text panic payload)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ring_keeps_the_newest_lines() {
        let logs = ServiceLogs::default();
        for i in 0..(SERVICE_LOG_LINES + 5) {
            logs.push("svc", format!("line {i}"));
        }
        let tail = logs.tail("svc", 2);
        assert_eq!(
            tail,
            [
                format!("line {}", SERVICE_LOG_LINES + 3),
                format!("line {}", SERVICE_LOG_LINES + 4)
            ]
        );
        assert_eq!(logs.tail("svc", usize::MAX).len(), SERVICE_LOG_LINES);
        assert!(logs.tail("other", 5).is_empty());
    }

    #[test]
    fn followers_get_the_tail_then_every_new_line() {
        let logs = ServiceLogs::default();
        logs.push("svc", "old".into());
        let (tail, mut feed) = logs.follow("svc", 10);
        assert_eq!(tail, ["old"]);
        logs.push("svc", "new".into());
        assert_eq!(feed.try_recv().unwrap(), "new");
    }

    #[test]
    fn events_inside_a_service_span_land_in_its_ring() {
        let logs = ServiceLogs::default();
        let subscriber =
            tracing_subscriber::registry().with(ServiceLogLayer { logs: logs.clone() });
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("service", name = "web");
            let _entered = span.enter();
            tracing::info!(port = 80, "listening");
        });
        let tail = logs.tail("web", 10);
        assert_eq!(tail.len(), 1);
        assert!(tail[0].ends_with("INFO listening port=80"), "{tail:?}");
    }
}
