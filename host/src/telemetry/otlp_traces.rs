//! Spans over OTLP http/protobuf, encoded straight from the SDK's `SpanData`.
//!
//! The SDK's own exporter first converts every span into the generated
//! protobuf structs (a `String` or `Vec` per id, name, key and value), then
//! sizes and encodes them. Under load that conversion was most of the export
//! thread's CPU and a good share of the process's allocations. Here each batch
//! is written in one pass into one buffer: ids, names and attribute strings
//! are copied once, into the request body, and nothing else is allocated per
//! span. Batching, the queue and its limits stay the SDK's
//! (`OTEL_BSP_*`); the wire format is the same `ExportTraceServiceRequest`.
//!
//! Used for `http/protobuf` without compression (the default). gRPC and
//! compressed exports keep the SDK's exporter.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, Key, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::otlp_metrics::{env_first, env_millis, http_signal_url, signal_headers};

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// A protobuf writer. Scalars at their default value are left out (proto3),
/// except inside `AnyValue`'s oneof, where presence is the value.
#[derive(Default)]
pub struct Pb {
    pub buf: Vec<u8>,
}

/// A field's tag: its number and wire type.
fn tag(field: u32, wire: u32) -> u32 {
    (field << 3) | wire
}

/// `v` as a varint: the bytes and how many of them are used.
fn varint_bytes(mut v: u64) -> ([u8; 10], usize) {
    let mut out = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    (out, n + 1)
}

/// How many bytes `v` takes as a varint.
fn varint_len(v: u64) -> usize {
    // Most lengths here are short: skip the bit count.
    if v < 0x80 {
        return 1;
    }
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

impl Pb {
    fn varint(&mut self, v: u64) {
        // Most varints here (tags, short lengths) are one byte.
        if v < 0x80 {
            self.buf.push(v as u8);
        } else {
            let (bytes, n) = varint_bytes(v);
            self.buf.extend_from_slice(&bytes[..n]);
        }
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(tag(field, wire)));
    }

    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v);
        }
    }

    fn fixed64(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, FIXED64);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn fixed32(&mut self, field: u32, v: u32) {
        if v != 0 {
            self.key(field, FIXED32);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// A string or bytes field, left out when empty.
    fn bytes(&mut self, field: u32, b: &[u8]) {
        if !b.is_empty() {
            self.present_bytes(field, b);
        }
    }

    fn present_bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// An embedded message, written in place behind a one-byte length:
    /// right for most messages (a key and value, a value), which are under
    /// 128 bytes.
    fn message(&mut self, field: u32, body: impl FnOnce(&mut Pb)) {
        self.message_in(field, 1, body);
    }

    /// An embedded message, written in place behind `width` bytes kept for
    /// its length. When the length needs exactly that many the body stays
    /// where it was written; otherwise it is moved once, forward or back.
    /// Callers give the width their kind of message usually needs (a span
    /// two bytes, a batch's scope three), so that a batch is not moved along
    /// once per level of nesting.
    fn message_in(&mut self, field: u32, width: usize, body: impl FnOnce(&mut Pb)) {
        self.key(field, LEN);
        let at = self.buf.len();
        self.buf.resize(at + width, 0);
        body(self);
        let end = self.buf.len();
        let (prefix, n) = varint_bytes((end - at - width) as u64);
        if n > width {
            self.buf.resize(end + n - width, 0);
            self.buf.copy_within(at + width..end, at + n);
        } else if n < width {
            self.buf.copy_within(at + width..end, at + n);
            self.buf.truncate(end - (width - n));
        }
        self.buf[at..at + n].copy_from_slice(&prefix[..n]);
    }

    fn any_value(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.present_bytes(1, s.as_str().as_bytes()),
            Value::Bool(b) => {
                self.key(2, VARINT);
                self.varint(u64::from(*b));
            }
            Value::I64(i) => {
                self.key(3, VARINT);
                self.varint(*i as u64);
            }
            Value::F64(f) => {
                self.key(4, FIXED64);
                self.buf.extend_from_slice(&f.to_le_bytes());
            }
            Value::Array(a) => self.message(5, |pb| pb.array(a)),
            // A kind of value newer than this encoder: its text.
            other => self.present_bytes(1, other.as_str().as_bytes()),
        }
    }

    fn array(&mut self, a: &Array) {
        match a {
            Array::Bool(v) => v
                .iter()
                .for_each(|x| self.message(1, |pb| pb.any_value(&Value::Bool(*x)))),
            Array::I64(v) => v
                .iter()
                .for_each(|x| self.message(1, |pb| pb.any_value(&Value::I64(*x)))),
            Array::F64(v) => v
                .iter()
                .for_each(|x| self.message(1, |pb| pb.any_value(&Value::F64(*x)))),
            Array::String(v) => v
                .iter()
                .for_each(|x| self.message(1, |pb| pb.present_bytes(1, x.as_str().as_bytes()))),
            other => {
                let text = other.to_string();
                self.message(1, |pb| pb.present_bytes(1, text.as_bytes()));
            }
        }
    }

    /// A `KeyValue`: scalars by [`Pb::scalar_attribute`], arrays behind
    /// placeholders.
    fn attribute(&mut self, field: u32, k: &Key, v: &Value) {
        let scalar = match v {
            Value::String(s) => Scalar::Str(s.as_str()),
            Value::Bool(b) => Scalar::Bool(*b),
            Value::I64(i) => Scalar::I64(*i),
            Value::F64(f) => Scalar::F64(*f),
            _ => {
                let key = k.as_str().as_bytes();
                self.message(field, |pb| {
                    pb.bytes(1, key);
                    pb.message(2, |pb| pb.any_value(v));
                });
                return;
            }
        };
        self.scalar_attribute(field, k.as_str(), scalar);
    }

    /// `kv` as a span's attribute (field 9).
    pub fn attribute_field(&mut self, kv: &opentelemetry::KeyValue) {
        self.attribute(9, &kv.key, &kv.value);
    }

    /// A `KeyValue` with a scalar value (every attribute the host sets).
    /// Both lengths are known before anything is written, so the attribute
    /// is written front to back in at most four appends: its head (tag,
    /// length, the key's tag and length), the key, the value's head (with a
    /// number or boolean in it), and a string value's bytes.
    pub fn scalar_attribute(&mut self, field: u32, key: &str, v: Scalar<'_>) {
        let key = key.as_bytes();
        let (value_len, text): (usize, &[u8]) = match v {
            Scalar::Str(s) => (1 + varint_len(s.len() as u64) + s.len(), s.as_bytes()),
            Scalar::Bool(_) => (2, &[]),
            Scalar::I64(i) => (1 + varint_len(i as u64), &[]),
            Scalar::F64(_) => (9, &[]),
        };
        let key_len = if key.is_empty() {
            0
        } else {
            1 + varint_len(key.len() as u64) + key.len()
        };
        let kv_len = key_len + 1 + varint_len(value_len as u64) + value_len;
        self.buf.reserve(2 * Head::SIZE + key.len() + text.len());
        // Most attributes are under 128 bytes, where every tag and length is
        // one byte: those heads are four fixed bytes.
        // With `field < 16`, every tag here fits in one byte.
        let tag8 = |field: u32, wire: u32| tag(field, wire) as u8;
        if field < 16 && kv_len < 0x80 && !key.is_empty() {
            self.buf.extend_from_slice(&[
                tag8(field, LEN),
                kv_len as u8,
                tag8(1, LEN),
                key.len() as u8,
            ]);
        } else {
            // At most 5 + 10 + 1 + 10 bytes.
            let mut head = Head::default();
            head.key(field, LEN);
            head.varint(kv_len as u64);
            if !key.is_empty() {
                head.key(1, LEN);
                head.varint(key.len() as u64);
            }
            self.head(&head);
        }
        self.buf.extend_from_slice(key);
        match v {
            Scalar::Str(_) if value_len < 0x80 => self.buf.extend_from_slice(&[
                tag8(2, LEN),
                value_len as u8,
                tag8(1, LEN),
                text.len() as u8,
            ]),
            Scalar::Bool(b) => {
                self.buf
                    .extend_from_slice(&[tag8(2, LEN), 2, tag8(2, VARINT), u8::from(b)]);
            }
            _ => {
                // At most 1 + 10 + 1 + 10 bytes.
                let mut head = Head::default();
                head.key(2, LEN);
                head.varint(value_len as u64);
                match v {
                    Scalar::I64(i) => {
                        head.key(3, VARINT);
                        head.varint(i as u64);
                    }
                    Scalar::F64(f) => {
                        head.key(4, FIXED64);
                        head.fixed64(f.to_bits());
                    }
                    _ => {
                        head.key(1, LEN);
                        head.varint(text.len() as u64);
                    }
                }
                self.head(&head);
            }
        }
        self.buf.extend_from_slice(text);
    }

    /// Appends `head`'s bytes: all of its buffer is copied (a copy of a
    /// fixed size, which needs no call to `memcpy`), then the unused tail
    /// is cut off again.
    fn head(&mut self, head: &Head) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&head.bytes);
        self.buf.truncate(at + head.len);
    }
}

/// An attribute's value when it is not an array.
#[derive(Clone, Copy, Debug)]
pub enum Scalar<'a> {
    Str(&'a str),
    Bool(bool),
    I64(i64),
    F64(f64),
}

/// Tags, lengths and small values of one field, gathered on the stack so
/// that they reach the body in one append ([`Pb::head`]). Every caller
/// writes at most [`Head::SIZE`] bytes into one.
#[derive(Default)]
struct Head {
    bytes: [u8; Head::SIZE],
    len: usize,
}

impl Head {
    const SIZE: usize = 32;

    fn byte(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }

    fn varint(&mut self, v: u64) {
        if v < 0x80 {
            self.byte(v as u8);
        } else {
            let (bytes, n) = varint_bytes(v);
            self.put(&bytes[..n]);
        }
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(tag(field, wire)));
    }

    fn put(&mut self, b: &[u8]) {
        self.bytes[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }

    fn fixed64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }

    /// A nonzero `fixed64` field (proto3 leaves zero out).
    fn fixed64_field(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.key(field, FIXED64);
            self.fixed64(v);
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// OTLP span flags: the W3C trace flags, and whether the parent (or the
/// linked span) is remote, with the bit that says that is known.
fn span_flags(sc_flags: u8, remote: bool) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(sc_flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

fn kind_code(kind: &SpanKind) -> u8 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// Trace id, span id and tracestate, the first fields of a span and a link.
fn ids(pb: &mut Pb, sc: &SpanContext) {
    // 2 + 16 + 2 + 8 bytes.
    let mut head = Head::default();
    head.key(1, LEN);
    head.byte(16);
    head.put(&sc.trace_id().to_bytes());
    head.key(2, LEN);
    head.byte(8);
    head.put(&sc.span_id().to_bytes());
    pb.head(&head);
    let state = sc.trace_state().header();
    pb.bytes(3, state.as_bytes());
}

/// Fields 1 to 8 of a `Span` (opentelemetry/proto/trace/v1/trace.proto):
/// ids, tracestate, parent, name, kind, start and end.
fn span_head(
    pb: &mut Pb,
    sc: &SpanContext,
    parent: SpanId,
    name: &str,
    kind: &SpanKind,
    times: (SystemTime, SystemTime),
) {
    ids(pb, sc);
    if parent != SpanId::INVALID {
        pb.bytes(4, &parent.to_bytes());
    }
    pb.bytes(5, name.as_bytes());
    // Kind, start and end: 2 + 9 + 9 bytes.
    let mut head = Head::default();
    head.key(6, VARINT);
    head.byte(kind_code(kind));
    head.fixed64_field(7, unix_nanos(times.0));
    head.fixed64_field(8, unix_nanos(times.1));
    pb.head(&head);
}

/// Fields 15 and 16 of a `Span`: status and flags.
fn span_tail(pb: &mut Pb, status: &Status, sc: &SpanContext, parent_is_remote: bool) {
    match status {
        // Present though empty, as the SDK's conversion writes it.
        Status::Unset => pb.message(15, |_| {}),
        Status::Ok => pb.message(15, |pb| pb.uint(3, 1)),
        Status::Error { description } => pb.message(15, |pb| {
            pb.bytes(2, description.as_bytes());
            pb.uint(3, 2);
        }),
    }
    pb.fixed32(16, span_flags(sc.trace_flags().to_u8(), parent_is_remote));
}

/// One `Span` message from the SDK's record of it.
fn span(pb: &mut Pb, s: &SpanData) {
    span_head(
        pb,
        &s.span_context,
        s.parent_span_id,
        &s.name,
        &s.span_kind,
        (s.start_time, s.end_time),
    );
    for kv in &s.attributes {
        pb.attribute(9, &kv.key, &kv.value);
    }
    pb.uint(10, u64::from(s.dropped_attributes_count));
    for e in s.events.iter() {
        pb.message(11, |pb| {
            pb.fixed64(1, unix_nanos(e.timestamp));
            pb.bytes(2, e.name.as_bytes());
            for kv in &e.attributes {
                pb.attribute(3, &kv.key, &kv.value);
            }
            pb.uint(4, u64::from(e.dropped_attributes_count));
        });
    }
    pb.uint(12, u64::from(s.events.dropped_count));
    for l in s.links.iter() {
        pb.message(13, |pb| {
            ids(pb, &l.span_context);
            for kv in &l.attributes {
                pb.attribute(4, &kv.key, &kv.value);
            }
            pb.uint(5, u64::from(l.dropped_attributes_count));
            pb.fixed32(
                6,
                span_flags(
                    l.span_context.trace_flags().to_u8(),
                    l.span_context.is_remote(),
                ),
            );
        });
    }
    pb.uint(14, u64::from(s.links.dropped_count));
    span_tail(pb, &s.status, &s.span_context, s.parent_span_is_remote);
}

/// A span the host recorded itself, without events or links, whose
/// attributes are already written as `Span` field 9 (by
/// [`Pb::scalar_attribute`] or [`Pb::attribute_field`]).
pub struct RecordedSpan<'a> {
    pub context: &'a SpanContext,
    pub parent_span_id: SpanId,
    pub parent_is_remote: bool,
    pub kind: SpanKind,
    pub name: &'a str,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: &'a [u8],
    pub dropped_attributes: u32,
    pub status: &'a Status,
}

/// Appends `s` as one entry of `ScopeSpans.spans` (field 2): the same
/// bytes [`encode_request`] writes for the `SpanData` with these fields.
pub fn write_recorded(pb: &mut Pb, s: &RecordedSpan<'_>) {
    pb.message_in(2, 2, |pb| {
        span_head(
            pb,
            s.context,
            s.parent_span_id,
            s.name,
            &s.kind,
            (s.start, s.end),
        );
        pb.buf.extend_from_slice(s.attributes);
        pb.uint(10, u64::from(s.dropped_attributes));
        span_tail(pb, s.status, s.context, s.parent_is_remote);
    });
}

fn scope(pb: &mut Pb, scope: &InstrumentationScope) {
    pb.bytes(1, scope.name().as_bytes());
    pb.bytes(2, scope.version().unwrap_or_default().as_bytes());
    for kv in scope.attributes() {
        pb.attribute(3, &kv.key, &kv.value);
    }
}

/// The body of a `Resource` message.
pub fn resource_body(resource: &Resource) -> Vec<u8> {
    let mut pb = Pb::default();
    for (k, v) in resource.iter() {
        pb.attribute(1, k, v);
    }
    pb.buf
}

/// Whether two spans were recorded under the same scope. The SDK's `==`
/// collects and sorts both scopes' attributes into new vectors each time;
/// scopes without attributes (the host's and most libraries') need only
/// their names, versions and schemas compared.
fn same_scope(a: &InstrumentationScope, b: &InstrumentationScope) -> bool {
    if a.name() != b.name() || a.version() != b.version() || a.schema_url() != b.schema_url() {
        return false;
    }
    (a.attributes().next().is_none() && b.attributes().next().is_none()) || a == b
}

/// The `ResourceSpans` of an `ExportTraceServiceRequest`, around what
/// `body` writes (its `ScopeSpans`).
fn request(pb: &mut Pb, resource: &[u8], resource_schema: &str, body: impl FnOnce(&mut Pb)) {
    // A batch of hundreds of spans needs three bytes for its length (up to
    // 2 MiB), a span with its attributes two.
    pb.message_in(1, 3, |pb| {
        pb.message(1, |pb| pb.buf.extend_from_slice(resource));
        body(pb);
        pb.bytes(3, resource_schema.as_bytes());
    });
}

/// One `ScopeSpans` of `sc`, with the spans `body` writes.
fn scope_spans(pb: &mut Pb, sc: &InstrumentationScope, body: impl FnOnce(&mut Pb)) {
    pb.message_in(2, 3, |pb| {
        pb.message(1, |pb| scope(pb, sc));
        body(pb);
        pb.bytes(3, sc.schema_url().unwrap_or_default().as_bytes());
    });
}

/// An `ExportTraceServiceRequest` for `batch`: one `ResourceSpans`, one
/// `ScopeSpans` per instrumentation scope, in order of first appearance.
pub fn encode_request(
    resource: &[u8],
    resource_schema: &str,
    batch: &[SpanData],
    out: &mut Vec<u8>,
) {
    // Each span's scope, as an index into `scopes`, found once.
    let mut scopes: Vec<&InstrumentationScope> = Vec::new();
    let mut scope_of = Vec::with_capacity(batch.len());
    let mut last = 0;
    for s in batch {
        let sc = &s.instrumentation_scope;
        if scopes.get(last).is_none_or(|known| !same_scope(known, sc)) {
            last = match scopes.iter().position(|known| same_scope(known, sc)) {
                Some(i) => i,
                None => {
                    scopes.push(sc);
                    scopes.len() - 1
                }
            };
        }
        scope_of.push(last);
    }
    let mut pb = Pb {
        buf: std::mem::take(out),
    };
    request(&mut pb, resource, resource_schema, |pb| {
        for (i, sc) in scopes.iter().enumerate() {
            scope_spans(pb, sc, |pb| {
                for (s, _) in batch.iter().zip(&scope_of).filter(|(_, of)| **of == i) {
                    pb.message_in(2, 2, |pb| span(pb, s));
                }
            });
        }
    });
    *out = pb.buf;
}

/// What surrounds the spans of an `ExportTraceServiceRequest` of one
/// resource and one scope, made once: a request is [`ScopeFrame::head`],
/// the spans as [`write_recorded`] wrote them, and [`ScopeFrame::tail`].
/// Since the head is known once the spans' length is, the export queue
/// writes it into room it left before the spans, and posts the batch where
/// the spans were written.
pub struct ScopeFrame {
    /// `ResourceSpans.resource`, tag and length included.
    resource: Vec<u8>,
    /// `ScopeSpans.scope`, tag and length included.
    scope: Vec<u8>,
    /// `ScopeSpans.schema_url`, then `ResourceSpans.schema_url` (each
    /// left out when empty).
    tail: Vec<u8>,
    /// How much of `tail` belongs to the `ScopeSpans`.
    scope_tail: usize,
}

impl ScopeFrame {
    pub fn new(resource: &[u8], resource_schema: &str, sc: &InstrumentationScope) -> ScopeFrame {
        let mut r = Pb::default();
        r.message(1, |pb| pb.buf.extend_from_slice(resource));
        let mut s = Pb::default();
        s.message(1, |pb| scope(pb, sc));
        let mut t = Pb::default();
        t.bytes(3, sc.schema_url().unwrap_or_default().as_bytes());
        let scope_tail = t.buf.len();
        t.bytes(3, resource_schema.as_bytes());
        ScopeFrame {
            resource: r.buf,
            scope: s.buf,
            tail: t.buf,
            scope_tail,
        }
    }

    /// The longest head there can be: two tags and two lengths of up to
    /// ten bytes each around the resource and the scope.
    pub fn max_head(&self) -> usize {
        2 * (1 + 10) + self.resource.len() + self.scope.len()
    }

    /// Appends to `out` the head of a request whose spans take `spans`
    /// bytes.
    pub fn head(&self, spans: usize, out: &mut Vec<u8>) {
        let scope_spans = self.scope.len() + spans + self.scope_tail;
        let resource_spans = self.resource.len()
            + 1
            + varint_len(scope_spans as u64)
            + scope_spans
            + (self.tail.len() - self.scope_tail);
        let mut pb = Pb {
            buf: std::mem::take(out),
        };
        pb.key(1, LEN);
        pb.varint(resource_spans as u64);
        pb.buf.extend_from_slice(&self.resource);
        pb.key(2, LEN);
        pb.varint(scope_spans as u64);
        pb.buf.extend_from_slice(&self.scope);
        *out = pb.buf;
    }

    /// What follows the spans.
    pub fn tail(&self) -> &[u8] {
        &self.tail
    }

    /// A whole request for `spans`, appended to `out`: what the queue
    /// posts, as the tests build it to compare.
    #[cfg(test)]
    pub fn encode(&self, spans: &[u8], out: &mut Vec<u8>) {
        out.reserve(self.max_head() + spans.len() + self.tail.len());
        self.head(spans.len(), out);
        out.extend_from_slice(spans);
        out.extend_from_slice(&self.tail);
    }
}

/// Is the trace export `http/protobuf` without compression, the case this
/// exporter serves?
pub fn applies() -> bool {
    let protocol = env_first(&[
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ])
    .unwrap_or_else(|| "http/protobuf".into());
    let compression = env_first(&[
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ])
    .unwrap_or_default();
    protocol == "http/protobuf" && (compression.is_empty() || compression == "none")
}

/// Posts encoded batches to the collector's `/v1/traces`.
#[derive(Debug)]
pub struct HttpSpanExporter {
    url: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
    /// Built on first use, on the SDK's export thread: a blocking client
    /// must not be made or dropped inside the async runtime.
    client: OnceLock<Result<reqwest::blocking::Client, String>>,
    resource: Vec<u8>,
    resource_schema: String,
    /// The last body's size, to allocate the next one once.
    size_hint: AtomicUsize,
    failing: AtomicBool,
}

impl HttpSpanExporter {
    /// Configured by the standard variables: the traces endpoint as given,
    /// or the general one with `/v1/traces`; headers; timeout. An endpoint
    /// that is not an http(s) URL is refused here, at start. Every batch
    /// names `resource`.
    pub fn from_env(resource: &Resource) -> anyhow::Result<HttpSpanExporter> {
        let url = http_signal_url(
            "TRACES",
            env_first(&["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]),
            env_first(&["OTEL_EXPORTER_OTLP_ENDPOINT"]),
        )?;
        let timeout = if env_first(&["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"]).is_some() {
            env_millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 10_000)
        } else {
            env_millis("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)
        };
        Ok(HttpSpanExporter {
            url,
            headers: signal_headers("TRACES"),
            timeout,
            client: OnceLock::new(),
            resource: resource_body(resource),
            resource_schema: resource.schema_url().unwrap_or_default().to_string(),
            size_hint: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
        })
    }

    fn post(&self, body: bytes::Bytes) -> Result<(), String> {
        let client = self
            .client
            .get_or_init(|| {
                reqwest::blocking::Client::builder()
                    .timeout(self.timeout)
                    .build()
                    .map_err(|e| format!("cannot build the HTTP client: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        let mut req = client
            .post(self.url.as_str())
            .header("content-type", "application/x-protobuf")
            .body(body);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("collector answered {}", resp.status()));
        }
        Ok(())
    }
}

impl HttpSpanExporter {
    /// Posts one encoded request; the first failure after a success is
    /// logged, and so is the recovery.
    pub fn send(&self, body: bytes::Bytes) -> Result<(), String> {
        match self.post(body) {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %self.url, "trace export recovered");
                }
                Ok(())
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(url = %self.url, error = %e, "trace export failed; spans are dropped and counted until it recovers");
                }
                Err(e)
            }
        }
    }
}

impl SpanExporter for HttpSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let mut body = Vec::with_capacity(self.size_hint.load(Ordering::Relaxed));
        encode_request(&self.resource, &self.resource_schema, &batch, &mut body);
        self.size_hint.store(body.len(), Ordering::Relaxed);
        self.send(body.into())
            .map_err(OTelSdkError::InternalFailure)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource_body(resource);
        self.resource_schema = resource.schema_url().unwrap_or_default().to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        Link, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
        TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use prost::Message as _;

    /// Spans of every shape the host makes: a server span under a remote
    /// parent with tracestate, attributes of every kind, an event, a link,
    /// an error; a client span; an OK span of a second scope with a version
    /// and attributes; a root span with nothing set.
    fn spans() -> (Vec<SpanData>, Resource) {
        let keep = crate::telemetry::KeepSpans::default();
        let resource = Resource::builder()
            .with_service_name("otlp-test")
            .with_attribute(KeyValue::new("service.version", "1.2.3"))
            .with_schema_url([], "https://opentelemetry.io/schemas/1.26.0")
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(keep.clone())
            .with_resource(resource.clone())
            .build();
        let gantry = provider.tracer("gantry");
        let scope = InstrumentationScope::builder("guest")
            .with_version("0.1")
            .with_schema_url("https://example.com/schema")
            .with_attributes([KeyValue::new("scope.attr", 7)])
            .build();
        let guest = provider.tracer_with_scope(scope);

        let state =
            TraceState::from_key_value([("vendor", "v1"), ("other", "x")]).unwrap_or_default();
        let remote = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
            SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
            TraceFlags::SAMPLED,
            true,
            state,
        );
        let parent = Context::new().with_remote_span_context(remote.clone());
        let server = gantry
            .span_builder("GET /hello")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.route", "/hello"),
                KeyValue::new("client.port", 51234_i64),
                KeyValue::new("negative", -3_i64),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("flag", true),
                KeyValue::new("off", false),
                KeyValue::new("empty", ""),
                KeyValue::new("zero", 0_i64),
                KeyValue::new("long", "x".repeat(300)),
                KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2, 300]))),
                KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("floats", Value::Array(Array::F64(vec![1.5, -0.0]))),
                KeyValue::new(
                    "strings",
                    Value::Array(Array::String(vec!["a".into(), "".into()])),
                ),
            ])
            .with_links(vec![Link::new(
                remote.clone(),
                vec![KeyValue::new("link.kind", "follows")],
                0,
            )])
            .start_with_context(&gantry, &parent);
        let cx = parent.with_span(server);
        let mut client = gantry
            .span_builder("GET")
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("server.address", "127.0.0.1")])
            .start_with_context(&gantry, &cx);
        use opentelemetry::trace::Span as _;
        client.end();
        let mut inner = guest.start_with_context("example-request", &cx);
        inner.add_event("step", vec![KeyValue::new("n", 1_i64)]);
        inner.set_status(Status::Ok);
        inner.end();
        let span = cx.span();
        span.add_event("body sent", vec![]);
        span.set_status(Status::error("HTTP 500"));
        span.end();
        gantry.start("root").end();
        let _ = provider.shutdown();
        let spans = keep.0.lock().map(|v| v.clone()).unwrap_or_default();
        (spans, resource)
    }

    #[test]
    fn encodes_what_the_sdk_conversion_produces() {
        let (spans, resource) = spans();
        assert_eq!(spans.len(), 4, "the provider should have ended four spans");
        let mut body = Vec::new();
        encode_request(
            &resource_body(&resource),
            resource.schema_url().unwrap_or_default(),
            &spans,
            &mut body,
        );
        let ours = ExportTraceServiceRequest::decode(body.as_slice())
            .unwrap_or_else(|e| panic!("our body does not decode: {e}"));
        let reference = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(ours, reference);
        // And byte for byte, once the reference is re-encoded: the same
        // fields, in field order, with proto3 defaults left out.
        assert_eq!(body, reference.encode_to_vec());
        assert_eq!(ours.resource_spans[0].scope_spans.len(), 2);
    }

    /// A span written where it ended ([`write_recorded`], attributes by
    /// [`Pb::scalar_attribute`]) is byte for byte the `SpanData` with the
    /// same fields through [`encode_request`], and so what the SDK's
    /// conversion produces.
    #[test]
    fn recorded_spans_encode_as_their_span_data() {
        let resource = Resource::builder().with_service_name("otlp-test").build();
        let scope = InstrumentationScope::builder("gantry").build();
        let state = TraceState::from_key_value([("vendor", "abc")]).unwrap_or_default();
        let sc = SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0xb7ad6b7169203331_u64),
            TraceFlags::SAMPLED,
            false,
            state,
        );
        let long = "x".repeat(300);
        let values: Vec<(&str, Scalar<'_>)> = vec![
            ("http.request.method", Scalar::Str("GET")),
            ("url.path", Scalar::Str(&long)),
            ("", Scalar::Str("no key")),
            ("client.port", Scalar::I64(51234)),
            ("negative", Scalar::I64(-3)),
            ("ratio", Scalar::F64(0.25)),
            ("flag", Scalar::Bool(true)),
            ("empty", Scalar::Str("")),
        ];
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let end = start + Duration::from_micros(250);
        for (parent, remote, status) in [
            (SpanId::from(0x00f067aa0ba902b7_u64), true, Status::Unset),
            (SpanId::INVALID, false, Status::error("HTTP 500")),
            (SpanId::from(1_u64), false, Status::Ok),
        ] {
            let mut attrs = Pb::default();
            for (k, v) in &values {
                attrs.scalar_attribute(9, k, *v);
            }
            let mut spans = Pb::default();
            write_recorded(
                &mut spans,
                &RecordedSpan {
                    context: &sc,
                    parent_span_id: parent,
                    parent_is_remote: remote,
                    kind: SpanKind::Server,
                    name: "GET /x",
                    start,
                    end,
                    attributes: &attrs.buf,
                    dropped_attributes: 3,
                    status: &status,
                },
            );
            let mut ours = Vec::new();
            ScopeFrame::new(&resource_body(&resource), "", &scope).encode(&spans.buf, &mut ours);
            let data = SpanData {
                span_context: sc.clone(),
                parent_span_id: parent,
                parent_span_is_remote: remote,
                span_kind: SpanKind::Server,
                name: "GET /x".into(),
                start_time: start,
                end_time: end,
                attributes: values
                    .iter()
                    .map(|(k, v)| {
                        let k = k.to_string();
                        match *v {
                            Scalar::Str(s) => KeyValue::new(k, s.to_string()),
                            Scalar::Bool(b) => KeyValue::new(k, b),
                            Scalar::I64(i) => KeyValue::new(k, i),
                            Scalar::F64(f) => KeyValue::new(k, f),
                        }
                    })
                    .collect(),
                dropped_attributes_count: 3,
                events: Default::default(),
                links: Default::default(),
                status,
                instrumentation_scope: scope.clone(),
            };
            let mut theirs = Vec::new();
            encode_request(&resource_body(&resource), "", &[data], &mut theirs);
            assert_eq!(ours, theirs);
            ExportTraceServiceRequest::decode(ours.as_slice())
                .unwrap_or_else(|e| panic!("does not decode: {e}"));
        }
    }

    #[test]
    fn scopes_are_told_apart_as_the_sdk_tells_them() {
        let scope = |name: &'static str, version: Option<&'static str>, attrs: Vec<KeyValue>| {
            let mut b = InstrumentationScope::builder(name).with_attributes(attrs);
            if let Some(v) = version {
                b = b.with_version(v);
            }
            b.build()
        };
        let a = KeyValue::new("a", 1_i64);
        let b = KeyValue::new("b", "x");
        let cases = [
            (scope("gantry", None, vec![]), scope("gantry", None, vec![])),
            (scope("gantry", None, vec![]), scope("guest", None, vec![])),
            (
                scope("gantry", Some("1"), vec![]),
                scope("gantry", None, vec![]),
            ),
            (
                scope("gantry", Some("1"), vec![]),
                scope("gantry", Some("2"), vec![]),
            ),
            (scope("g", None, vec![a.clone()]), scope("g", None, vec![])),
            (
                scope("g", None, vec![a.clone(), b.clone()]),
                scope("g", None, vec![b.clone(), a.clone()]),
            ),
            (
                scope("g", None, vec![a.clone()]),
                scope("g", None, vec![KeyValue::new("a", 2_i64)]),
            ),
        ];
        for (x, y) in &cases {
            assert_eq!(same_scope(x, y), x == y, "{x:?} and {y:?}");
            assert_eq!(same_scope(y, x), x == y, "{y:?} and {x:?}");
        }
        // Both answers occur among the cases.
        assert!(cases.iter().any(|(x, y)| x == y));
        assert!(cases.iter().any(|(x, y)| x != y));
    }

    #[test]
    fn varints_are_as_long_as_prost_writes_them() {
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut pb = Pb::default();
            pb.varint(v);
            let mut want = Vec::new();
            prost::encoding::encode_varint(v, &mut want);
            assert_eq!(pb.buf, want, "{v}");
            assert_eq!(varint_len(v), want.len(), "{v}");
        }
    }

    #[test]
    fn lengths_of_every_size_are_prefixed_correctly() {
        for n in [
            0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000, 2_097_151, 2_097_152,
        ] {
            let mut want = Vec::new();
            prost::encoding::bytes::encode(1, &vec![7u8; n], &mut want);
            // Whatever width was kept for the length, and whether the body
            // then moves forward or back, or not at all.
            for width in 1..=4 {
                let mut pb = Pb::default();
                pb.message_in(1, width, |pb| pb.buf.extend(std::iter::repeat_n(7u8, n)));
                assert_eq!(pb.buf, want, "length {n}, {width} bytes kept");
            }
            // The same message inside another, behind a field of its own.
            let mut inner = Vec::new();
            prost::encoding::uint64::encode(1, &300, &mut inner);
            prost::encoding::bytes::encode(2, &vec![7u8; n], &mut inner);
            let mut want = Vec::new();
            prost::encoding::bytes::encode(3, &inner, &mut want);
            for (outer_width, inner_width) in [(1, 1), (3, 2), (1, 3), (4, 1)] {
                let mut pb = Pb::default();
                pb.message_in(3, outer_width, |pb| {
                    pb.uint(1, 300);
                    pb.message_in(2, inner_width, |pb| {
                        pb.buf.extend(std::iter::repeat_n(7u8, n))
                    });
                });
                assert_eq!(
                    pb.buf, want,
                    "nested, length {n}, {outer_width} and {inner_width} bytes kept"
                );
            }
        }
    }
}
