//! Spin's key-value stores: `fermyon:spin/key-value@2.0.0` (spin-sdk 2 to 5)
//! and `spin:key-value/key-value@3.0.0` (async, spin-sdk 6+), over the
//! stores the runtime config defines.
//!
//! Owns: the `key_value_stores` grant, the app-wide open stores (a SQLite
//! file per path, shared by the labels it holds, in Spin's layout: table
//! `spin_key_value(store, key, value)`, so data moves between `spin up` and
//! `gantry up`), and each instance's open store handles. `default` is SQLite
//! in `<state dir>/sqlite_key_value.db` unless the runtime config says
//! otherwise. A label the component was not granted is `access-denied`; one
//! no store backs is `no-such-store`, as in Spin. `type = "redis"` stores
//! live on a Redis server (how replicas share state), reached through one
//! reconnecting connection per store, each answer bounded in time. SQLite
//! calls run on the blocking pool, bounded by SQLite's busy timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Accessor, Linker, Resource, ResourceTable};

use super::bindings;
use super::{Capability, HostState, Request, Settings};
use crate::manifest::runtime_config::{KeyValueBackend, KeyValueStore};
use crate::manifest::{ComponentSpec, Location, ManifestError};

use bindings::fermyon::spin::key_value as v2;
use bindings::spin::key_value::key_value as v3;
use bindings::wasi::keyvalue as wk;

/// Longest key a guest may use, in bytes.
pub const MAX_KEY: usize = 1024;
/// Largest value a guest may store, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Most keys `get-keys` returns; a store with more answers an error.
pub const MAX_KEYS: usize = 10_000;
/// Most stores one instance may hold open at once.
pub const MAX_OPEN: usize = 16;
/// How long a call waits for another writer of the same SQLite file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What backs each store label: resolved at start from the state folder
/// and the runtime config.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub stores: BTreeMap<String, KeyValueBackend>,
    /// Where the runtime config defines each store it defines.
    pub defined_at: BTreeMap<String, Location>,
    /// Where `type = "spin"` stores without a `path` live.
    pub default_file: PathBuf,
}

impl Config {
    /// Spin's defaults (`default` in `<state_dir>/sqlite_key_value.db`),
    /// then the runtime config's stores over them.
    pub fn new(state_dir: &Path, configured: &BTreeMap<String, KeyValueStore>) -> Config {
        let mut stores = BTreeMap::new();
        let mut defined_at = BTreeMap::new();
        stores.insert("default".to_string(), KeyValueBackend::Spin { path: None });
        for (label, store) in configured {
            stores.insert(label.clone(), store.backend.clone());
            defined_at.insert(label.clone(), store.location.clone());
        }
        Config {
            stores,
            defined_at,
            default_file: state_dir.join("sqlite_key_value.db"),
        }
    }
}

/// What backs one store label.
enum Backend {
    Sqlite(SqliteStore),
    Redis(Box<RedisStore>),
}

/// One SQLite file, opened once, shared by the labels it holds.
struct SqliteFile {
    conn: Mutex<rusqlite::Connection>,
}

impl SqliteFile {
    fn open(path: &Path) -> anyhow::Result<SqliteFile> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the state folder {}", dir.display()))?;
        }
        let conn = rusqlite::Connection::open(path)
            .with_context(|| format!("cannot open the key-value database {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL: readers never wait for the writer, and a write acknowledged
        // to the guest is in the log before the call returns (it survives
        // the process being killed).
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|_| {
                conn.execute_batch(
                    "CREATE TABLE IF NOT EXISTS spin_key_value (
                        store TEXT NOT NULL,
                        key   TEXT NOT NULL,
                        value BLOB NOT NULL,
                        PRIMARY KEY (store, key)
                    )",
                )
            })
            .with_context(|| {
                format!(
                    "{} is not a usable key-value database (corrupt, read-only, or not SQLite)",
                    path.display()
                )
            })?;
        Ok(SqliteFile {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, String> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| "the store is unusable".to_string())?;
        f(&conn).map_err(|e| e.to_string())
    }
}

impl SqliteFile {
    /// Runs `f` in an immediate transaction: no other writer, in this
    /// process or another, between its read and its write.
    fn transaction<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, String>,
    ) -> Result<T, String> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| "the store is unusable".to_string())?;
        let tx =
            rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| e.to_string())?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// A counter's value as stored: decimal text, as Redis keeps it.
fn parse_counter(key: &str, value: Option<Vec<u8>>) -> Result<i64, String> {
    match value {
        None => Ok(0),
        Some(v) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| format!("the value of {key:?} is not a decimal integer")),
    }
}

const SELECT: &str = "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2";
const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                      ON CONFLICT (store, key) DO UPDATE SET value = excluded.value";
const DELETE: &str = "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2";

/// One label's view of a SQLite file.
#[derive(Clone)]
struct SqliteStore {
    file: Arc<SqliteFile>,
    label: String,
}

impl SqliteStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.file.with(|c| {
            use rusqlite::OptionalExtension as _;
            c.prepare_cached(SELECT)?
                .query_row((&self.label, key), |r| r.get(0))
                .optional()
        })
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.file.with(|c| {
            c.prepare_cached(UPSERT)?
                .execute((&self.label, key, value))
                .map(|_| ())
        })
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.file.with(|c| {
            c.prepare_cached(DELETE)?
                .execute((&self.label, key))
                .map(|_| ())
        })
    }
    fn exists(&self, key: &str) -> Result<bool, String> {
        self.file.with(|c| {
            c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM spin_key_value WHERE store = ?1 AND key = ?2)",
            )?
            .query_row((&self.label, key), |r| r.get(0))
        })
    }
    fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        self.file.transaction(|tx| {
            use rusqlite::OptionalExtension as _;
            let now = tx
                .prepare_cached(SELECT)
                .and_then(|mut q| q.query_row((&self.label, key), |r| r.get(0)).optional())
                .map_err(|e| e.to_string())?;
            let next = parse_counter(key, now)?
                .checked_add(delta)
                .ok_or_else(|| format!("{key:?} would overflow a 64-bit integer"))?;
            tx.prepare_cached(UPSERT)
                .and_then(|mut q| q.execute((&self.label, key, next.to_string().as_bytes())))
                .map_err(|e| e.to_string())?;
            Ok(next)
        })
    }

    /// Sets `key` to `value` if it still holds `expected`; otherwise
    /// answers what it holds now.
    fn swap(
        &self,
        key: &str,
        expected: &Option<Vec<u8>>,
        value: &[u8],
    ) -> Result<Result<(), Option<Vec<u8>>>, String> {
        self.file.transaction(|tx| {
            use rusqlite::OptionalExtension as _;
            let now: Option<Vec<u8>> = tx
                .prepare_cached(SELECT)
                .and_then(|mut q| q.query_row((&self.label, key), |r| r.get(0)).optional())
                .map_err(|e| e.to_string())?;
            if &now != expected {
                return Ok(Err(now));
            }
            tx.prepare_cached(UPSERT)
                .and_then(|mut q| q.execute((&self.label, key, value)))
                .map_err(|e| e.to_string())?;
            Ok(Ok(()))
        })
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        self.file.transaction(|tx| {
            use rusqlite::OptionalExtension as _;
            let mut q = tx.prepare_cached(SELECT).map_err(|e| e.to_string())?;
            keys.iter()
                .map(|k| {
                    q.query_row((&self.label, k), |r| r.get(0))
                        .optional()
                        .map_err(|e| e.to_string())
                })
                .collect()
        })
    }

    fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<(), String> {
        self.file.transaction(|tx| {
            let mut q = tx.prepare_cached(UPSERT).map_err(|e| e.to_string())?;
            for (k, v) in pairs {
                q.execute((&self.label, k, v)).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    fn delete_many(&self, keys: &[String]) -> Result<(), String> {
        self.file.transaction(|tx| {
            let mut q = tx.prepare_cached(DELETE).map_err(|e| e.to_string())?;
            for k in keys {
                q.execute((&self.label, k)).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }

    fn keys(&self) -> Result<Vec<String>, String> {
        let keys = self.file.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key LIMIT ?2",
            )?;
            let rows = stmt.query_map((&self.label, (MAX_KEYS + 1) as i64), |r| r.get(0))?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
        })?;
        if keys.len() > MAX_KEYS {
            return Err(too_many_keys());
        }
        Ok(keys)
    }
}

/// How long a Redis store waits to connect, and for each answer.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis server: keys are stored as they are named (as Spin does), so
/// every label backed by one server shares its key space.
struct RedisStore {
    url: String,
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
}

impl RedisStore {
    /// Checks at load that the server answers, so that a wrong or
    /// unreachable URL stops the start instead of every request.
    fn open(url: &str) -> anyhow::Result<RedisStore> {
        use anyhow::Context as _;
        let client = redis::Client::open(url).with_context(|| format!("{url} is not usable"))?;
        let mut conn = client
            .get_connection_with_timeout(REDIS_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("cannot connect to {url}: {e}"))?;
        conn.set_read_timeout(Some(REDIS_TIMEOUT))?;
        redis::cmd("PING")
            .query::<String>(&mut conn)
            .with_context(|| format!("{url} does not answer PING"))?;
        Ok(RedisStore {
            url: url.to_string(),
            client,
            conn: tokio::sync::OnceCell::new(),
        })
    }

    /// The shared, reconnecting connection: every call is bounded.
    async fn conn(&self) -> Result<redis::aio::ConnectionManager, String> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        self.conn
            .get_or_try_init(|| {
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
            .map_err(|e| format!("{}: {e}", self.url))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        let mut conn = self.conn().await?;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| format!("{}: {e}", self.url))
    }

    async fn keys(&self) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .query(redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000))
                .await?;
            keys.extend(batch);
            if keys.len() > MAX_KEYS {
                return Err(too_many_keys());
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// Sets KEYS[1] to ARGV[3] if it holds ARGV[2] (ARGV[1] = "1": if it is
/// absent); answers 1 when it did.
const REDIS_SWAP: &str = r"
local now = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if now then return 0 end
elseif now ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
";

impl RedisStore {
    async fn swap(
        &self,
        key: &str,
        expected: &Option<Vec<u8>>,
        value: &[u8],
    ) -> Result<Result<(), Option<Vec<u8>>>, String> {
        let absent = if expected.is_none() { "1" } else { "0" };
        let done: i64 = self
            .query(
                redis::cmd("EVAL")
                    .arg(REDIS_SWAP)
                    .arg(1)
                    .arg(key)
                    .arg(absent)
                    .arg(expected.as_deref().unwrap_or_default())
                    .arg(value),
            )
            .await?;
        if done == 1 {
            return Ok(Ok(()));
        }
        Ok(Err(self.query(redis::cmd("GET").arg(key)).await?))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, String> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.query(redis::cmd("MGET").arg(keys)).await
    }

    async fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<(), String> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("MSET");
        for (k, v) in pairs {
            cmd.arg(k).arg(v);
        }
        self.query(&cmd).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), String> {
        if keys.is_empty() {
            return Ok(());
        }
        self.query(redis::cmd("DEL").arg(keys)).await
    }
}

fn too_many_keys() -> String {
    format!("the store holds more than {MAX_KEYS} keys, more than get-keys returns")
}

/// The app-wide stores: each label's backend, opened when a component
/// granted it is loaded.
pub struct Stores {
    config: Config,
    open: Mutex<HashMap<String, Arc<Backend>>>,
    files: Mutex<HashMap<PathBuf, Arc<SqliteFile>>>,
}

impl Stores {
    fn backend(&self, label: &str) -> anyhow::Result<Option<Arc<Backend>>> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| anyhow::anyhow!("store table poisoned"))?;
        if let Some(b) = open.get(label) {
            return Ok(Some(b.clone()));
        }
        let Some(backend) = self.config.stores.get(label) else {
            return Ok(None);
        };
        let b = Arc::new(match backend {
            KeyValueBackend::Spin { path } => {
                let path = path
                    .clone()
                    .unwrap_or_else(|| self.config.default_file.clone());
                let mut files = self
                    .files
                    .lock()
                    .map_err(|_| anyhow::anyhow!("store table poisoned"))?;
                let file = match files.get(&path) {
                    Some(f) => f.clone(),
                    None => {
                        let f = Arc::new(SqliteFile::open(&path)?);
                        files.insert(path.clone(), f.clone());
                        f
                    }
                };
                Backend::Sqlite(SqliteStore {
                    file,
                    label: label.to_string(),
                })
            }
            KeyValueBackend::Redis { url } => {
                Backend::Redis(Box::new(RedisStore::open(url).map_err(|e| {
                    let at = match self.config.defined_at.get(label) {
                        Some(at) => format!(" (defined at {at})"),
                        None => String::new(),
                    };
                    anyhow::anyhow!("key-value store {label:?}{at}: {e:#}")
                })?))
            }
        });
        open.insert(label.to_string(), b.clone());
        Ok(Some(b))
    }
}

/// An open store handle, held in the instance's resource table.
pub struct OpenStore {
    backend: Arc<Backend>,
}

/// One instance's key-value state.
pub struct KeyValueInstance {
    granted: Arc<BTreeSet<String>>,
    stores: Arc<Stores>,
    open: usize,
}

/// Why a call failed, in both interface versions' terms.
enum Failure {
    AccessDenied,
    NoSuchStore,
    TableFull,
    Other(String),
}

impl From<Failure> for v2::Error {
    fn from(f: Failure) -> v2::Error {
        match f {
            Failure::AccessDenied => v2::Error::AccessDenied,
            Failure::NoSuchStore => v2::Error::NoSuchStore,
            Failure::TableFull => v2::Error::StoreTableFull,
            Failure::Other(m) => v2::Error::Other(m),
        }
    }
}

impl From<Failure> for v3::Error {
    fn from(f: Failure) -> v3::Error {
        match f {
            Failure::AccessDenied => v3::Error::AccessDenied,
            Failure::NoSuchStore => v3::Error::NoSuchStore,
            Failure::TableFull => v3::Error::StoreTableFull,
            Failure::Other(m) => v3::Error::Other(m),
        }
    }
}

/// The store and resource table a call reaches.
pub struct KvView<'a> {
    kv: &'a mut KeyValueInstance,
    table: &'a mut ResourceTable,
}

impl KvView<'_> {
    fn open(&mut self, label: &str) -> wasmtime::Result<Result<Resource<OpenStore>, Failure>> {
        if !self.kv.granted.contains(label) {
            return Ok(Err(Failure::AccessDenied));
        }
        if self.kv.open >= MAX_OPEN {
            return Ok(Err(Failure::TableFull));
        }
        let backend = match self.kv.stores.backend(label) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(Err(Failure::NoSuchStore)),
            Err(e) => return Ok(Err(Failure::Other(format!("{e:#}")))),
        };
        match self.table.push(OpenStore { backend }) {
            Ok(r) => {
                self.kv.open += 1;
                Ok(Ok(r))
            }
            Err(_) => Ok(Err(Failure::TableFull)),
        }
    }

    fn backend(&self, store: &Resource<OpenStore>) -> wasmtime::Result<Arc<Backend>> {
        Ok(self.table.get(store)?.backend.clone())
    }

    fn close(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        self.kv.open = self.kv.open.saturating_sub(1);
        Ok(())
    }
}

fn check_key(key: &str) -> Result<(), Failure> {
    if key.len() > MAX_KEY {
        return Err(Failure::Other(format!(
            "key of {} bytes: keys are at most {MAX_KEY} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Failure::Other),
        Err(e) => Err(Failure::Other(format!("the store call failed: {e}"))),
    }
}

/// Runs `sqlite` on the blocking pool, or `redis` on the connection.
macro_rules! dispatch {
    ($b:expr, |$s:ident| $sqlite:expr, |$r:ident| $redis:expr) => {
        match &*$b {
            Backend::Sqlite(store) => {
                let $s = store.clone();
                blocking(move || $sqlite).await
            }
            Backend::Redis($r) => $redis.await.map_err(Failure::Other),
        }
    };
}

async fn get(b: Arc<Backend>, key: String) -> Result<Option<Vec<u8>>, Failure> {
    check_key(&key)?;
    dispatch!(b, |s| s.get(&key), |r| r.query(redis::cmd("GET").arg(&key)))
}

fn check_value(value: &[u8]) -> Result<(), Failure> {
    if value.len() > MAX_VALUE {
        return Err(Failure::Other(format!(
            "value of {} bytes: values are at most {MAX_VALUE} bytes",
            value.len()
        )));
    }
    Ok(())
}

async fn set(b: Arc<Backend>, key: String, value: Vec<u8>) -> Result<(), Failure> {
    check_key(&key)?;
    check_value(&value)?;
    dispatch!(b, |s| s.set(&key, &value), |r| r
        .query(redis::cmd("SET").arg(&key).arg(&value)))
}

async fn delete(b: Arc<Backend>, key: String) -> Result<(), Failure> {
    check_key(&key)?;
    dispatch!(b, |s| s.delete(&key), |r| r
        .query(redis::cmd("DEL").arg(&key)))
}

async fn exists(b: Arc<Backend>, key: String) -> Result<bool, Failure> {
    check_key(&key)?;
    dispatch!(b, |s| s.exists(&key), |r| r
        .query(redis::cmd("EXISTS").arg(&key)))
}

async fn keys(b: Arc<Backend>) -> Result<Vec<String>, Failure> {
    dispatch!(b, |s| s.keys(), |r| r.keys())
}

/// Most keys one batch call may name.
pub const MAX_BATCH: usize = 1000;

fn check_batch(n: usize) -> Result<(), Failure> {
    if n > MAX_BATCH {
        return Err(Failure::Other(format!(
            "{n} keys in one call: a batch names at most {MAX_BATCH}"
        )));
    }
    Ok(())
}

async fn increment(b: Arc<Backend>, key: String, delta: i64) -> Result<i64, Failure> {
    check_key(&key)?;
    dispatch!(b, |s| s.increment(&key, delta), |r| r
        .query(redis::cmd("INCRBY").arg(&key).arg(delta)))
}

async fn swap(
    b: Arc<Backend>,
    key: String,
    expected: Option<Vec<u8>>,
    value: Vec<u8>,
) -> Result<Result<(), Option<Vec<u8>>>, Failure> {
    check_value(&value)?;
    dispatch!(b, |s| s.swap(&key, &expected, &value), |r| r
        .swap(&key, &expected, &value))
}

async fn get_many(b: Arc<Backend>, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, Failure> {
    check_batch(keys.len())?;
    keys.iter().try_for_each(|k| check_key(k))?;
    dispatch!(b, |s| s.get_many(&keys), |r| r.get_many(&keys))
}

async fn set_many(b: Arc<Backend>, pairs: Vec<(String, Vec<u8>)>) -> Result<(), Failure> {
    check_batch(pairs.len())?;
    for (k, v) in &pairs {
        check_key(k)?;
        check_value(v)?;
    }
    dispatch!(b, |s| s.set_many(&pairs), |r| r.set_many(&pairs))
}

async fn delete_many(b: Arc<Backend>, keys: Vec<String>) -> Result<(), Failure> {
    check_batch(keys.len())?;
    keys.iter().try_for_each(|k| check_key(k))?;
    dispatch!(b, |s| s.delete_many(&keys), |r| r.delete_many(&keys))
}

/// A compare-and-swap handle (`wasi:keyvalue/atomics.cas`): the value a key
/// held when it was made, to swap against.
pub struct Cas {
    backend: Arc<Backend>,
    key: String,
    seen: Option<Vec<u8>>,
}

impl From<Failure> for wk::store::Error {
    fn from(f: Failure) -> wk::store::Error {
        match f {
            Failure::AccessDenied => wk::store::Error::AccessDenied,
            Failure::NoSuchStore => wk::store::Error::NoSuchStore,
            Failure::TableFull => {
                wk::store::Error::Other(format!("more than {MAX_OPEN} stores open at once"))
            }
            Failure::Other(m) => wk::store::Error::Other(m),
        }
    }
}

// wasi:keyvalue@0.2.0-draft2: store, atomics and batch over the same
// stores and grants (a bucket is a store label).
impl wk::store::Host for KvView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, wk::store::Error>> {
        Ok(self.open(&identifier)?.map_err(Into::into))
    }
}

impl wk::store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wk::store::Error>> {
        let b = self.backend(&bucket)?;
        Ok(get(b, key).await.map_err(Into::into))
    }
    async fn set(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wk::store::Error>> {
        let b = self.backend(&bucket)?;
        Ok(set(b, key, value).await.map_err(Into::into))
    }
    async fn delete(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), wk::store::Error>> {
        let b = self.backend(&bucket)?;
        Ok(delete(b, key).await.map_err(Into::into))
    }
    async fn exists(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wk::store::Error>> {
        let b = self.backend(&bucket)?;
        Ok(exists(b, key).await.map_err(Into::into))
    }
    /// Every key in one answer (at most `MAX_KEYS`): no cursor is needed.
    async fn list_keys(
        &mut self,
        bucket: Resource<OpenStore>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<wk::store::KeyResponse, wk::store::Error>> {
        let b = self.backend(&bucket)?;
        Ok(keys(b)
            .await
            .map(|keys| wk::store::KeyResponse { keys, cursor: None })
            .map_err(Into::into))
    }
    async fn drop(&mut self, bucket: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.close(bucket)
    }
}

impl wk::atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wk::store::Error>> {
        let b = self.backend(&bucket)?;
        Ok(increment(b, key, delta).await.map_err(Into::into))
    }
    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wk::atomics::CasError>> {
        let (backend, key, seen) = {
            let c = self.table.get(&cas)?;
            (c.backend.clone(), c.key.clone(), c.seen.clone())
        };
        match swap(backend, key, seen, value).await {
            Ok(Ok(())) => {
                self.table.delete(cas)?;
                Ok(Ok(()))
            }
            // Lost the race: the handle now holds what the key holds, for
            // the guest to read (`current`) and retry.
            Ok(Err(now)) => {
                self.table.get_mut(&cas)?.seen = now;
                Ok(Err(wk::atomics::CasError::CasFailed(cas)))
            }
            Err(e) => {
                self.table.delete(cas)?;
                Ok(Err(wk::atomics::CasError::StoreError(e.into())))
            }
        }
    }
}

impl wk::atomics::HostCas for KvView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, wk::store::Error>> {
        let backend = self.backend(&bucket)?;
        let seen = match get(backend.clone(), key.clone()).await {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.into())),
        };
        match self.table.push(Cas { backend, key, seen }) {
            Ok(r) => Ok(Ok(r)),
            Err(_) => Ok(Err(Failure::TableFull.into())),
        }
    }
    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wk::store::Error>> {
        Ok(Ok(self.table.get(&cas)?.seen.clone()))
    }
    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl wk::batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, wk::store::Error>> {
        let b = self.backend(&bucket)?;
        Ok(get_many(b, keys.clone())
            .await
            .map(|values| keys.into_iter().zip(values).collect())
            .map_err(Into::into))
    }
    async fn set_many(
        &mut self,
        bucket: Resource<OpenStore>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), wk::store::Error>> {
        let b = self.backend(&bucket)?;
        Ok(set_many(b, key_values).await.map_err(Into::into))
    }
    async fn delete_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), wk::store::Error>> {
        let b = self.backend(&bucket)?;
        Ok(delete_many(b, keys).await.map_err(Into::into))
    }
}

// fermyon:spin/key-value@2.0.0: synchronous for the guest, async here so
// that SQLite runs on the blocking pool.
impl v2::Host for KvView<'_> {}

impl v2::HostStore for KvView<'_> {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, v2::Error>> {
        Ok(self.open(&label)?.map_err(Into::into))
    }
    async fn get(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, v2::Error>> {
        let b = self.backend(&store)?;
        Ok(get(b, key).await.map_err(Into::into))
    }
    async fn set(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v2::Error>> {
        let b = self.backend(&store)?;
        Ok(set(b, key, value).await.map_err(Into::into))
    }
    async fn delete(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), v2::Error>> {
        let b = self.backend(&store)?;
        Ok(delete(b, key).await.map_err(Into::into))
    }
    async fn exists(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, v2::Error>> {
        let b = self.backend(&store)?;
        Ok(exists(b, key).await.map_err(Into::into))
    }
    async fn get_keys(
        &mut self,
        store: Resource<OpenStore>,
    ) -> wasmtime::Result<Result<Vec<String>, v2::Error>> {
        let b = self.backend(&store)?;
        Ok(keys(b).await.map_err(Into::into))
    }
    async fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.close(store)
    }
}

pub struct HasKv;
impl wasmtime::component::HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

// spin:key-value/key-value@3.0.0: async functions; `get-keys` answers a
// stream of keys and a future of the outcome.
impl v3::Host for KvView<'_> {}

impl v3::HostStore for KvView<'_> {
    fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.close(store)
    }
}

impl<U> v3::HostStoreWithStore<U> for HasKv {
    async fn open(
        accessor: &Accessor<U, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, v3::Error>> {
        let r = accessor.with(|mut view| view.get().open(&label))?;
        Ok(r.map_err(Into::into))
    }
    async fn get(
        accessor: &Accessor<U, Self>,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, v3::Error>> {
        let b = accessor.with(|mut view| view.get().backend(&store))?;
        Ok(get(b, key).await.map_err(Into::into))
    }
    async fn set(
        accessor: &Accessor<U, Self>,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v3::Error>> {
        let b = accessor.with(|mut view| view.get().backend(&store))?;
        Ok(set(b, key, value).await.map_err(Into::into))
    }
    async fn delete(
        accessor: &Accessor<U, Self>,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), v3::Error>> {
        let b = accessor.with(|mut view| view.get().backend(&store))?;
        Ok(delete(b, key).await.map_err(Into::into))
    }
    async fn exists(
        accessor: &Accessor<U, Self>,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, v3::Error>> {
        let b = accessor.with(|mut view| view.get().backend(&store))?;
        Ok(exists(b, key).await.map_err(Into::into))
    }
    async fn get_keys(
        accessor: &Accessor<U, Self>,
        store: Resource<OpenStore>,
    ) -> wasmtime::Result<(
        wasmtime::component::StreamReader<String>,
        wasmtime::component::FutureReader<Result<(), v3::Error>>,
    )> {
        let b = accessor.with(|mut view| view.get().backend(&store))?;
        let (list, outcome) = match keys(b).await {
            Ok(list) => (list, Ok(())),
            Err(e) => (Vec::new(), Err(v3::Error::from(e))),
        };
        accessor.with(|mut access| {
            let stream = wasmtime::component::StreamReader::new(&mut access, list)?;
            let done = wasmtime::component::FutureReader::new(&mut access, async move {
                wasmtime::error::Ok(outcome)
            })?;
            Ok((stream, done))
        })
    }
}

/// The key-value capability.
pub struct KeyValue;

impl Capability for KeyValue {
    type Grant = Arc<BTreeSet<String>>;
    type Shared = Arc<Stores>;
    type Instance = KeyValueInstance;

    fn shared(settings: &Settings) -> anyhow::Result<Arc<Stores>> {
        Ok(Arc::new(Stores {
            config: settings.key_value.clone(),
            open: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
        }))
    }

    fn grant(
        spec: &ComponentSpec,
        _values: &BTreeMap<String, String>,
    ) -> Result<Arc<BTreeSet<String>>, ManifestError> {
        Ok(Arc::new(
            spec.key_value_stores
                .iter()
                .map(|g| g.label.clone())
                .collect(),
        ))
    }

    /// Every granted label must have a store, opened now: a missing or
    /// unusable store stops the load (or refuses the swap), naming it.
    fn claim(stores: &Arc<Stores>, component: &str, spec: &ComponentSpec) -> anyhow::Result<()> {
        super::claim_labels(
            component,
            &spec.key_value_stores,
            "key-value store",
            "key_value_store",
            |label| stores.backend(label).map(|b| b.is_some()),
        )
    }

    fn instance(
        stores: &Arc<Stores>,
        grant: &Arc<BTreeSet<String>>,
        _request: &Request,
    ) -> KeyValueInstance {
        KeyValueInstance {
            granted: grant.clone(),
            stores: stores.clone(),
            open: 0,
        }
    }

    fn add_to_linker(linker: &mut Linker<HostState>, concurrent: bool) -> anyhow::Result<()> {
        fn get(s: &mut HostState) -> KvView<'_> {
            KvView {
                kv: &mut s.caps.key_value,
                table: &mut s.table,
            }
        }
        v2::add_to_linker::<HostState, HasKv>(linker, get)?;
        wk::store::add_to_linker::<HostState, HasKv>(linker, get)?;
        wk::atomics::add_to_linker::<HostState, HasKv>(linker, get)?;
        wk::batch::add_to_linker::<HostState, HasKv>(linker, get)?;
        if concurrent {
            v3::add_to_linker::<HostState, HasKv>(linker, get)?;
        }
        Ok(())
    }
}
