//! One request, one fresh instance: the per-store host state, and the call of
//! a component's HTTP handler (WASI 0.2 or 0.3) with limits and a deadline.
//!
//! The store lives until the response body has been sent (or dropped),
//! because a guest keeps producing its body after it has returned the
//! response head. It runs in the request's own task, not a spawned one: the
//! request future polls it until the head exists, then the response body
//! does, so the guest's work happens where hyper writes its output.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use http_body::{Body, Frame, SizeHint};
use wasmtime::component::ResourceTable;
use wasmtime::{AsContextMut, Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::handler::Prepared;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capabilities::ComponentCaps;
use crate::capabilities::gpio::{GpioHost, GpioState, GpioView};
use crate::capabilities::otel::{GuestTelemetry, OtelView};
use crate::capabilities::outbound_http::OutboundHooks;
use crate::capabilities::stdio::GuestOutput;
use crate::capabilities::variables::ComponentVariables;
use crate::runtime::LoadedComponent;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::Tracing;

/// Everything a guest's host calls can reach, for one request.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundHooks,
    limits: MemoryLimiter,
    pub(crate) variables: ComponentVariables,
    gpio: GpioState,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

fn http_view(state: &mut HostState) -> WasiHttpCtxView<'_> {
    state.http()
}

impl HostState {
    pub(crate) fn otel(&mut self) -> OtelView<'_> {
        OtelView(&mut self.hooks.guest)
    }

    pub(crate) fn gpio(&mut self) -> GpioView<'_> {
        GpioView(&mut self.gpio)
    }
}

impl HostState {
    fn new(caps: &ComponentCaps, max_memory: u64, trace: TraceHandle, gpio: Arc<GpioHost>) -> Self {
        let mut wasi = WasiCtxBuilder::new();
        let span = {
            use opentelemetry::trace::TraceContextExt;
            trace.cx.span().span_context().clone()
        };
        let output = |stream| GuestOutput {
            component: caps.id.clone(),
            stream,
            span: span.clone(),
            tracing: trace.tracing.clone(),
        };
        // Granted, never ambient: no sockets, no name lookups, no files, and
        // only the environment the manifest gives. Output goes to the host
        // log, attributed to the component and the request.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(output("stdout"))
            .stderr(output("stderr"))
            .envs(&caps.environment);
        HostState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundHooks {
                component: caps.id.clone(),
                policy: caps.outbound.clone(),
                propagate: caps.propagate_trace_context,
                guest: GuestTelemetry {
                    component: caps.id.clone(),
                    tracing: trace.tracing,
                    metrics: trace.metrics,
                    server: trace.cx,
                    open: Vec::new(),
                },
            },
            limits: MemoryLimiter {
                max: usize::try_from(max_memory).unwrap_or(usize::MAX),
                peak: 0,
            },
            variables: caps.variables.clone(),
            gpio: GpioState::new(gpio, caps.gpio.clone(), caps.id.clone()),
        }
    }
}

/// The request's telemetry: tracer, metrics and the server span's context.
pub struct TraceHandle {
    pub tracing: Arc<Tracing>,
    pub metrics: Arc<Metrics>,
    pub cx: opentelemetry::Context,
}

/// Caps linear memory and remembers the largest size an instance asked for.
struct MemoryLimiter {
    max: usize,
    peak: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any sane guest.
        Ok(desired <= 1 << 20)
    }
}

/// How a request failed inside the guest; the server maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("no free instance slot")]
    Exhausted,
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    #[error("guest trapped: {0}")]
    Trap(String),
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    #[error("guest returned an error instead of a response: {0}")]
    Guest(String),
}

/// Everything one call needs besides the request itself.
pub struct Call {
    pub loaded: Arc<LoadedComponent>,
    pub caps: Arc<ComponentCaps>,
    pub timeout: Duration,
    pub max_memory: u64,
    /// The instance slot this call occupies until its store is dropped.
    pub permit: tokio::sync::OwnedSemaphorePermit,
    pub trace: TraceHandle,
    pub gpio: Arc<GpioHost>,
}

/// Calls the component's handler for one request.
pub async fn invoke(
    engine: &Engine,
    call: Call,
    request: http::Request<WasiBody>,
) -> Result<http::Response<WasiBody>, InvokeError> {
    let Call {
        loaded,
        caps,
        timeout,
        max_memory,
        permit,
        trace,
        gpio,
    } = call;
    let deadline = Instant::now() + timeout;
    let metrics = trace.metrics.clone();
    let mut store = new_store(engine, &caps, max_memory, trace, gpio, deadline);

    let (tx, rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let component = caps.id.clone();

    // The whole life of the store: instantiate, call, and keep it until the
    // response body has been sent or dropped. It is not spawned: the
    // request's own task polls it, first here until the response head exists
    // and then from the response body (`DrivenBody`), so a request costs no
    // task of its own and the guest runs where its connection is served.
    let store_life: StoreLife = Box::pin(async move {
        let _permit = permit;
        let started = Instant::now();
        let proxy = match loaded.pre.instantiate_async(&mut store).await {
            Ok(p) => p,
            Err(e) => return Err(classify_instantiation(e)),
        };
        metrics
            .instantiation
            .with(&[&loaded.id])
            .observe(started.elapsed().as_secs_f64(), None);
        let prepared = match Prepared::new(store.as_context_mut(), &proxy, request, http_view, tx) {
            Ok(p) => p,
            Err(e) => return Err(InvokeError::Instantiate(format!("{e:#}"))),
        };
        let result = store
            .run_concurrent(async move |accessor| {
                prepared.run(accessor, std::future::pending()).await?;
                // Keep the store alive until the body is sent or dropped.
                let _ = done_rx.await;
                wasmtime::Result::Ok(())
            })
            .await;
        let peak = store.data().limits.peak;
        metrics
            .guest_memory_peak
            .with(&[&loaded.id])
            .max(i64::try_from(peak).unwrap_or(i64::MAX));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => Err(classify(e, timeout)),
        }
    });
    let mut store = Some(store_life);
    let mut rx = Some(rx);
    // Until a response head exists the store belongs to this future: a
    // client that goes away drops it, and the guest with it.
    let until_head = std::future::poll_fn(|cx| {
        if let Some(life) = store.as_mut()
            && let Poll::Ready(ended) = life.as_mut().poll(cx)
        {
            store = None;
            // An answer given before the end is already in the channel.
            let head = rx.take().and_then(|mut r| r.try_recv().ok().flatten());
            return Poll::Ready(match head {
                Some(head) => Head::Answered(head),
                None => Head::Ended(ended),
            });
        }
        if let Some(r) = rx.as_mut() {
            match Pin::new(r).poll(cx) {
                Poll::Ready(Ok(head)) => return Poll::Ready(Head::Answered(head)),
                // Dropped without an answer: the store's end says why.
                Poll::Ready(Err(_canceled)) => rx = None,
                Poll::Pending => {}
            }
        }
        if store.is_none() {
            return Poll::Ready(Head::Ended(Err(InvokeError::Guest(
                "no response was produced".into(),
            ))));
        }
        Poll::Pending
    });
    match tokio::time::timeout_at(deadline.into(), until_head).await {
        Ok(Head::Answered(Ok(response))) => {
            // From here the body drives the store (see `DrivenBody`).
            let (parts, body) = response.into_parts();
            let body = DrivenBody {
                inner: body,
                store,
                done: Some(done_tx),
            };
            Ok(http::Response::from_parts(
                parts,
                http_body_util::BodyExt::boxed_unsync(body),
            ))
        }
        Ok(Head::Answered(Err(e))) => Err(classify(e, timeout)),
        Ok(Head::Ended(Ok(()))) => Err(InvokeError::Guest("no response was produced".into())),
        Ok(Head::Ended(Err(e))) => Err(e),
        Err(_elapsed) => {
            tracing::debug!(%component, "deadline passed before the response head");
            Err(InvokeError::Timeout(timeout))
        }
    }
}

/// A store's whole life, from instantiation until its response is done.
type StoreLife = Pin<Box<dyn Future<Output = Result<(), InvokeError>> + Send>>;

/// How the wait for a response head ended.
enum Head {
    Answered(Result<http::Response<WasiBody>, wasmtime::Error>),
    Ended(Result<(), InvokeError>),
}

/// The store one request gets: its host state, memory limit and deadline.
fn new_store(
    engine: &Engine,
    caps: &ComponentCaps,
    max_memory: u64,
    trace: TraceHandle,
    gpio: Arc<GpioHost>,
    deadline: Instant,
) -> Store<HostState> {
    let mut store = Store::new(engine, HostState::new(caps, max_memory, trace, gpio));
    store.limiter(|s| &mut s.limits as &mut dyn wasmtime::ResourceLimiter);
    // Every tick, a guest that is running yields to the executor (so one busy
    // guest cannot starve others on its thread) and past its deadline traps.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// What every request pays before its handler runs: a fresh store with the
/// request's host state, and an instance of `loaded` in it. The guest is not
/// called; the store (and its pool slot) is released before this returns.
/// Returns how long each half took (the release not included). The
/// instantiation benchmark (`cargo bench -p gantry --bench micro`) times it.
pub async fn instantiate_only(
    engine: &Engine,
    loaded: &LoadedComponent,
    caps: &ComponentCaps,
    max_memory: u64,
    trace: TraceHandle,
    gpio: Arc<GpioHost>,
) -> Result<SetUpTimes, InvokeError> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    let mut store = new_store(engine, caps, max_memory, trace, gpio, deadline);
    let store_ready = Instant::now();
    loaded
        .pre
        .instantiate_async(&mut store)
        .await
        .map_err(classify_instantiation)?;
    let times = SetUpTimes {
        store: store_ready - started,
        instance: store_ready.elapsed(),
    };
    // The instance lives in the store: dropping the store releases both.
    drop(store);
    Ok(times)
}

/// The two halves of a request's set-up, as [`instantiate_only`] timed them.
#[derive(Debug, Clone, Copy)]
pub struct SetUpTimes {
    /// The store with the request's host state (WASI context, tables, limits,
    /// telemetry handles, GPIO grants).
    pub store: Duration,
    /// wasmtime's instantiation of the component in that store.
    pub instance: Duration,
}

fn classify_instantiation(e: wasmtime::Error) -> InvokeError {
    let text = format!("{e:#}");
    // The pooling allocator refuses with "maximum concurrent ... limit".
    if text.contains("concurrent") || text.contains("pooling") {
        InvokeError::Exhausted
    } else {
        InvokeError::Instantiate(text)
    }
}

fn classify(e: wasmtime::Error, timeout: Duration) -> InvokeError {
    if let Some(trap) = e.downcast_ref::<Trap>() {
        if *trap == Trap::Interrupt {
            return InvokeError::Timeout(timeout);
        }
        // One line for the log; the wasm backtrace only at debug level.
        tracing::debug!("trap details: {e:?}");
        return InvokeError::Trap(trap.to_string());
    }
    let text = format!("{e:#}");
    if e.downcast_ref::<wasmtime_wasi_http::p3::bindings::http::types::ErrorCode>()
        .is_some()
        || e.downcast_ref::<wasmtime_wasi_http::p2::bindings::http::types::ErrorCode>()
            .is_some()
    {
        return InvokeError::Guest(text);
    }
    InvokeError::Trap(text)
}

/// A response body that drives the store producing it: every poll lets the
/// guest run first, and the end of the body releases the store.
struct DrivenBody {
    inner: WasiBody,
    store: Option<StoreLife>,
    done: Option<oneshot::Sender<()>>,
}

impl DrivenBody {
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(life) = self.store.as_mut()
            && life.as_mut().poll(cx).is_ready()
        {
            self.store = None;
        }
    }
}

impl DrivenBody {
    /// The body has been sent: let the store end, here if it can.
    fn finish(&mut self, cx: &mut Context<'_>) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
        self.drive(cx);
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        // hyper drops a body it knows is complete without polling it to its
        // end; usually the store can then end at once, on this thread.
        self.finish(&mut Context::from_waker(std::task::Waker::noop()));
        // A guest still busy (a 0.3 guest may go on after its response) gets
        // to finish on its own task, bounded by its deadline as before.
        if let Some(life) = self.store.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = life.await;
            });
        }
    }
}

impl Body for DrivenBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.drive(cx);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(cx),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(cx),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
