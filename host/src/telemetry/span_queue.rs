//! The export queue of server spans, as protobuf bytes.
//!
//! A server span is written, when it ends, straight into this queue's
//! buffer as one `Span` message of the request body ([`write_recorded`]);
//! its attributes were written as bytes when it started. Nothing else is
//! made per span: no `KeyValue` with its own copy of each string, no
//! `SpanData` moved through the SDK's channel into a batch, and nothing
//! for the export thread to read back, on another core, and free. Counted
//! with callgrind (`cargo bench -p gantry --bench telemetry`), what
//! telemetry adds to a request fell from 6.7k to 5.2k instructions.
//!
//! The queue keeps the SDK's batch rules and reads the same variables:
//! `OTEL_BSP_MAX_QUEUE_SIZE` (2048) spans at most are held, a span beyond
//! them is dropped and counted; an export starts when
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512) spans are waiting or
//! `OTEL_BSP_SCHEDULE_DELAY` (5000 ms) has passed, and carries at most that
//! many spans. Spans an export fails to deliver are counted too, in
//! `gantry_telemetry_dropped_total{signal="traces"}`.
//!
//! Used with the host's own `http/protobuf` exporter; for gRPC and
//! compressed export, server spans go through the SDK's queue as before.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;

use super::otlp_traces::{Pb, encode_scope_request};

/// Where a request body goes (the collector, or a test's list).
pub type Post = Box<dyn FnMut(Vec<u8>) -> Result<(), String> + Send>;

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
    /// Encoded `ScopeSpans.spans` entries, one after the other.
    spans: Vec<u8>,
    count: usize,
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
        let queue = Arc::new(SpanQueue {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            flushed: Condvar::new(),
            limits,
            dropped,
            told_full: AtomicBool::new(false),
        });
        let q = queue.clone();
        std::thread::Builder::new()
            .name("gantry-spans".into())
            .spawn(move || q.run(export))
            .map_err(|e| anyhow::anyhow!("cannot start the span export thread: {e}"))?;
        Ok(queue)
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while the lock was held leaves bytes at worst cut short
        // at a span's end (each span is written whole or not at all).
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one span, which `write` appends; dropped and counted when
    /// the queue is full or shut down.
    pub fn push(&self, write: impl FnOnce(&mut Pb)) {
        let mut p = self.lock();
        if p.closed || p.count >= self.limits.max_queue {
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
        // Told once per batch: each notification is a system call.
        if p.count == self.limits.max_batch {
            self.wake.notify_one();
        }
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
    /// schedule delay, takes everything queued and posts it in batches.
    fn run(&self, mut export: Export) {
        let mut spare = Vec::new();
        // The last body's size, to allocate the next one once.
        let mut size_hint = 0;
        loop {
            let deadline = Instant::now() + self.limits.delay;
            let mut p = self.lock();
            loop {
                if p.count >= self.limits.max_batch || p.flushes_asked > p.flushes_done || p.closed
                {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
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
            let count = std::mem::take(&mut p.count);
            let spans = std::mem::replace(&mut p.spans, std::mem::take(&mut spare));
            drop(p);

            if count > 0 {
                for (batch, n) in batches(&spans, self.limits.max_batch) {
                    let mut body = Vec::with_capacity(size_hint);
                    encode_scope_request(
                        &export.resource,
                        &export.resource_schema,
                        &export.scope,
                        batch,
                        &mut body,
                    );
                    size_hint = body.len();
                    if (export.post)(body).is_err() {
                        self.dropped.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            spare = spans;
            spare.clear();

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

/// `spans` (encoded `ScopeSpans.spans` entries) cut into runs of at most
/// `max` spans, each with its number of spans.
fn batches(spans: &[u8], max: usize) -> Vec<(&[u8], usize)> {
    let mut out = Vec::new();
    let (mut start, mut at, mut n) = (0, 0, 0);
    while at < spans.len() {
        // One tag byte (field 2, length-delimited), a varint length, the span.
        let mut len: usize = 0;
        let mut shift = 0;
        at += 1;
        while let Some(&b) = spans.get(at) {
            at += 1;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b < 0x80 {
                break;
            }
        }
        at = (at + len).min(spans.len());
        n += 1;
        if n == max {
            out.push((&spans[start..at], n));
            (start, n) = (at, 0);
        }
    }
    if n > 0 {
        out.push((&spans[start..], n));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn batches_cut_at_span_boundaries() {
        let mut pb = Pb::default();
        for len in [3, 200, 0, 17000, 5] {
            entry(&mut pb, len);
        }
        let runs = batches(&pb.buf, 2);
        let sizes: Vec<(usize, usize)> = runs.iter().map(|(b, n)| (b.len(), *n)).collect();
        assert_eq!(
            sizes,
            vec![(2 + 3 + 3 + 200, 2), (2 + 4 + 17000, 2), (2 + 5, 1)]
        );
        assert_eq!(batches(&pb.buf, 512).len(), 1);
        assert!(batches(&[], 2).is_empty());
    }

    fn queue(
        limits: Limits,
        fail: bool,
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
        let (q, sent, dropped) = queue(limits, false);
        for _ in 0..3 {
            q.push(|pb| entry(pb, 4));
        }
        let until = Instant::now() + Duration::from_secs(10);
        while sent.lock().map(|s| s.len()).unwrap_or(0) == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            sent.lock().map(|s| s.len()).unwrap_or(0),
            1,
            "a full batch is sent without waiting for the delay"
        );
        // Past the queue's size, spans are counted as dropped.
        for _ in 0..12 {
            q.push(|pb| entry(pb, 4));
        }
        assert!(q.flush(Duration::from_secs(10)));
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
        // 10 spans in batches of at most 3.
        assert_eq!(sent.lock().map(|s| s.len()).unwrap_or(0), 1 + 4);
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

    #[test]
    fn the_delay_sends_a_partial_batch_and_failures_are_counted() {
        let limits = Limits {
            max_queue: 10,
            max_batch: 5,
            delay: Duration::from_millis(50),
        };
        let (q, sent, dropped) = queue(limits, true);
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
