//! Spin's Redis interface: `spin:redis/redis@3.0.0` (spin-sdk 5+, async
//! functions) and `fermyon:spin/redis@2.0.0` (spin-sdk 2 to 4), to servers
//! granted by `allowed_outbound_hosts` (`redis://host:port`, `rediss://`).
//!
//! Owns: each instance's open connections (at most [`MAX_OPEN`] per
//! request) and the app-wide pool they come from: one multiplexed,
//! reconnecting connection (`redis::aio::ConnectionManager`) per component
//! and address, at most [`MAX_POOLED`] of them. Every call is bounded by
//! [`CALL_TIMEOUT`] and by its request's deadline, whichever comes first; a
//! server that stops answering costs the calls waiting on it an error, and
//! the next call after it is back reconnects. A result larger than
//! [`MAX_RESULT_BYTES`] is an error to the guest.
//!
//! Each call is a client span, child of the guest's current span, named and
//! attributed by the OpenTelemetry database conventions (`db.system.name`
//! `redis`, `db.operation.name`, `server.address`, `server.port`), and an
//! observation of `db.client.operation.duration`. A denied address is
//! `invalid-address` to the guest, as under Spin, and is counted in
//! `gantry_outbound_denied_total`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt as _;
use wasmtime::component::{Accessor, Linker, Resource};

use super::bindings;
use super::otel::GuestTelemetry;
use super::outbound_http::OutboundPolicy;
use super::{Capability, HostState, Request, Settings};
use crate::manifest::{ComponentSpec, ManifestError, default_port};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::{Tracing, end_failed_span};

use bindings::fermyon::spin::redis as v2;
use bindings::spin::redis::redis as v3;

/// Most connections one request may hold open.
pub const MAX_OPEN: usize = 16;
/// Most pooled connections the app keeps (distinct component and address
/// pairs); past it, a new address is `too-many-connections`.
pub const MAX_POOLED: usize = 256;
/// Longest one call (connecting included) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest result (values' bytes) one call may return to a guest.
pub const MAX_RESULT_BYTES: usize = 32 << 20;

/// Commands named as themselves in metric labels; others are `_OTHER`
/// there (a guest chooses what it runs through `execute`).
const KNOWN_COMMANDS: &[&str] = &[
    "APPEND",
    "BLPOP",
    "BRPOP",
    "DBSIZE",
    "DECR",
    "DECRBY",
    "DEL",
    "ECHO",
    "EVAL",
    "EVALSHA",
    "EXISTS",
    "EXPIRE",
    "EXPIREAT",
    "FLUSHALL",
    "FLUSHDB",
    "GET",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HDEL",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HINCRBY",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HSET",
    "HVALS",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "INFO",
    "KEYS",
    "LINDEX",
    "LLEN",
    "LPOP",
    "LPUSH",
    "LRANGE",
    "LREM",
    "LSET",
    "LTRIM",
    "MGET",
    "MSET",
    "PERSIST",
    "PEXPIRE",
    "PING",
    "PTTL",
    "PUBLISH",
    "RENAME",
    "RPOP",
    "RPUSH",
    "SADD",
    "SCAN",
    "SCARD",
    "SET",
    "SETEX",
    "SETNX",
    "SISMEMBER",
    "SMEMBERS",
    "SREM",
    "STRLEN",
    "TIME",
    "TTL",
    "TYPE",
    "UNLINK",
    "XADD",
    "XLEN",
    "XRANGE",
    "XREAD",
    "ZADD",
    "ZCARD",
    "ZINCRBY",
    "ZRANGE",
    "ZRANK",
    "ZREM",
    "ZSCORE",
];

/// Why a call failed, before it is one version's `error`.
#[derive(Debug, Clone)]
enum Failure {
    InvalidAddress,
    TooManyConnections,
    TypeError,
    Other(String),
}

impl Failure {
    /// `error.type` of the span and the metric.
    fn kind(&self) -> &'static str {
        match self {
            Failure::InvalidAddress => "invalid_address",
            Failure::TooManyConnections => "too_many_connections",
            Failure::TypeError => "type_error",
            Failure::Other(_) => "redis_error",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::InvalidAddress => f.write_str("invalid or not allowed address"),
            Failure::TooManyConnections => f.write_str("too many connections"),
            Failure::TypeError => f.write_str("the value is not of the expected type"),
            Failure::Other(m) => f.write_str(m),
        }
    }
}

fn failure(e: redis::RedisError) -> Failure {
    let wrong_type = e.kind() == redis::ErrorKind::UnexpectedReturnType
        || e.code() == Some("WRONGTYPE")
        || e.detail().is_some_and(|d| d.contains("not an integer"));
    if wrong_type {
        Failure::TypeError
    } else {
        Failure::Other(e.to_string())
    }
}

/// Where one connection goes.
#[derive(Debug)]
struct Address {
    /// What the guest gave (the client connects with it).
    url: String,
    host: String,
    port: u16,
    /// The granting `allowed_outbound_hosts` entry: the metric label.
    label: Arc<str>,
}

/// An open connection, as the guest holds it.
pub struct OpenRedis {
    conn: redis::aio::ConnectionManager,
    address: Arc<Address>,
}

/// The app's pooled connections, by component and address.
#[derive(Default)]
pub struct Pools {
    #[allow(clippy::type_complexity)]
    map: Mutex<
        HashMap<(Arc<str>, String), Arc<tokio::sync::OnceCell<redis::aio::ConnectionManager>>>,
    >,
}

impl Pools {
    async fn get(
        &self,
        component: &Arc<str>,
        url: &str,
        deadline: Instant,
    ) -> Result<redis::aio::ConnectionManager, Failure> {
        let cell = {
            let mut map = self
                .map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (component.clone(), url.to_string());
            match map.get(&key) {
                Some(c) => c.clone(),
                None if map.len() >= MAX_POOLED => return Err(Failure::TooManyConnections),
                None => map.entry(key).or_default().clone(),
            }
        };
        // Pooled already: no client to make, nothing to connect.
        if let Some(conn) = cell.get() {
            return Ok(conn.clone());
        }
        let client = redis::Client::open(url).map_err(|_| Failure::InvalidAddress)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let connect =
            cell.get_or_try_init(|| redis::aio::ConnectionManager::new_with_config(client, config));
        match tokio::time::timeout_at(bound(deadline).into(), connect).await {
            Ok(Ok(conn)) => Ok(conn.clone()),
            Ok(Err(e)) => Err(Failure::Other(format!("cannot connect: {e}"))),
            Err(_) => Err(Failure::Other("connecting timed out".into())),
        }
    }
}

/// The end of a call starting now: [`CALL_TIMEOUT`] or the request's
/// deadline, whichever comes first.
fn bound(deadline: Instant) -> Instant {
    deadline.min(Instant::now() + CALL_TIMEOUT)
}

/// What one instance holds.
pub struct RedisInstance {
    component: Arc<str>,
    policy: Arc<OutboundPolicy>,
    pools: Arc<Pools>,
    tracing: Arc<Tracing>,
    metrics: Arc<Metrics>,
    guest: Arc<Mutex<GuestTelemetry>>,
    deadline: Instant,
    open: usize,
}

/// What a call needs once it leaves the store: cheap clones.
struct Call {
    component: Arc<str>,
    tracing: Arc<Tracing>,
    metrics: Arc<Metrics>,
    parent: opentelemetry::Context,
    deadline: Instant,
}

impl RedisInstance {
    fn call(&self) -> Call {
        Call {
            component: self.component.clone(),
            tracing: self.tracing.clone(),
            metrics: self.metrics.clone(),
            parent: self
                .guest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .current(),
            deadline: self.deadline,
        }
    }

    /// The address `url` names, if the component is granted it.
    fn check(&self, url: &str) -> Result<Address, Failure> {
        let parsed = url::Url::parse(url).map_err(|_| Failure::InvalidAddress)?;
        let scheme = parsed.scheme();
        if scheme != "redis" && scheme != "rediss" {
            return Err(Failure::InvalidAddress);
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(Failure::InvalidAddress)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = parsed
            .port()
            .or_else(|| default_port(scheme))
            .ok_or(Failure::InvalidAddress)?;
        let Some(granting) = self.policy.granting_address(scheme, &host, port) else {
            let label = self.policy.label_address(scheme, &host, port);
            self.metrics
                .outbound_denied
                .with(&[&self.component, &label])
                .inc();
            tracing::debug!(component = %self.component, %host, port, "Redis address not allowed");
            return Err(Failure::InvalidAddress);
        };
        Ok(Address {
            url: url.to_string(),
            host,
            port,
            label: granting.text().clone(),
        })
    }
}

impl Call {
    /// Runs `op` (a Redis `operation`) as a client span and a metric
    /// observation, bounded in time.
    async fn run<T>(
        self,
        address: &Address,
        operation: &str,
        op: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let attrs = vec![
            KeyValue::new("db.system.name", "redis"),
            KeyValue::new("db.operation.name", operation.to_string()),
            KeyValue::new("server.address", address.host.clone()),
            KeyValue::new("server.port", i64::from(address.port)),
            KeyValue::new("gantry.component.id", self.component.to_string()),
        ];
        let cx = self
            .tracing
            .client_span(&self.parent, operation.to_string(), attrs);
        let started = Instant::now();
        let result = match tokio::time::timeout_at(bound(self.deadline).into(), op).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Other(format!("{operation} timed out"))),
        };
        let error_type = match &result {
            Ok(_) => "",
            Err(e) => e.kind(),
        };
        let op_label = if KNOWN_COMMANDS.contains(&operation) {
            operation
        } else {
            crate::manifest::OTHER
        };
        let trace_id = cx.span().span_context().trace_id();
        self.metrics
            .db_duration
            .with(&[
                &self.component,
                "redis",
                op_label,
                &address.label,
                error_type,
            ])
            .observe(
                started.elapsed().as_secs_f64(),
                cx.span().span_context().is_sampled().then_some(trace_id),
            );
        match &result {
            Ok(_) => cx.span().end(),
            Err(e) => end_failed_span(&cx, e.kind(), e.to_string()),
        }
        result
    }
}

/// A value of `execute`'s result, before it is one version's type.
enum Reply {
    Nil,
    Status(String),
    Int(i64),
    Binary(Vec<u8>),
}

/// Flattens a Redis value into `out` (arrays, maps and sets element by
/// element), within [`MAX_RESULT_BYTES`].
fn flatten(value: redis::Value, out: &mut Vec<Reply>, bytes: &mut usize) -> Result<(), Failure> {
    use redis::Value as V;
    let mut add = |r: Reply, out: &mut Vec<Reply>| -> Result<(), Failure> {
        *bytes += match &r {
            Reply::Binary(b) => b.len(),
            Reply::Status(s) => s.len(),
            _ => 8,
        };
        if *bytes > MAX_RESULT_BYTES {
            return Err(too_large());
        }
        out.push(r);
        Ok(())
    };
    match value {
        V::Nil => add(Reply::Nil, out),
        V::Int(i) => add(Reply::Int(i), out),
        V::BulkString(b) => add(Reply::Binary(b), out),
        V::SimpleString(s) => add(Reply::Status(s), out),
        V::Okay => add(Reply::Status("OK".into()), out),
        V::Array(vs) | V::Set(vs) => {
            for v in vs {
                flatten(v, out, bytes)?;
            }
            Ok(())
        }
        V::Map(kvs) => {
            for (k, v) in kvs {
                flatten(k, out, bytes)?;
                flatten(v, out, bytes)?;
            }
            Ok(())
        }
        V::Attribute { data, .. } => flatten(*data, out, bytes),
        V::Push { data, .. } => {
            for v in data {
                flatten(v, out, bytes)?;
            }
            Ok(())
        }
        V::Boolean(b) => add(Reply::Int(i64::from(b)), out),
        V::Double(d) => add(Reply::Binary(d.to_string().into_bytes()), out),
        V::VerbatimString { text, .. } => add(Reply::Binary(text.into_bytes()), out),
        V::ServerError(e) => Err(Failure::Other(format!("{e:?}"))),
        other => add(Reply::Binary(format!("{other:?}").into_bytes()), out),
    }
}

fn too_large() -> Failure {
    Failure::Other(format!(
        "the result is larger than {} MiB",
        MAX_RESULT_BYTES >> 20
    ))
}

/// A parameter of `execute`, before it is one version's type.
enum Param {
    Int(i64),
    Binary(Vec<u8>),
}

/// The operations, shared by both interface versions.
mod ops {
    use super::*;
    use redis::AsyncCommands as _;

    pub(super) async fn publish(
        mut c: redis::aio::ConnectionManager,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), Failure> {
        c.publish::<_, _, i64>(channel, payload)
            .await
            .map(drop)
            .map_err(failure)
    }

    pub(super) async fn get(
        mut c: redis::aio::ConnectionManager,
        key: String,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let v: Option<Vec<u8>> = c.get(key).await.map_err(failure)?;
        if v.as_ref().is_some_and(|v| v.len() > MAX_RESULT_BYTES) {
            return Err(too_large());
        }
        Ok(v)
    }

    pub(super) async fn set(
        mut c: redis::aio::ConnectionManager,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Failure> {
        c.set::<_, _, ()>(key, value).await.map_err(failure)
    }

    pub(super) async fn incr(
        mut c: redis::aio::ConnectionManager,
        key: String,
    ) -> Result<i64, Failure> {
        redis::cmd("INCR")
            .arg(key)
            .query_async(&mut c)
            .await
            .map_err(failure)
    }

    pub(super) async fn del(
        mut c: redis::aio::ConnectionManager,
        keys: Vec<String>,
    ) -> Result<u32, Failure> {
        if keys.is_empty() {
            return Ok(0);
        }
        redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut c)
            .await
            .map_err(failure)
    }

    pub(super) async fn sadd(
        mut c: redis::aio::ConnectionManager,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, Failure> {
        if values.is_empty() {
            return Ok(0);
        }
        redis::cmd("SADD")
            .arg(key)
            .arg(values)
            .query_async(&mut c)
            .await
            .map_err(failure)
    }

    pub(super) async fn srem(
        mut c: redis::aio::ConnectionManager,
        key: String,
        values: Vec<String>,
    ) -> Result<u32, Failure> {
        if values.is_empty() {
            return Ok(0);
        }
        redis::cmd("SREM")
            .arg(key)
            .arg(values)
            .query_async(&mut c)
            .await
            .map_err(failure)
    }

    pub(super) async fn smembers(
        mut c: redis::aio::ConnectionManager,
        key: String,
    ) -> Result<Vec<String>, Failure> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key)
            .query_async(&mut c)
            .await
            .map_err(failure)?;
        if members.iter().map(String::len).sum::<usize>() > MAX_RESULT_BYTES {
            return Err(too_large());
        }
        Ok(members)
    }

    pub(super) async fn execute(
        mut c: redis::aio::ConnectionManager,
        command: String,
        params: Vec<Param>,
    ) -> Result<Vec<Reply>, Failure> {
        let mut cmd = redis::cmd(&command);
        for p in params {
            match p {
                Param::Int(i) => cmd.arg(i),
                Param::Binary(b) => cmd.arg(b),
            };
        }
        let value: redis::Value = cmd.query_async(&mut c).await.map_err(failure)?;
        let mut out = Vec::new();
        flatten(value, &mut out, &mut 0)?;
        Ok(out)
    }
}

/// The operation's name as a span name: the command, upper case, bounded.
fn operation_name(command: &str) -> String {
    let mut name: String = command
        .chars()
        .take(32)
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
        .collect();
    name.make_ascii_uppercase();
    if name.is_empty() {
        name.push_str("EXECUTE");
    }
    name
}

/// The store's view for the generated traits.
pub struct RedisView<'a> {
    redis: &'a mut RedisInstance,
    table: &'a mut wasmtime::component::ResourceTable,
}

impl RedisView<'_> {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<OpenRedis>, Failure>> {
        let address = match self.redis.check(&address) {
            Ok(a) => Arc::new(a),
            Err(e) => return Ok(Err(e)),
        };
        if self.redis.open >= MAX_OPEN {
            return Ok(Err(Failure::TooManyConnections));
        }
        let pools = self.redis.pools.clone();
        let conn = pools
            .get(&self.redis.component, &address.url, self.redis.deadline)
            .await;
        match conn {
            Ok(conn) => {
                let r = self.table.push(OpenRedis { conn, address })?;
                self.redis.open += 1;
                Ok(Ok(r))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// The connection and address of `r`, and the call's context.
    fn conn(
        &self,
        r: &Resource<OpenRedis>,
    ) -> wasmtime::Result<(redis::aio::ConnectionManager, Arc<Address>, Call)> {
        let open = self.table.get(r)?;
        Ok((open.conn.clone(), open.address.clone(), self.redis.call()))
    }

    fn close(&mut self, r: Resource<OpenRedis>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        self.redis.open = self.redis.open.saturating_sub(1);
        Ok(())
    }
}

/// The conversions between one interface version's types and the neutral
/// ones above.
macro_rules! version {
    ($m:ident) => {
        impl From<Failure> for $m::Error {
            fn from(f: Failure) -> Self {
                match f {
                    Failure::InvalidAddress => $m::Error::InvalidAddress,
                    Failure::TooManyConnections => $m::Error::TooManyConnections,
                    Failure::TypeError => $m::Error::TypeError,
                    Failure::Other(m) => $m::Error::Other(m),
                }
            }
        }
        impl From<$m::RedisParameter> for Param {
            fn from(p: $m::RedisParameter) -> Self {
                match p {
                    $m::RedisParameter::Int64(i) => Param::Int(i),
                    $m::RedisParameter::Binary(b) => Param::Binary(b),
                }
            }
        }
        impl From<Reply> for $m::RedisResult {
            fn from(r: Reply) -> Self {
                match r {
                    Reply::Nil => $m::RedisResult::Nil,
                    Reply::Status(s) => $m::RedisResult::Status(s),
                    Reply::Int(i) => $m::RedisResult::Int64(i),
                    Reply::Binary(b) => $m::RedisResult::Binary(b),
                }
            }
        }
        impl $m::Host for RedisView<'_> {}
    };
}

version!(v2);
version!(v3);

/// Runs one operation on the connection `$r` through the shared view.
macro_rules! op {
    ($view:expr, $r:expr, $name:expr, |$c:ident| $body:expr) => {{
        let (conn, address, call) = $view.conn(&$r)?;
        let $c = conn;
        Ok(call.run(&address, $name, $body).await.map_err(Into::into))
    }};
}

impl v2::HostConnection for RedisView<'_> {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<OpenRedis>, v2::Error>> {
        Ok(RedisView::open(self, address).await?.map_err(Into::into))
    }

    async fn publish(
        &mut self,
        r: Resource<OpenRedis>,
        channel: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v2::Error>> {
        op!(self, r, "PUBLISH", |c| ops::publish(c, channel, payload))
    }

    async fn get(
        &mut self,
        r: Resource<OpenRedis>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, v2::Error>> {
        op!(self, r, "GET", |c| ops::get(c, key))
    }

    async fn set(
        &mut self,
        r: Resource<OpenRedis>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v2::Error>> {
        op!(self, r, "SET", |c| ops::set(c, key, value))
    }

    async fn incr(
        &mut self,
        r: Resource<OpenRedis>,
        key: String,
    ) -> wasmtime::Result<Result<i64, v2::Error>> {
        op!(self, r, "INCR", |c| ops::incr(c, key))
    }

    async fn del(
        &mut self,
        r: Resource<OpenRedis>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v2::Error>> {
        op!(self, r, "DEL", |c| ops::del(c, keys))
    }

    async fn sadd(
        &mut self,
        r: Resource<OpenRedis>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v2::Error>> {
        op!(self, r, "SADD", |c| ops::sadd(c, key, values))
    }

    async fn smembers(
        &mut self,
        r: Resource<OpenRedis>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, v2::Error>> {
        op!(self, r, "SMEMBERS", |c| ops::smembers(c, key))
    }

    async fn srem(
        &mut self,
        r: Resource<OpenRedis>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v2::Error>> {
        op!(self, r, "SREM", |c| ops::srem(c, key, values))
    }

    async fn execute(
        &mut self,
        r: Resource<OpenRedis>,
        command: String,
        arguments: Vec<v2::RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<v2::RedisResult>, v2::Error>> {
        let name = operation_name(&command);
        let params = arguments.into_iter().map(Into::into).collect();
        let (conn, address, call) = self.conn(&r)?;
        Ok(call
            .run(&address, &name, ops::execute(conn, command, params))
            .await
            .map(|rs| rs.into_iter().map(Into::into).collect())
            .map_err(Into::into))
    }

    async fn drop(&mut self, r: Resource<OpenRedis>) -> wasmtime::Result<()> {
        self.close(r)
    }
}

pub struct HasRedis;
impl wasmtime::component::HasData for HasRedis {
    type Data<'a> = RedisView<'a>;
}

/// Runs one operation of the async interface: what it needs is taken from
/// the store, the call runs outside it.
async fn op3<U, T>(
    accessor: &Accessor<U, HasRedis>,
    r: &Resource<OpenRedis>,
    name: &str,
    body: impl FnOnce(
        redis::aio::ConnectionManager,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<T, Failure>> + Send>>,
) -> wasmtime::Result<Result<T, v3::Error>> {
    let (conn, address, call) = accessor.with(|mut view| view.get().conn(r))?;
    Ok(call
        .run(&address, name, body(conn))
        .await
        .map_err(Into::into))
}

impl<U> v3::HostConnectionWithStore<U> for HasRedis {
    async fn open(
        accessor: &Accessor<U, Self>,
        address: String,
    ) -> wasmtime::Result<Result<Resource<OpenRedis>, v3::Error>> {
        let checked = accessor.with(|mut view| {
            let v = view.get();
            let address = v.redis.check(&address)?;
            if v.redis.open >= MAX_OPEN {
                return Err(Failure::TooManyConnections);
            }
            Ok((
                Arc::new(address),
                v.redis.pools.clone(),
                v.redis.component.clone(),
                v.redis.deadline,
            ))
        });
        let (address, pools, component, deadline) = match checked {
            Ok(c) => c,
            Err(e) => return Ok(Err(e.into())),
        };
        let conn = pools.get(&component, &address.url, deadline).await;
        match conn {
            Ok(conn) => accessor.with(|mut view| {
                let v = view.get();
                let r = v.table.push(OpenRedis { conn, address })?;
                v.redis.open += 1;
                Ok(Ok(r))
            }),
            Err(e) => Ok(Err(e.into())),
        }
    }

    async fn publish(
        accessor: &Accessor<U, Self>,
        r: Resource<OpenRedis>,
        channel: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v3::Error>> {
        op3(accessor, &r, "PUBLISH", |c| {
            Box::pin(ops::publish(c, channel, payload))
        })
        .await
    }

    async fn get(
        accessor: &Accessor<U, Self>,
        r: Resource<OpenRedis>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, v3::Error>> {
        op3(accessor, &r, "GET", |c| Box::pin(ops::get(c, key))).await
    }

    async fn set(
        accessor: &Accessor<U, Self>,
        r: Resource<OpenRedis>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v3::Error>> {
        op3(accessor, &r, "SET", |c| Box::pin(ops::set(c, key, value))).await
    }

    async fn incr(
        accessor: &Accessor<U, Self>,
        r: Resource<OpenRedis>,
        key: String,
    ) -> wasmtime::Result<Result<i64, v3::Error>> {
        op3(accessor, &r, "INCR", |c| Box::pin(ops::incr(c, key))).await
    }

    async fn del(
        accessor: &Accessor<U, Self>,
        r: Resource<OpenRedis>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v3::Error>> {
        op3(accessor, &r, "DEL", |c| Box::pin(ops::del(c, keys))).await
    }

    async fn sadd(
        accessor: &Accessor<U, Self>,
        r: Resource<OpenRedis>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v3::Error>> {
        op3(accessor, &r, "SADD", |c| {
            Box::pin(ops::sadd(c, key, values))
        })
        .await
    }

    async fn smembers(
        accessor: &Accessor<U, Self>,
        r: Resource<OpenRedis>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, v3::Error>> {
        op3(accessor, &r, "SMEMBERS", |c| {
            Box::pin(ops::smembers(c, key))
        })
        .await
    }

    async fn srem(
        accessor: &Accessor<U, Self>,
        r: Resource<OpenRedis>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, v3::Error>> {
        op3(accessor, &r, "SREM", |c| {
            Box::pin(ops::srem(c, key, values))
        })
        .await
    }

    async fn execute(
        accessor: &Accessor<U, Self>,
        r: Resource<OpenRedis>,
        command: String,
        arguments: Vec<v3::RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<v3::RedisResult>, v3::Error>> {
        let name = operation_name(&command);
        let params: Vec<Param> = arguments.into_iter().map(Into::into).collect();
        let rs = op3(accessor, &r, &name, |c| {
            Box::pin(ops::execute(c, command, params))
        })
        .await?;
        Ok(rs.map(|rs| rs.into_iter().map(Into::into).collect()))
    }
}

impl v3::HostConnection for RedisView<'_> {
    async fn drop(&mut self, r: Resource<OpenRedis>) -> wasmtime::Result<()> {
        self.close(r)
    }
}

/// The Redis capability.
pub struct Redis;

impl Capability for Redis {
    type Grant = Arc<OutboundPolicy>;
    type Shared = Arc<Pools>;
    type Instance = RedisInstance;

    fn shared(_settings: &Settings) -> anyhow::Result<Arc<Pools>> {
        Ok(Arc::new(Pools::default()))
    }

    fn grant(
        spec: &ComponentSpec,
        values: &BTreeMap<String, String>,
    ) -> Result<Arc<OutboundPolicy>, ManifestError> {
        Ok(Arc::new(OutboundPolicy::of(spec, values)?))
    }

    fn instance(
        pools: &Arc<Pools>,
        grant: &Arc<OutboundPolicy>,
        request: &Request,
    ) -> RedisInstance {
        RedisInstance {
            component: request.component.clone(),
            policy: grant.clone(),
            pools: pools.clone(),
            tracing: request.trace.tracing.clone(),
            metrics: request.trace.metrics.clone(),
            guest: request.guest.clone(),
            deadline: request.deadline,
            open: 0,
        }
    }

    fn add_to_linker(linker: &mut Linker<HostState>, concurrent: bool) -> anyhow::Result<()> {
        fn get(s: &mut HostState) -> RedisView<'_> {
            RedisView {
                redis: &mut s.caps.redis,
                table: &mut s.table,
            }
        }
        v2::add_to_linker::<HostState, HasRedis>(linker, get)?;
        if concurrent {
            v3::add_to_linker::<HostState, HasRedis>(linker, get)?;
        }
        Ok(())
    }
}
