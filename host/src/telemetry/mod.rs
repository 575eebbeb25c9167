//! Host logs. `--log-format text|json`; the level comes from `RUST_LOG`
//! (default `info`). Trace export and metrics plug in here.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub mod logs;
pub mod metrics;
pub mod otlp_metrics;
pub mod otlp_traces;
pub mod span_queue;
pub mod trace;

/// An exporter for unit tests that keeps every span it is given.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct KeepSpans(
    pub std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>,
);

#[cfg(test)]
impl opentelemetry_sdk::trace::SpanExporter for KeepSpans {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        if let Ok(mut v) = self.0.lock() {
            v.extend(batch);
        }
        Ok(())
    }
}
