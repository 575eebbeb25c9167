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
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use http_body::{Body, Frame, SizeHint};
use wasmtime::component::{Accessor, ComponentNamedList, Lift, Lower, Resource, TypedFunc};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::http::types as p2_types;
use wasmtime_wasi_http::p3::bindings::http::types as p3_types;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtxView, WasiHttpView};

pub use crate::capabilities::TraceHandle;
use crate::capabilities::{ComponentCaps, HostState, Shared};
use crate::runtime::{HandlerPre, HttpWorld, LoadedComponent, P2Params, P3Params, P3Results};
use crate::telemetry::metrics::Metrics;

fn http_view(state: &mut HostState) -> WasiHttpCtxView<'_> {
    state.http()
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

impl InvokeError {
    /// The status the client gets.
    pub fn status(&self) -> http::StatusCode {
        match self {
            InvokeError::Timeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
            InvokeError::Exhausted => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Its `reason` in `gantry_guest_failures` and its server span's
    /// `error.type`.
    pub fn label(&self) -> &'static str {
        match self {
            InvokeError::Timeout(_) => "timeout",
            InvokeError::Exhausted => "no_free_instance",
            InvokeError::Trap(_) => "trap",
            InvokeError::Instantiate(_) => "instantiation",
            InvokeError::Guest(_) => "guest_error",
        }
    }
}

/// Everything one call needs besides the request itself.
pub struct Call {
    pub loaded: Arc<LoadedComponent>,
    pub caps: Arc<ComponentCaps>,
    pub timeout: Duration,
    pub max_memory: u64,
    /// The instance slot (and the component's share of the pool) this call
    /// occupies until its store is dropped.
    pub permit: Admission,
    /// Where the response body's deadline is watched: the connection's.
    pub watch: Arc<BodyWatch>,
    pub trace: TraceHandle,
    /// The capabilities' app-wide state.
    pub shared: Arc<Shared>,
    /// For a request to the app itself: how deep its chain is, and the
    /// deadline of the request that began it, which this one cannot outlive.
    pub chain: Option<(u32, Instant)>,
}

/// Calls the component's handler for one request.
pub async fn invoke(
    call: Call,
    request: http::Request<WasiBody>,
) -> Result<http::Response<WasiBody>, InvokeError> {
    let Call {
        loaded,
        caps,
        timeout,
        max_memory,
        permit,
        watch,
        trace,
        shared,
        chain,
    } = call;
    let own = Instant::now() + timeout;
    let (hops, deadline) = match chain {
        Some((hops, outer)) => (hops, own.min(outer)),
        None => (0, own),
    };
    let metrics = trace.metrics.clone();
    let body_metrics = trace.metrics.clone();
    let engine = loaded.handler.component().engine();
    let mut store = new_store(engine, &caps, &shared, max_memory, trace, deadline, hops);

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
        let handler = match loaded.handler.instantiate(&mut store).await {
            Ok(h) => h,
            Err(e) => return Err(classify_instantiation(e)),
        };
        metrics
            .instantiation
            .with(&[&loaded.id])
            .observe(started.elapsed().as_secs_f64(), None);
        let call = match handler.start(&mut store, request, tx) {
            Ok(c) => c,
            Err(e) => return Err(InvokeError::Instantiate(format!("{e:#}"))),
        };
        let result = if loaded.handler.concurrent {
            store
                .run_concurrent(async move |accessor| {
                    // Keep the store alive until the body is sent or dropped;
                    // a guest that failed will write no more of it, and
                    // waiting would hold its instance for as long as the
                    // client stays.
                    call.run(accessor).await?;
                    let _ = done_rx.await;
                    wasmtime::Result::Ok(())
                })
                .await
        } else {
            // The plain engine (0.2 only): no concurrent calls, so none of
            // their bookkeeping; the guest runs inside `call_async`.
            match call.run_plain(&mut store).await {
                Ok(()) => {
                    let _ = done_rx.await;
                    Ok(Ok(()))
                }
                Err(e) => Ok(Err(e)),
            }
        };
        let peak = store.data().memory_peak();
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
            // From here the body drives the store (see `DrivenBody`), and
            // the connection's watch ends it at the deadline if nobody does.
            let (parts, body) = response.into_parts();
            let state = Arc::new(BodyState {
                deadline,
                expired: AtomicBool::new(false),
                life: std::sync::Mutex::new(BodyLife {
                    store,
                    done: Some(done_tx),
                    waker: None,
                }),
                component: component.clone(),
                metrics: body_metrics,
                timeout,
            });
            watch.register(&state);
            let body = DrivenBody {
                inner: body,
                state,
                failed: false,
                guest_failed: false,
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
    shared: &Shared,
    max_memory: u64,
    trace: TraceHandle,
    deadline: Instant,
    hops: u32,
) -> Store<HostState> {
    let mut store = Store::new(
        engine,
        HostState::new(caps, shared, max_memory, trace, deadline, hops),
    );
    store.limiter(HostState::limiter);
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

/// `wasi:http/incoming-handler@0.2.x#handle`, as the host calls it.
type P2Handle = TypedFunc<P2Params, ()>;
/// `wasi:http/handler@0.3.x#handle`, as the host calls it.
type P3Handle = TypedFunc<P3Params, P3Results>;

/// Where a response head goes: the guest's answer, or why there is none.
type HeadSender = oneshot::Sender<wasmtime::Result<http::Response<WasiBody>>>;

/// An instance's handler, ready to be given a request.
pub(crate) enum Handler {
    P2(P2Handle),
    P3(P3Handle),
}

impl HandlerPre {
    /// A new instance of the component in `store`, and its handler, taken by
    /// the export index found at load.
    pub(crate) async fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Handler> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let func = instance.get_func(&mut *store, self.handle).ok_or_else(|| {
            wasmtime::format_err!("the component's `handle` export is not a function")
        })?;
        Ok(match self.world {
            HttpWorld::P2 => Handler::P2(self.typed(func)),
            HttpWorld::P3 => Handler::P3(self.typed(func)),
        })
    }

    /// `func` with the signature the host calls it with, as checked at load.
    fn typed<P, R>(&self, func: wasmtime::component::Func) -> TypedFunc<P, R>
    where
        P: ComponentNamedList + Lower,
        R: ComponentNamedList + Lift,
    {
        // SAFETY: `func` is the export at `self.handle` of an instance of
        // `self.pre`, whose type `HandlerPre::new` checked at load against
        // these `P` and `R` (`ComponentFunc::typecheck` with the instance
        // type of `self.pre`): the check wasmtime's generated bindings rely
        // on for their own unchecked calls. All instances of one
        // `InstancePre` share its component and its linker's definitions,
        // host resource types included, so they give that export the same
        // type.
        unsafe { TypedFunc::new_unchecked(func) }
    }
}

impl Handler {
    /// Hands `request` to the guest's table and makes the call ready for the
    /// store to run (`GuestCall::run`). The response head goes to `head`.
    fn start(
        self,
        store: &mut Store<HostState>,
        request: http::Request<WasiBody>,
        head: HeadSender,
    ) -> wasmtime::Result<GuestCall> {
        let mut view = store.data_mut().http();
        match self {
            Handler::P2(func) => {
                let request = view.new_incoming_request(p2_types::Scheme::Http, request)?;
                // The head is sent by whichever comes first: the guest's
                // `response-outparam.set`, or the end of the call.
                let head = Arc::new(std::sync::Mutex::new(Some(head)));
                let out = view.new_response_outparam_from_callback({
                    let head = head.clone();
                    move |answer| {
                        if let Some(tx) = take_sender(&head) {
                            let _ = tx.send(answer.map_err(wasmtime::Error::from));
                        }
                    }
                })?;
                Ok(GuestCall::P2 {
                    func,
                    request,
                    out,
                    head,
                })
            }
            Handler::P3(func) => {
                let (request, io) = wasmtime_wasi_http::p3::Request::from_http(view.hooks, request);
                let request = view.table.push(request)?;
                Ok(GuestCall::P3 {
                    func,
                    request,
                    io: Box::pin(io),
                    head,
                })
            }
        }
    }
}

/// Why a 0.2 guest gave no response head.
const NO_RESPONSE_SET: &str = "guest never invoked `response-outparam::set` method";

/// One call of a guest's handler, with its request already in the guest's
/// table.
enum GuestCall {
    P2 {
        func: P2Handle,
        request: Resource<p2_types::IncomingRequest>,
        out: Resource<p2_types::ResponseOutparam>,
        head: Arc<std::sync::Mutex<Option<HeadSender>>>,
    },
    P3 {
        func: P3Handle,
        request: Resource<p3_types::Request>,
        /// Reports to the guest how reading the request body ended.
        io: Pin<Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>>,
        head: HeadSender,
    },
}

impl GuestCall {
    /// Runs the call inside the store until the guest's handler returns.
    /// The response head, or the error that stands for it, has been sent
    /// when this returns.
    async fn run(self, accessor: &Accessor<HostState>) -> wasmtime::Result<()> {
        match self {
            GuestCall::P2 {
                func,
                request,
                out,
                head,
            } => {
                let ended = func.call_concurrent(accessor, (request, out)).await;
                p2_ended(&head, ended)
            }
            GuestCall::P3 {
                func,
                request,
                io,
                head,
            } => {
                let answer = async {
                    let (response,) = func.call_concurrent(accessor, (request,)).await?;
                    let response = response?;
                    accessor.with(|mut access| {
                        let response = access.get().http().table.delete(response)?;
                        response.into_http_with_getter(&mut access, io, http_view)
                    })
                }
                .await;
                // A trap ends the store; an error code is the guest's answer.
                let trapped = answer
                    .as_ref()
                    .err()
                    .and_then(|e| e.downcast_ref::<Trap>().copied());
                let _ = head.send(answer);
                match trapped {
                    Some(trap) => Err(trap.into()),
                    None => Ok(()),
                }
            }
        }
    }

    /// Runs a 0.2 call on an engine without concurrency support, until the
    /// guest's handler returns. As with `run`, the response head (or the
    /// error that stands for it) has been sent when this returns.
    async fn run_plain(self, store: &mut Store<HostState>) -> wasmtime::Result<()> {
        match self {
            GuestCall::P2 {
                func,
                request,
                out,
                head,
            } => {
                let ended = func.call_async(&mut *store, (request, out)).await;
                p2_ended(&head, ended)
            }
            GuestCall::P3 { head, .. } => {
                // `Runtime::link` puts no 0.3 handler on the plain engine.
                let _ = head.send(Err(wasmtime::format_err!(
                    "a wasi:http 0.3 handler needs an engine with concurrency support"
                )));
                Ok(())
            }
        }
    }
}

/// A 0.2 call has ended: if the guest set no response, say why. A trap
/// after the response head is returned, so that the store ends now instead
/// of waiting for a body the guest will never finish.
fn p2_ended(
    head: &std::sync::Mutex<Option<HeadSender>>,
    ended: wasmtime::Result<()>,
) -> wasmtime::Result<()> {
    // Still here: the guest returned or trapped without setting its
    // response.
    match take_sender(head) {
        Some(tx) => {
            let why = match ended {
                Ok(()) => wasmtime::format_err!("{NO_RESPONSE_SET}"),
                Err(e) => e.context(NO_RESPONSE_SET),
            };
            let _ = tx.send(Err(why));
            Ok(())
        }
        None => ended,
    }
}

/// The head's sender, if nobody has taken it yet.
fn take_sender(slot: &std::sync::Mutex<Option<HeadSender>>) -> Option<HeadSender> {
    // A poisoned lock still holds the sender: a panic elsewhere must not
    // lose the answer.
    match slot.lock() {
        Ok(mut s) => s.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    }
}

/// What every request pays before its handler runs: a fresh store with the
/// request's host state, and an instance of `loaded` in it. The guest is not
/// called; the store (and its pool slot) is released before this returns.
/// Returns how long each half took (the release not included). The
/// instantiation benchmark (`cargo bench -p gantry --bench micro`) times it.
pub async fn instantiate_only(
    loaded: &LoadedComponent,
    caps: &ComponentCaps,
    shared: &Shared,
    max_memory: u64,
    trace: TraceHandle,
) -> Result<SetUpTimes, InvokeError> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    let engine = loaded.handler.component().engine();
    let mut store = new_store(engine, caps, shared, max_memory, trace, deadline, 0);
    let store_ready = Instant::now();
    loaded
        .handler
        .instantiate(&mut store)
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
    /// The store with the request's host state (every capability's instance
    /// state, the resource table, limits).
    pub store: Duration,
    /// wasmtime's instantiation of the component in that store.
    pub instance: Duration,
}

fn classify_instantiation(e: wasmtime::Error) -> InvokeError {
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        InvokeError::Exhausted
    } else {
        InvokeError::Instantiate(format!("{e:#}"))
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

/// Why a response body was cut off.
const BODY_TIMEOUT: &str = "body_timeout";

/// The part of a response body that the connection's [`BodyWatch`] can end:
/// the store producing it, and the deadline of its request.
pub struct BodyState {
    deadline: Instant,
    /// The deadline passed: the body ends with an error at its next poll.
    expired: AtomicBool,
    life: std::sync::Mutex<BodyLife>,
    component: Arc<str>,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

struct BodyLife {
    store: Option<StoreLife>,
    done: Option<oneshot::Sender<()>>,
    /// Who polled the body last, woken when the deadline ends it.
    waker: Option<std::task::Waker>,
}

impl BodyState {
    /// The guest failed after its response head: the body it was writing
    /// will not be finished.
    fn failed_after_head(&self, e: &InvokeError) {
        let reason = match e {
            InvokeError::Timeout(_) => "timeout",
            _ => "trap",
        };
        self.metrics
            .guest_failures
            .with(&[&self.component, reason])
            .inc();
        tracing::error!(
            component = %self.component,
            "guest failed after its response head; the response is cut off: {e}"
        );
    }

    /// The deadline passed: release the instance now (when no poll holds
    /// it; else that poll does) and count it, once.
    fn expire(&self) {
        if self.expired.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics
            .guest_failures
            .with(&[&self.component, BODY_TIMEOUT])
            .inc();
        tracing::warn!(
            component = %self.component,
            timeout = ?self.timeout,
            "response body not finished by the request's deadline: cut off, instance released"
        );
        if let Ok(mut life) = self.life.try_lock() {
            life.store = None;
            life.done = None;
            if let Some(w) = life.waker.take() {
                w.wake();
            }
        }
    }
}

/// The response bodies of one connection still being sent, each ended at
/// its request's deadline even when nothing polls it: a client that stops
/// reading, or an HTTP/2 stream without flow-control credit, leaves a body
/// unpolled, and its instance would otherwise stay taken.
#[derive(Default)]
pub struct BodyWatch {
    bodies: std::sync::Mutex<Vec<std::sync::Weak<BodyState>>>,
    changed: tokio::sync::Notify,
}

impl BodyWatch {
    fn register(&self, body: &Arc<BodyState>) {
        if let Ok(mut b) = self.bodies.lock() {
            b.retain(|w| w.strong_count() > 0);
            b.push(Arc::downgrade(body));
        }
        self.changed.notify_one();
    }

    /// Response bodies still being sent.
    pub fn sending(&self) -> usize {
        self.bodies
            .lock()
            .map(|b| b.iter().filter(|w| w.strong_count() > 0).count())
            .unwrap_or(0)
    }

    /// Ends what is past its deadline; the next deadline, if any.
    fn expire_due(&self, now: Instant) -> Option<Instant> {
        let mut due = Vec::new();
        let next = {
            let Ok(mut bodies) = self.bodies.lock() else {
                return None;
            };
            let mut next: Option<Instant> = None;
            bodies.retain(|w| {
                let Some(b) = w.upgrade() else { return false };
                if b.expired.load(Ordering::Acquire) {
                    return false;
                }
                if b.deadline <= now {
                    due.push(b);
                    return false;
                }
                next = Some(next.map_or(b.deadline, |n| n.min(b.deadline)));
                true
            });
            next
        };
        for b in due {
            b.expire();
        }
        next
    }

    /// Watches until dropped (with its connection).
    pub async fn run(&self) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            match self.expire_due(Instant::now()) {
                Some(next) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(next.into()) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A response body that drives the store producing it: every poll lets the
/// guest run first, and the end of the body releases the store. Past the
/// request's deadline it ends with an error (the client sees the response
/// cut off) and the store is gone.
struct DrivenBody {
    inner: WasiBody,
    state: Arc<BodyState>,
    failed: bool,
    /// The guest's store ended in failure: what it had written goes out,
    /// then the body ends in an error, never as if complete.
    guest_failed: bool,
}

impl DrivenBody {
    /// Lets the guest run; `false` when the deadline has passed (the store
    /// is then dropped here).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let expired = self.state.expired.load(Ordering::Acquire)
            || (Instant::now() >= self.state.deadline && {
                self.state.expire();
                true
            });
        let Ok(mut life) = self.state.life.lock() else {
            return false;
        };
        if expired {
            life.store = None;
            life.done = None;
            return false;
        }
        if let Some(store) = life.store.as_mut()
            && let Poll::Ready(ended) = store.as_mut().poll(cx)
        {
            life.store = None;
            if let Err(e) = ended {
                self.state.failed_after_head(&e);
                self.guest_failed = true;
            }
        }
        // The watch may have found the deadline passed while this poll held
        // the lock; it left the store to this poll.
        if self.state.expired.load(Ordering::Acquire) {
            life.store = None;
            life.done = None;
            return false;
        }
        match &life.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => life.waker = Some(cx.waker().clone()),
        }
        true
    }

    /// The body has been sent: let the store end, here if it can.
    fn finish(&mut self, cx: &mut Context<'_>) {
        if let Ok(mut life) = self.state.life.lock() {
            if let Some(tx) = life.done.take() {
                let _ = tx.send(());
            }
            if let Some(store) = life.store.as_mut()
                && store.as_mut().poll(cx).is_ready()
            {
                life.store = None;
            }
        }
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        // hyper drops a body it knows is complete without polling it to its
        // end; usually the store can then end at once, on this thread.
        self.finish(&mut Context::from_waker(std::task::Waker::noop()));
        // A guest still busy (a 0.3 guest may go on after its response) gets
        // to finish on its own task, until its deadline at the latest.
        let life = self.state.life.lock().ok().and_then(|mut l| l.store.take());
        if let Some(life) = life
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let deadline = self.state.deadline;
            rt.spawn(async move {
                let _ = tokio::time::timeout_at(deadline.into(), life).await;
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
        if self.failed {
            return Poll::Ready(None);
        }
        if !self.drive(cx) {
            self.failed = true;
            return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionWriteTimeout)));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if self.guest_failed && !matches!(polled, Poll::Ready(Some(_))) {
            self.failed = true;
            return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionTerminated)));
        }
        match &polled {
            Poll::Ready(None) => self.finish(cx),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(cx),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a call holds while its instance lives: a slot of the pool and one of
/// its component's share, counted in `gantry_instances`.
pub struct Admission {
    _pool: tokio::sync::OwnedSemaphorePermit,
    _component: tokio::sync::OwnedSemaphorePermit,
    counted: Arc<crate::telemetry::metrics::Gauge>,
}

impl Admission {
    pub fn new(
        pool: tokio::sync::OwnedSemaphorePermit,
        component: tokio::sync::OwnedSemaphorePermit,
        counted: Arc<crate::telemetry::metrics::Gauge>,
    ) -> Self {
        counted.add(1);
        Admission {
            _pool: pool,
            _component: component,
            counted,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.counted.add(-1);
    }
}
