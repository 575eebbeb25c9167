//! The export queue of server spans, as protobuf bytes.
//!
//! A server span is written, when it ends, straight into this queue's
//! buffer as one `Span` message of a request body
//! ([`write_recorded`](super::otlp_traces::write_recorded));
//! its attributes were written as bytes when it started, those shared by
//! all requests of a route, a component version or a connection once for
//! all of them. Nothing else is made per span: no `KeyValue` with its own
//! copy of each string, no `SpanData` moved through the SDK's channel into
//! a batch, and nothing for the export thread to read back, on another
//! core, and free.
//!
//! The buffer starts with room for the request's head, and the span that
//! fills a batch sets the buffer aside and starts the next one. The export
//! thread writes the head into that room ([`ScopeFrame`]) and posts the
//! batch where the request threads wrote it: a batch is never copied.
//!
//! The queue keeps the SDK's batch rules and reads the same variables:
//! `OTEL_BSP_MAX_QUEUE_SIZE` (2048) spans at most are held, a span beyond
//! them is dropped and counted; an export starts when
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512) spans are waiting or
//! `OTEL_BSP_SCHEDULE_DELAY` (5000 ms) has passed, and carries at most that
//! many spans. Spans an export fails to deliver are counted too, in
//! `gantry_telemetry_dropped_total{signal="traces"}`.
//!
//! Counted with callgrind (`cargo bench -p gantry --bench telemetry`), what
//! telemetry adds to a request fell from 6.7k instructions with the SDK's
//! queue to 2.7k.
//!
//! Used with the host's own `http/protobuf` exporter; for gRPC and
//! compressed export, server spans go through the SDK's queue as before.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;

use bytes::Bytes;

use super::otlp_traces::{Pb, ScopeFrame};

/// Where a request body goes (the collector, or a test's list).
pub type Post = Box<dyn FnMut(Bytes) -> Result<(), String> + Send>;

/// The batch rules, as the SDK reads them from `OTEL_BSP_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_queue: usize,
    pub max_batch: usize,
    pub delay: Duration,
}

impl Limits {
    pub fn from_env() -> Limits {
        let num = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        let max_queue = num("OTEL_BSP_MAX_QUEUE_SIZE", 2048);
        Limits {
            max_queue,
            // The SDK caps the batch at the queue's size.
            max_batch: num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).min(max_queue),
            delay: Duration::from_millis(num("OTEL_BSP_SCHEDULE_DELAY", 5000) as u64),
        }
    }
}

#[derive(Default)]
struct Pending {
    /// The batch being filled: room for a request's head
    /// ([`ScopeFrame::head`]), then encoded `ScopeSpans.spans` entries, one
    /// after the other.
    spans: Vec<u8>,
    /// Spans in `spans`.
    count: usize,
    /// Full batches (`max_batch` spans each, laid out as `spans`), waiting
    /// for the export thread.
    ready: Vec<Vec<u8>>,
    /// An empty buffer the export thread made ready for the next batch.
    spare: Option<Vec<u8>>,
    /// Flushes asked for, and how many of them the export thread has done.
    flushes_asked: u64,
    flushes_done: u64,
    closed: bool,
}

/// Server spans waiting for export, and the thread that exports them.
pub struct SpanQueue {
    pending: Mutex<Pending>,
    /// Wakes the export thread: a full batch, a flush, shutdown.
    wake: Condvar,
    /// Wakes whoever waits for a flush.
    flushed: Condvar,
    limits: Limits,
    dropped: Arc<AtomicU64>,
    /// Whether a full queue has been logged yet.
    told_full: AtomicBool,
    /// The bytes kept free at the start of `Pending::spans`.
    room: usize,
}

/// What the export thread needs besides the queue.
pub struct Export {
    pub resource: Vec<u8>,
    pub resource_schema: String,
    pub scope: InstrumentationScope,
    pub post: Post,
}

impl SpanQueue {
    /// The queue, with its export thread started.
    pub fn start(
        limits: Limits,
        dropped: Arc<AtomicU64>,
        export: Export,
    ) -> anyhow::Result<Arc<SpanQueue>> {
        let frame = ScopeFrame::new(&export.resource, &export.resource_schema, &export.scope);
        let room = frame.max_head();
        let queue = Arc::new(SpanQueue {
            pending: Mutex::new(Pending {
                spans: vec![0; room],
                ..Pending::default()
            }),
            wake: Condvar::new(),
            flushed: Condvar::new(),
            limits,
            dropped,
            told_full: AtomicBool::new(false),
            room,
        });
        let q = queue.clone();
        std::thread::Builder::new()
            .name("gantry-spans".into())
            .spawn(move || q.run(frame, export.post))
            .map_err(|e| anyhow::anyhow!("cannot start the span export thread: {e}"))?;
        Ok(queue)
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while the lock was held leaves bytes at worst cut short
        // at a span's end (each span is written whole or not at all).
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one span, which `write` appends; dropped and counted when
    /// the queue is full or shut down. The span that fills a batch sets it
    /// aside for the export thread and starts the next one.
    pub fn push(&self, write: impl FnOnce(&mut Pb)) {
        let mut p = self.lock();
        let queued = p.count + p.ready.len() * self.limits.max_batch;
        if p.closed || queued >= self.limits.max_queue {
            let closed = p.closed;
            drop(p);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if !closed && !self.told_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_queue = self.limits.max_queue,
                    "the span export queue is full; spans are dropped and counted"
                );
            }
            return;
        }
        let mut pb = Pb {
            buf: std::mem::take(&mut p.spans),
        };
        write(&mut pb);
        p.spans = pb.buf;
        p.count += 1;
        if p.count == self.limits.max_batch {
            let fresh = match p.spare.take() {
                Some(b) => b,
                None => self.buffer(p.spans.len()),
            };
            let full = std::mem::replace(&mut p.spans, fresh);
            p.count = 0;
            p.ready.push(full);
            // Told once per batch: each notification is a system call.
            self.wake.notify_one();
        }
    }

    /// An empty batch buffer: the room for the head, and space for about
    /// `hint` bytes.
    fn buffer(&self, hint: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(hint.max(self.room + 4096));
        v.resize(self.room, 0);
        v
    }

    /// Exports every span queued so far, waiting at most `timeout`.
    /// Whether that finished in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.ask(timeout, false)
    }

    /// Exports what is queued, then stops the export thread; spans queued
    /// later are dropped.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        self.ask(timeout, true)
    }

    fn ask(&self, timeout: Duration, close: bool) -> bool {
        let until = Instant::now() + timeout;
        let mut p = self.lock();
        if p.closed && p.flushes_done >= p.flushes_asked {
            return true;
        }
        p.closed |= close;
        p.flushes_asked += 1;
        let ticket = p.flushes_asked;
        self.wake.notify_one();
        while p.flushes_done < ticket {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            p = self
                .flushed
                .wait_timeout(p, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// The export thread: waits for a full batch, a flush, shutdown or the
    /// schedule delay; takes the full batches, and on the last three the
    /// one being filled too; posts each where the request threads wrote
    /// it, its head written into the room before its spans.
    fn run(&self, frame: ScopeFrame, mut post: Post) {
        // The last batch's size, to allocate the next buffer once.
        let mut size_hint = 0;
        // The buffer that replaces one taken; kept until it is used.
        let mut fresh: Option<Vec<u8>> = None;
        loop {
            if fresh.is_none() {
                fresh = Some(self.buffer(size_hint));
            }
            let deadline = Instant::now() + self.limits.delay;
            let mut p = self.lock();
            let mut due = false;
            loop {
                if !p.ready.is_empty() || p.flushes_asked > p.flushes_done || p.closed {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    due = true;
                    break;
                }
                p = self
                    .wake
                    .wait_timeout(p, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let ticket = p.flushes_asked;
            let closed = p.closed;
            let mut batches: Vec<(Vec<u8>, usize)> = std::mem::take(&mut p.ready)
                .into_iter()
                .map(|b| (b, self.limits.max_batch))
                .collect();
            if (due || ticket > p.flushes_done || closed) && p.count > 0 {
                let next = fresh.take().unwrap_or_else(|| self.buffer(size_hint));
                let partial = std::mem::replace(&mut p.spans, next);
                batches.push((partial, std::mem::take(&mut p.count)));
            }
            if p.spare.is_none() {
                p.spare = fresh.take();
            }
            drop(p);

            for (spans, n) in batches {
                size_hint = size_hint.max(spans.len());
                if post(in_place(&frame, spans, self.room)).is_err() {
                    self.dropped.fetch_add(n as u64, Ordering::Relaxed);
                }
            }

            let mut p = self.lock();
            p.flushes_done = p.flushes_done.max(ticket);
            drop(p);
            self.flushed.notify_all();
            if closed {
                return;
            }
        }
    }
}

/// The request for `spans` (`room` bytes, then the spans), made in place:
/// the head is written at the end of the room, the tail appended, and the
/// body starts where the head does.
fn in_place(frame: &ScopeFrame, mut spans: Vec<u8>, room: usize) -> Bytes {
    let mut head = Vec::with_capacity(room);
    frame.head(spans.len().saturating_sub(room), &mut head);
    // `room` is the longest head there can be.
    let start = room.saturating_sub(head.len());
    spans[start..room].copy_from_slice(&head[..room - start]);
    spans.extend_from_slice(frame.tail());
    Bytes::from(spans).slice(start..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn entry(pb: &mut Pb, len: usize) {
        pb.buf.push(0x12);
        let mut v = len;
        while v >= 0x80 {
            pb.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        pb.buf.push(v as u8);
        pb.buf.extend(std::iter::repeat_n(0xaa, len));
    }

    /// A queue whose posts record each body's length, and fail when told
    /// to. With a `gate`, the first post says it has started and waits
    /// until it is let go.
    fn queue(
        limits: Limits,
        fail: bool,
        gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    ) -> (Arc<SpanQueue>, Arc<Mutex<Vec<usize>>>, Arc<AtomicU64>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(AtomicU64::new(0));
        let s = sent.clone();
        let q = SpanQueue::start(
            limits,
            dropped.clone(),
            Export {
                resource: Vec::new(),
                resource_schema: String::new(),
                scope: InstrumentationScope::builder("t").build(),
                post: Box::new(move |body| {
                    let first = s.lock().map(|s| s.is_empty()).unwrap_or(false);
                    if let (true, Some((entered, release))) = (first, &gate) {
                        let _ = entered.send(());
                        let _ = release.recv_timeout(Duration::from_secs(10));
                    }
                    if let Ok(mut s) = s.lock() {
                        s.push(body.len());
                    }
                    if fail { Err("refused".into()) } else { Ok(()) }
                }),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (q, sent, dropped)
    }

    #[test]
    fn full_batches_go_at_once_and_the_rest_on_flush() {
        let limits = Limits {
            max_queue: 10,
            max_batch: 3,
            delay: Duration::from_secs(3600),
        };
        // The first post waits until it is let go, so that the queue fills
        // behind it.
        let (entered_tx, entered) = mpsc::channel::<()>();
        let (release, released) = mpsc::channel::<()>();
        let (q, sent, dropped) = queue(limits, false, Some((entered_tx, released)));
        for _ in 0..3 {
            q.push(|pb| entry(pb, 4));
        }
        assert!(
            entered.recv_timeout(Duration::from_secs(10)).is_ok(),
            "a full batch is sent without waiting for the delay"
        );
        // The first batch has left the queue: ten more fit, two do not.
        for _ in 0..12 {
            q.push(|pb| entry(pb, 4));
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
        let _ = release.send(());
        assert!(q.flush(Duration::from_secs(10)));
        // The first, then 10 spans in three full batches and one of one.
        let frame = ScopeFrame::new(&[], "", &InstrumentationScope::builder("t").build());
        let size = |n: usize| {
            let mut spans = Pb::default();
            (0..n).for_each(|_| entry(&mut spans, 4));
            let mut body = Vec::new();
            frame.encode(&spans.buf, &mut body);
            body.len()
        };
        assert_eq!(
            sent.lock().map(|s| s.clone()).unwrap_or_default(),
            vec![size(3), size(3), size(3), size(3), size(1)]
        );
        assert!(q.shutdown(Duration::from_secs(10)));
        q.push(|pb| entry(pb, 4));
        assert_eq!(
            dropped.load(Ordering::Relaxed),
            3,
            "after shutdown spans are dropped"
        );
        assert!(
            q.shutdown(Duration::from_secs(1)),
            "a second shutdown returns at once"
        );
    }

    /// A `ScopeSpans.spans` entry: a span with only its name.
    fn named(pb: &mut Pb, name: &str) {
        let n = name.len() as u8;
        pb.buf.extend_from_slice(&[0x12, n + 2, 0x2a, n]);
        pb.buf.extend_from_slice(name.as_bytes());
    }

    #[test]
    fn batches_are_posted_as_the_frame_encodes_them() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;

        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_attribute(opentelemetry::KeyValue::new("service.name", "q"))
            .build();
        let scope = InstrumentationScope::builder("gantry")
            .with_version("1.2.3")
            .with_schema_url("https://example.test/scope")
            .build();
        let frame = ScopeFrame::new(
            &super::super::otlp_traces::resource_body(&resource),
            "https://example.test/resource",
            &scope,
        );
        let bodies = Arc::new(Mutex::new(Vec::<Bytes>::new()));
        let sent = bodies.clone();
        let q = SpanQueue::start(
            Limits {
                max_queue: 100,
                max_batch: 3,
                delay: Duration::from_secs(3600),
            },
            Arc::default(),
            Export {
                resource: super::super::otlp_traces::resource_body(&resource),
                resource_schema: "https://example.test/resource".into(),
                scope: scope.clone(),
                post: Box::new(move |body| {
                    if let Ok(mut b) = sent.lock() {
                        b.push(body);
                    }
                    Ok(())
                }),
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let long = "n".repeat(100);
        // Two spans, flushed: one body. Then seven: two full batches, and one
        // span sent at shutdown.
        let names: Vec<String> = ["a", long.as_str()]
            .iter()
            .map(|s| s.to_string())
            .chain((0..7).map(|i| format!("s{i}")))
            .collect();
        for n in &names[..2] {
            q.push(|pb| named(pb, n));
        }
        assert!(q.flush(Duration::from_secs(10)));
        for n in &names[2..] {
            q.push(|pb| named(pb, n));
        }
        assert!(q.shutdown(Duration::from_secs(10)));
        let bodies = bodies.lock().map(|b| b.clone()).unwrap_or_default();
        let groups: [&[String]; 4] = [&names[..2], &names[2..5], &names[5..8], &names[8..]];
        assert_eq!(bodies.len(), groups.len());
        for (body, group) in bodies.iter().zip(groups) {
            let mut spans = Pb::default();
            for n in group {
                named(&mut spans, n);
            }
            let mut expected = Vec::new();
            frame.encode(&spans.buf, &mut expected);
            assert_eq!(&body[..], &expected[..]);
            let req = ExportTraceServiceRequest::decode(&body[..])
                .unwrap_or_else(|e| panic!("the body does not decode: {e}"));
            let rs = &req.resource_spans[0];
            assert_eq!(rs.schema_url, "https://example.test/resource");
            let attrs = &rs
                .resource
                .as_ref()
                .map(|r| r.attributes.clone())
                .unwrap_or_default();
            assert_eq!(attrs[0].key, "service.name");
            let ss = &rs.scope_spans[0];
            assert_eq!(ss.schema_url, "https://example.test/scope");
            let sc = ss.scope.clone().unwrap_or_default();
            assert_eq!((sc.name.as_str(), sc.version.as_str()), ("gantry", "1.2.3"));
            let got: Vec<&str> = ss.spans.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(got, group.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }

    #[test]
    fn the_delay_sends_a_partial_batch_and_failures_are_counted() {
        let limits = Limits {
            max_queue: 10,
            max_batch: 5,
            delay: Duration::from_millis(50),
        };
        let (q, sent, dropped) = queue(limits, true, None);
        q.push(|pb| entry(pb, 4));
        q.push(|pb| entry(pb, 4));
        let until = Instant::now() + Duration::from_secs(10);
        while dropped.load(Ordering::Relaxed) < 2 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
        assert_eq!(sent.lock().map(|s| s.len()).unwrap_or(0), 1);
        assert!(q.shutdown(Duration::from_secs(10)));
    }
}
