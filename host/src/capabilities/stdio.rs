//! WASI itself (`wasi:cli`, clocks, random, streams, filesystem): granted,
//! never ambient. No sockets, no name lookups, only the app files the
//! manifest gives (`files`, read-only, see [`super::files`]) and only the
//! environment it gives (`[component.<id>].environment`).
//!
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

use std::collections::BTreeMap;

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{Capability, HostState, Request, Settings};
use crate::manifest::{ComponentSpec, ManifestError};
use crate::telemetry::trace::{HexId, Tracing};

/// The WASI capability.
pub struct Wasi;

/// What the manifest gives one component version: its environment and
/// the app files it may read.
pub struct WasiGrant {
    environment: Vec<(String, String)>,
    files: Option<super::files::Mounts>,
}

impl Capability for Wasi {
    type Grant = WasiGrant;
    type Shared = ();
    type Instance = WasiCtx;

    fn shared(_: &Settings) -> anyhow::Result<()> {
        Ok(())
    }

    fn grant(
        spec: &ComponentSpec,
        _values: &BTreeMap<String, String>,
    ) -> Result<Self::Grant, ManifestError> {
        Ok(WasiGrant {
            environment: spec
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            files: super::files::Mounts::prepare(spec)?,
        })
    }

    fn instance(_: &(), grant: &Self::Grant, request: &Request) -> WasiCtx {
        let span = {
            use opentelemetry::trace::TraceContextExt;
            request.trace.cx.span().span_context().clone()
        };
        let output = |stream| GuestOutput {
            component: request.component.clone(),
            stream,
            span: span.clone(),
            tracing: request.trace.tracing.clone(),
        };
        let mut wasi = WasiCtxBuilder::new();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(output("stdout"))
            .stderr(output("stderr"))
            .envs(&grant.environment);
        let mut ctx = wasi.build();
        if let Some(files) = &grant.files {
            files.install(&mut ctx);
        }
        ctx
    }

    fn add_to_linker(linker: &mut Linker<HostState>, concurrent: bool) -> anyhow::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)?;
        if concurrent {
            wasmtime_wasi::p3::add_to_linker(linker)?;
        }
        Ok(())
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.caps.wasi,
            table: &mut self.table,
        }
    }
}

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
