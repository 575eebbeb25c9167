//! Guest stdout and stderr: each line becomes a host log event (target
//! `guest`) and, when logs are exported, an OTLP log record, both carrying
//! the component id, the stream and the request's trace and span ids, so a
//! guest's output can be found from its trace and back.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry::trace::SpanContext;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::telemetry::trace::{HexId, Tracing};

/// Longest line kept whole; longer output is split at this size.
const MAX_LINE: usize = 16 * 1024;

/// One standard stream of one request's instance.
#[derive(Clone)]
pub struct GuestOutput {
    pub component: Arc<str>,
    pub stream: &'static str,
    /// The request's server span.
    pub span: SpanContext,
    pub tracing: Arc<Tracing>,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            out: self.clone(),
            buf: Vec::new(),
        })
    }
}

struct LineWriter {
    out: GuestOutput,
    buf: Vec<u8>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let out = &self.out;
        tracing::info!(
            target: "guest",
            component = %out.component,
            stream = out.stream,
            trace_id = %HexId(out.span.trace_id().to_bytes()),
            span_id = %HexId(out.span.span_id().to_bytes()),
            "{text}"
        );
        if let Some(logs) = &out.tracing.guest_logs {
            logs.emit_output(&out.component, out.stream, text, &out.span);
        }
    }

    fn flush_partial(&mut self) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.emit(&line);
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush_partial();
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        for &b in data {
            if b == b'\n' {
                let line = std::mem::take(&mut self.buf);
                self.emit(&line);
            } else {
                self.buf.push(b);
                if self.buf.len() >= MAX_LINE {
                    self.flush_partial();
                }
            }
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.flush_partial();
        Poll::Ready(Ok(()))
    }
}
