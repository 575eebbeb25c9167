//! Spin's SQLite databases: `fermyon:spin/sqlite@2.0.0` (spin-sdk 2 to 4),
//! `spin:sqlite/sqlite@3.0.0` (spin-sdk 5) and `@3.1.0` (spin-sdk 6+, with
//! async functions and rows as a stream).
//!
//! Owns: the `sqlite_databases` grant, where each label's file is (`default`:
//! `<state dir>/sqlite_db.db`, Spin's; others from the runtime config's
//! `[sqlite_database.<label>]`), and each instance's open connections. Every
//! `open` is a connection of its own, so a guest's transaction is its own;
//! WAL and a busy timeout let requests write one file at once. Statements
//! run on the blocking pool, each interrupted past `STATEMENT_TIMEOUT` or
//! its request's deadline, whichever comes first (so a statement never
//! runs on after its request has timed out), and
//! a result larger than `MAX_RESULT_BYTES` is an error to the guest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Accessor, Linker, Resource, ResourceTable};

use super::bindings;
use super::{Capability, HostState, Request, Settings};
use crate::manifest::{ComponentSpec, ManifestError};

use bindings::fermyon::spin::sqlite as v2;
use bindings::spin::sqlite3_0_0::sqlite as v30;
use bindings::spin::sqlite3_1_0::sqlite as v31;

/// Longest one statement may run.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest result (values' bytes) one statement may return to a guest.
pub const MAX_RESULT_BYTES: usize = 32 << 20;
/// Most connections one instance may hold open.
pub const MAX_OPEN: usize = 16;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where each database label lives.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub databases: BTreeMap<String, PathBuf>,
}

impl Config {
    /// `default` in `<state_dir>/sqlite_db.db` (Spin's), then the runtime
    /// config's databases; one without a `path` lives in
    /// `<state_dir>/sqlite_db_<label>.db`.
    pub fn new(state_dir: &Path, configured: &BTreeMap<String, Option<PathBuf>>) -> Config {
        let mut databases = BTreeMap::new();
        databases.insert("default".to_string(), state_dir.join("sqlite_db.db"));
        for (label, path) in configured {
            let path = path
                .clone()
                .unwrap_or_else(|| state_dir.join(format!("sqlite_db_{label}.db")));
            databases.insert(label.clone(), path);
        }
        Config { databases }
    }

    pub fn path(&self, label: &str) -> Option<&Path> {
        self.databases.get(label).map(PathBuf::as_path)
    }
}

/// Opens a connection to `path`, creating the file and its folder.
pub fn connect(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    use anyhow::Context as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state folder {}", dir.display()))?;
    }
    let conn = rusqlite::Connection::open(path)
        .with_context(|| format!("cannot open the SQLite database {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
        .with_context(|| {
            format!(
                "{} is not a usable SQLite database (corrupt, read-only, or not SQLite)",
                path.display()
            )
        })?;
    Ok(conn)
}

/// A value, in no interface version's terms.
enum Val {
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Null,
}

struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Val>>,
}

enum Failure {
    NoSuchDatabase,
    AccessDenied,
    Io(String),
}

/// An open connection, held in the instance's resource table.
pub struct OpenDb {
    conn: Arc<Mutex<rusqlite::Connection>>,
    last_rowid: i64,
    changes: u64,
}

fn run(
    conn: &rusqlite::Connection,
    statement: &str,
    params: Vec<Val>,
    deadline: Instant,
) -> Result<(Rows, i64, u64), String> {
    let until = deadline.min(Instant::now() + STATEMENT_TIMEOUT);
    conn.progress_handler(10_000, Some(move || Instant::now() > until))
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let mut stmt = conn.prepare(statement).map_err(|e| e.to_string())?;
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let params: Vec<rusqlite::types::Value> = params
            .into_iter()
            .map(|v| match v {
                Val::Integer(i) => rusqlite::types::Value::Integer(i),
                Val::Real(f) => rusqlite::types::Value::Real(f),
                Val::Text(s) => rusqlite::types::Value::Text(s),
                Val::Blob(b) => rusqlite::types::Value::Blob(b),
                Val::Null => rusqlite::types::Value::Null,
            })
            .collect();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            let mut values = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                let v = match row.get_ref(i).map_err(|e| e.to_string())? {
                    rusqlite::types::ValueRef::Integer(i) => Val::Integer(i),
                    rusqlite::types::ValueRef::Real(f) => Val::Real(f),
                    rusqlite::types::ValueRef::Text(t) => {
                        bytes += t.len();
                        Val::Text(String::from_utf8_lossy(t).into_owned())
                    }
                    rusqlite::types::ValueRef::Blob(b) => {
                        bytes += b.len();
                        Val::Blob(b.to_vec())
                    }
                    rusqlite::types::ValueRef::Null => Val::Null,
                };
                bytes += 8;
                values.push(v);
            }
            if bytes > MAX_RESULT_BYTES {
                return Err(format!(
                    "the result is larger than {MAX_RESULT_BYTES} bytes: select fewer rows or columns"
                ));
            }
            out.push(values);
        }
        Ok(Rows { columns, rows: out })
    })();
    conn.progress_handler(0, None::<fn() -> bool>)
        .map_err(|e| e.to_string())?;
    let rows = result.map_err(|e| {
        if e.contains("interrupted") {
            format!(
                "the statement was interrupted: it ran past {STATEMENT_TIMEOUT:?} \
                 or past its request's deadline"
            )
        } else {
            e
        }
    })?;
    Ok((rows, conn.last_insert_rowid(), conn.changes()))
}

/// One instance's SQLite state.
pub struct SqliteInstance {
    granted: Arc<BTreeSet<String>>,
    config: Arc<Config>,
    open: usize,
    deadline: Instant,
}

pub struct DbView<'a> {
    db: &'a mut SqliteInstance,
    table: &'a mut ResourceTable,
}

impl DbView<'_> {
    async fn open(&mut self, label: String) -> wasmtime::Result<Result<Resource<OpenDb>, Failure>> {
        if !self.db.granted.contains(&label) {
            return Ok(Err(Failure::AccessDenied));
        }
        let Some(path) = self.db.config.path(&label).map(Path::to_path_buf) else {
            return Ok(Err(Failure::NoSuchDatabase));
        };
        if self.db.open >= MAX_OPEN {
            return Ok(Err(Failure::Io(format!(
                "more than {MAX_OPEN} connections open in one request"
            ))));
        }
        let conn = match tokio::task::spawn_blocking(move || connect(&path)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Ok(Err(Failure::Io(format!("{e:#}")))),
            Err(e) => return Ok(Err(Failure::Io(e.to_string()))),
        };
        let r = self.table.push(OpenDb {
            conn: Arc::new(Mutex::new(conn)),
            last_rowid: 0,
            changes: 0,
        })?;
        self.db.open += 1;
        Ok(Ok(r))
    }

    fn conn(&self, db: &Resource<OpenDb>) -> wasmtime::Result<Arc<Mutex<rusqlite::Connection>>> {
        Ok(self.table.get(db)?.conn.clone())
    }

    fn record(&mut self, db: &Resource<OpenDb>, rowid: i64, changes: u64) -> wasmtime::Result<()> {
        let d = self.table.get_mut(db)?;
        d.last_rowid = rowid;
        d.changes = changes;
        Ok(())
    }

    fn close(&mut self, db: Resource<OpenDb>) -> wasmtime::Result<()> {
        self.table.delete(db)?;
        self.db.open = self.db.open.saturating_sub(1);
        Ok(())
    }
}

async fn execute(
    conn: Arc<Mutex<rusqlite::Connection>>,
    statement: String,
    params: Vec<Val>,
    deadline: Instant,
) -> Result<(Rows, i64, u64), Failure> {
    let r = tokio::task::spawn_blocking(move || {
        let conn = conn
            .lock()
            .map_err(|_| "the connection is unusable".to_string())?;
        run(&conn, &statement, params, deadline)
    })
    .await;
    match r {
        Ok(r) => r.map_err(Failure::Io),
        Err(e) => Err(Failure::Io(e.to_string())),
    }
}

/// The conversions between one interface version's types and the neutral
/// ones, and its synchronous functions: the three versions share them.
macro_rules! version {
    ($m:ident) => {
        impl From<$m::Value> for Val {
            fn from(v: $m::Value) -> Val {
                match v {
                    $m::Value::Integer(i) => Val::Integer(i),
                    $m::Value::Real(f) => Val::Real(f),
                    $m::Value::Text(s) => Val::Text(s),
                    $m::Value::Blob(b) => Val::Blob(b),
                    $m::Value::Null => Val::Null,
                }
            }
        }
        impl From<Val> for $m::Value {
            fn from(v: Val) -> $m::Value {
                match v {
                    Val::Integer(i) => $m::Value::Integer(i),
                    Val::Real(f) => $m::Value::Real(f),
                    Val::Text(s) => $m::Value::Text(s),
                    Val::Blob(b) => $m::Value::Blob(b),
                    Val::Null => $m::Value::Null,
                }
            }
        }
        impl From<Failure> for $m::Error {
            fn from(f: Failure) -> $m::Error {
                match f {
                    Failure::NoSuchDatabase => $m::Error::NoSuchDatabase,
                    Failure::AccessDenied => $m::Error::AccessDenied,
                    Failure::Io(m) => $m::Error::Io(m),
                }
            }
        }
        impl From<Rows> for $m::QueryResult {
            fn from(r: Rows) -> $m::QueryResult {
                $m::QueryResult {
                    columns: r.columns,
                    rows: r
                        .rows
                        .into_iter()
                        .map(|values| $m::RowResult {
                            values: values.into_iter().map(Into::into).collect(),
                        })
                        .collect(),
                }
            }
        }
        impl $m::Host for DbView<'_> {}
    };
}

version!(v2);
version!(v30);
version!(v31);

/// `open` and `execute` of one version, through the shared view.
macro_rules! open_execute {
    ($m:ident) => {
        async fn open(
            &mut self,
            database: String,
        ) -> wasmtime::Result<Result<Resource<OpenDb>, $m::Error>> {
            Ok(DbView::open(self, database).await?.map_err(Into::into))
        }
        async fn execute(
            &mut self,
            db: Resource<OpenDb>,
            statement: String,
            parameters: Vec<$m::Value>,
        ) -> wasmtime::Result<Result<$m::QueryResult, $m::Error>> {
            let conn = self.conn(&db)?;
            let params = parameters.into_iter().map(Into::into).collect();
            match execute(conn, statement, params, self.db.deadline).await {
                Ok((rows, rowid, changes)) => {
                    self.record(&db, rowid, changes)?;
                    Ok(Ok(rows.into()))
                }
                Err(e) => Ok(Err(e.into())),
            }
        }
        async fn drop(&mut self, db: Resource<OpenDb>) -> wasmtime::Result<()> {
            self.close(db)
        }
    };
}

impl v2::HostConnection for DbView<'_> {
    open_execute!(v2);
}

impl v30::HostConnection for DbView<'_> {
    open_execute!(v30);
    fn last_insert_rowid(&mut self, db: Resource<OpenDb>) -> wasmtime::Result<i64> {
        Ok(self.table.get(&db)?.last_rowid)
    }
    fn changes(&mut self, db: Resource<OpenDb>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&db)?.changes)
    }
}

impl v31::HostConnection for DbView<'_> {
    open_execute!(v31);
    fn last_insert_rowid(&mut self, db: Resource<OpenDb>) -> wasmtime::Result<i64> {
        Ok(self.table.get(&db)?.last_rowid)
    }
    fn changes(&mut self, db: Resource<OpenDb>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&db)?.changes)
    }
}

pub struct HasDb;
impl wasmtime::component::HasData for HasDb {
    type Data<'a> = DbView<'a>;
}

impl<U> v31::HostConnectionWithStore<U> for HasDb {
    async fn open_async(
        accessor: &Accessor<U, Self>,
        database: String,
    ) -> wasmtime::Result<Result<Resource<OpenDb>, v31::Error>> {
        let (granted, path, full) = accessor.with(|mut view| {
            let v = view.get();
            (
                v.db.granted.contains(&database),
                v.db.config.path(&database).map(Path::to_path_buf),
                v.db.open >= MAX_OPEN,
            )
        });
        if !granted {
            return Ok(Err(v31::Error::AccessDenied));
        }
        let Some(path) = path else {
            return Ok(Err(v31::Error::NoSuchDatabase));
        };
        if full {
            return Ok(Err(v31::Error::Io(format!(
                "more than {MAX_OPEN} connections open in one request"
            ))));
        }
        let conn = match tokio::task::spawn_blocking(move || connect(&path)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Ok(Err(v31::Error::Io(format!("{e:#}")))),
            Err(e) => return Ok(Err(v31::Error::Io(e.to_string()))),
        };
        accessor.with(|mut view| {
            let v = view.get();
            let r = v.table.push(OpenDb {
                conn: Arc::new(Mutex::new(conn)),
                last_rowid: 0,
                changes: 0,
            })?;
            v.db.open += 1;
            Ok(Ok(r))
        })
    }

    async fn execute_async(
        accessor: &Accessor<U, Self>,
        db: Resource<OpenDb>,
        statement: String,
        parameters: Vec<v31::Value>,
    ) -> wasmtime::Result<
        Result<
            (
                Vec<String>,
                wasmtime::component::StreamReader<v31::RowResult>,
                wasmtime::component::FutureReader<Result<(), v31::Error>>,
            ),
            v31::Error,
        >,
    > {
        let (conn, deadline) = accessor.with(|mut view| {
            let view = view.get();
            view.conn(&db).map(|conn| (conn, view.db.deadline))
        })?;
        let params = parameters.into_iter().map(Into::into).collect();
        let (rows, rowid, changes) = match execute(conn, statement, params, deadline).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(e.into())),
        };
        accessor.with(|mut access| {
            access.get().record(&db, rowid, changes)?;
            let result: v31::QueryResult = rows.into();
            let stream = wasmtime::component::StreamReader::new(&mut access, result.rows)?;
            let done = wasmtime::component::FutureReader::new(&mut access, async {
                wasmtime::error::Ok(Ok(()))
            })?;
            Ok(Ok((result.columns, stream, done)))
        })
    }

    async fn last_insert_rowid_async(
        accessor: &Accessor<U, Self>,
        db: Resource<OpenDb>,
    ) -> wasmtime::Result<i64> {
        accessor.with(|mut view| Ok(view.get().table.get(&db)?.last_rowid))
    }

    async fn changes_async(
        accessor: &Accessor<U, Self>,
        db: Resource<OpenDb>,
    ) -> wasmtime::Result<u64> {
        accessor.with(|mut view| Ok(view.get().table.get(&db)?.changes))
    }
}

/// The SQLite capability.
pub struct Sqlite;

impl Capability for Sqlite {
    type Grant = Arc<BTreeSet<String>>;
    type Shared = Arc<Config>;
    type Instance = SqliteInstance;

    fn shared(settings: &Settings) -> anyhow::Result<Arc<Config>> {
        Ok(Arc::new(settings.sqlite.clone()))
    }

    fn grant(
        spec: &ComponentSpec,
        _values: &BTreeMap<String, String>,
    ) -> Result<Arc<BTreeSet<String>>, ManifestError> {
        Ok(Arc::new(
            spec.sqlite_databases
                .iter()
                .map(|g| g.label.clone())
                .collect(),
        ))
    }

    /// Every granted label must have a database, and it must open: a
    /// missing or unusable one stops the load, naming it.
    fn claim(config: &Arc<Config>, component: &str, spec: &ComponentSpec) -> anyhow::Result<()> {
        super::claim_labels(
            component,
            &spec.sqlite_databases,
            "SQLite database",
            "sqlite_database",
            |label| match config.path(label) {
                Some(path) => connect(path).map(|_| true),
                None => Ok(false),
            },
        )
    }

    fn instance(
        config: &Arc<Config>,
        grant: &Arc<BTreeSet<String>>,
        request: &Request,
    ) -> SqliteInstance {
        SqliteInstance {
            granted: grant.clone(),
            config: config.clone(),
            open: 0,
            deadline: request.deadline,
        }
    }

    fn add_to_linker(linker: &mut Linker<HostState>, concurrent: bool) -> anyhow::Result<()> {
        fn get(s: &mut HostState) -> DbView<'_> {
            DbView {
                db: &mut s.caps.sqlite,
                table: &mut s.table,
            }
        }
        v2::add_to_linker::<HostState, HasDb>(linker, get)?;
        v30::add_to_linker::<HostState, HasDb>(linker, get)?;
        if concurrent {
            v31::add_to_linker::<HostState, HasDb>(linker, get)?;
        }
        Ok(())
    }
}
