//! SQLite run store for `hgpt serve`.
//!
//! One database file, `DIR/hgpt.sqlite3`, holds every run the server accepted:
//!
//! - `runs`: one row per run. An `INTEGER PRIMARY KEY AUTOINCREMENT` column `pk` records
//!   creation order (it is what the [`Store::list_runs`] cursor encodes); the other columns are
//!   `id` (unique text), `state` (see [`RunState`]), `created_at_ms`, `started_at_ms`,
//!   `finished_at_ms`, `request`, `messages` (JSON), `record` (JSON, null until the run ends)
//!   and `error`. `state` is indexed.
//! - `events`: the event log of each run, `(run_id, seq)` as primary key, with `at_ms` and
//!   `data` (JSON). `seq` starts at 1 per run.
//!
//! The file uses WAL journaling, `synchronous=NORMAL`, foreign keys and a 5 s busy timeout;
//! the schema version lives in `PRAGMA user_version` and migrations run in one transaction.
//! A file written by a newer version of this crate is refused ([`StoreError::SchemaTooNew`]).
//!
//! The API is blocking: a [`Store`] is a cheap, cloneable handle around a writing connection and
//! (for a file) a read-only one, each behind a mutex, so reads and writes never wait for each
//! other (WAL). Async callers should use `tokio::task::spawn_blocking`. Records and events are
//! plain [`serde_json::Value`]s so this crate does not depend on the pipeline's types.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, ffi, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Name of the database file inside the directory given to [`Store::open`].
pub const DB_FILE_NAME: &str = "hgpt.sqlite3";

/// Schema version written by this code (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// Largest page [`Store::list_runs`] returns.
pub const MAX_PAGE_SIZE: usize = 200;

/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Migrations, index `i` upgrades the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    "CREATE TABLE runs (
        pk             INTEGER PRIMARY KEY AUTOINCREMENT,
        id             TEXT NOT NULL UNIQUE,
        state          TEXT NOT NULL,
        created_at_ms  INTEGER NOT NULL,
        started_at_ms  INTEGER,
        finished_at_ms INTEGER,
        request        TEXT NOT NULL,
        messages       TEXT NOT NULL,
        record         TEXT,
        error          TEXT
    );
    CREATE INDEX runs_state ON runs(state);
    CREATE TABLE events (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        seq    INTEGER NOT NULL CHECK (seq >= 1),
        at_ms  INTEGER NOT NULL,
        data   TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );",
];

/// Errors from the run store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A JSON column of a run could not be read or written.
    #[error("run {run_id}: bad JSON in column `{column}`: {source}")]
    Json {
        /// The run the cell belongs to.
        run_id: String,
        /// The column (`messages`, `record` or `events.data`).
        column: &'static str,
        /// The serde_json error.
        source: serde_json::Error,
    },
    /// A stored cell holds a value this code cannot interpret (e.g. an unknown state).
    #[error("run {run_id}: corrupt value in column `{column}`: {value}")]
    Corrupt {
        /// The run the cell belongs to.
        run_id: String,
        /// The column name.
        column: &'static str,
        /// The offending value, as text.
        value: String,
    },
    /// No run has this id.
    #[error("unknown run `{0}`")]
    UnknownRun(String),
    /// A run with this id already exists.
    #[error("run `{0}` already exists")]
    DuplicateRun(String),
    /// The run already has an event with this sequence number.
    #[error("run `{run_id}` already has an event with seq {seq}")]
    DuplicateEvent {
        /// The run.
        run_id: String,
        /// The sequence number.
        seq: u64,
    },
    /// The run already reached a terminal state, which is left unchanged.
    #[error("run `{0}` already finished ({1})")]
    AlreadyFinished(String, RunState),
    /// The requested state change is not allowed from the run's current state.
    #[error("run `{id}` cannot go from {from} to {to}")]
    InvalidTransition {
        /// The run.
        id: String,
        /// Its current state.
        from: RunState,
        /// The requested state.
        to: RunState,
    },
    /// The `before` cursor given to [`Store::list_runs`] is not one the store produced.
    #[error("bad cursor `{0}`")]
    BadCursor(String),
    /// A number does not fit SQLite's signed 64-bit integers.
    #[error("{what} {value} is out of range")]
    OutOfRange {
        /// What the number is (e.g. `created_at_ms`).
        what: &'static str,
        /// The number.
        value: u64,
    },
    /// The database directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database file was written by a newer version (its `user_version`).
    #[error("database schema version {0} is newer than this hgpt understands ({SCHEMA_VERSION})")]
    SchemaTooNew(i64),
}

/// The lifecycle state of a run: `queued -> running -> succeeded | failed | cancelled | interrupted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Accepted, waiting for a slot.
    Queued,
    /// Being executed.
    Running,
    /// Ended with an answer.
    Succeeded,
    /// Ended with an error.
    Failed,
    /// Cancelled by a client.
    Cancelled,
    /// Stopped by a server shutdown or crash.
    Interrupted,
}

impl RunState {
    /// Every state, in lifecycle order.
    pub const ALL: [RunState; 6] = [
        RunState::Queued,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
        RunState::Interrupted,
    ];

    /// The lowercase name used in the database and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::Interrupted => "interrupted",
        }
    }

    /// Whether the run has ended (anything but queued or running).
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunState::Queued | RunState::Running)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error from parsing a [`RunState`] name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run state `{0}`")]
pub struct ParseRunStateError(pub String);

impl FromStr for RunState {
    type Err = ParseRunStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseRunStateError(s.to_owned()))
    }
}

/// A run to insert; it starts in [`RunState::Queued`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRun {
    /// Unique run id.
    pub id: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The user request (last user message).
    pub request: String,
    /// The full chat messages of the request.
    pub messages: Value,
}

/// One entry of a run's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Sequence number, starting at 1 per run.
    pub seq: u64,
    /// When the event happened, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The event payload.
    pub data: Value,
}

/// How a run ended, for [`Store::finish_run`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFinish {
    /// The terminal state.
    pub state: RunState,
    /// End time, milliseconds since the Unix epoch.
    pub finished_at_ms: u64,
    /// The run record (`hgpt run --json`), if one was produced.
    pub record: Option<Value>,
    /// The error message, for failed, cancelled or interrupted runs.
    pub error: Option<String>,
}

/// A stored run with everything in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    /// Unique run id.
    pub id: String,
    /// Current state.
    pub state: RunState,
    /// Creation time (ms since the epoch).
    pub created_at_ms: u64,
    /// When it started running (ms since the epoch).
    pub started_at_ms: Option<u64>,
    /// When it ended (ms since the epoch).
    pub finished_at_ms: Option<u64>,
    /// The user request.
    pub request: String,
    /// The chat messages of the request.
    pub messages: Value,
    /// The run record once the run ended, if any.
    pub record: Option<Value>,
    /// The error message, if any.
    pub error: Option<String>,
}

/// A run without its messages and record, for listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Unique run id.
    pub id: String,
    /// Current state.
    pub state: RunState,
    /// Creation time (ms since the epoch).
    pub created_at_ms: u64,
    /// When it started running (ms since the epoch).
    pub started_at_ms: Option<u64>,
    /// When it ended (ms since the epoch).
    pub finished_at_ms: Option<u64>,
    /// The user request.
    pub request: String,
    /// The error message, if any.
    pub error: Option<String>,
}

/// One page of [`Store::list_runs`], newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPage {
    /// The runs of this page.
    pub runs: Vec<RunSummary>,
    /// Opaque cursor for the next (older) page; `None` on the last page.
    pub next: Option<String>,
}

/// Handle to the run store: cheap to clone, `Send + Sync`, blocking.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    /// A second, read-only connection for a file store, so that reads (a
    /// long event replay) never wait for writes, nor writes for reads (WAL
    /// lets them run at once). An in-memory store reads through `conn`.
    reader: Option<Mutex<Connection>>,
    path: Option<PathBuf>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, file `dir/hgpt.sqlite3`, and migrates it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE_NAME);
        let conn = Connection::open(&path)?;
        Self::init(conn, Some(path))
    }

    /// Opens a private in-memory store (for tests and `--no-store` setups).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory()?, None)
    }

    fn init(mut conn: Connection, path: Option<PathBuf>) -> Result<Store, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Refuse a newer file before touching it (journal mode changes the file).
        check_version(user_version(&conn)?)?;
        // Returns the resulting mode ("memory" for in-memory databases).
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        let reader = match &path {
            Some(path) => {
                let reader = Connection::open(path)?;
                reader.busy_timeout(BUSY_TIMEOUT)?;
                reader.pragma_update(None, "query_only", "ON")?;
                Some(Mutex::new(reader))
            }
            None => None,
        };
        Ok(Store {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                reader,
                path,
            }),
        })
    }

    /// The database file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open (it rolls back
        // on drop), so the connection is still usable.
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection for reads: the read-only one of a file store.
    fn read_conn(&self) -> MutexGuard<'_, Connection> {
        self.inner
            .reader
            .as_ref()
            .unwrap_or(&self.inner.conn)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Inserts a new run in state queued. A run with the same id gives [`StoreError::DuplicateRun`].
    pub fn insert_run(&self, run: &NewRun) -> Result<(), StoreError> {
        let created = to_i64("created_at_ms", run.created_at_ms)?;
        let messages = to_json(&run.id, "messages", &run.messages)?;
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "INSERT INTO runs (id, state, created_at_ms, request, messages)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        match stmt.execute(params![
            run.id,
            RunState::Queued.as_str(),
            created,
            run.request,
            messages
        ]) {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_UNIQUE) => {
                Err(StoreError::DuplicateRun(run.id.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves a queued run to running. A terminal run gives [`StoreError::AlreadyFinished`],
    /// a running one [`StoreError::InvalidTransition`].
    pub fn set_running(&self, id: &str, started_at_ms: u64) -> Result<(), StoreError> {
        let started = to_i64("started_at_ms", started_at_ms)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let from = current_state(&tx, id)?;
        if from.is_terminal() {
            return Err(StoreError::AlreadyFinished(id.to_owned(), from));
        }
        if from != RunState::Queued {
            return Err(StoreError::InvalidTransition {
                id: id.to_owned(),
                from,
                to: RunState::Running,
            });
        }
        tx.prepare_cached("UPDATE runs SET state = ?2, started_at_ms = ?3 WHERE id = ?1")?
            .execute(params![id, RunState::Running.as_str(), started])?;
        tx.commit()?;
        Ok(())
    }

    /// Appends events to a run's log in one transaction: either all are stored or none.
    pub fn append_events(&self, id: &str, events: &[StoredEvent]) -> Result<(), StoreError> {
        let mut rows = Vec::with_capacity(events.len());
        for ev in events {
            rows.push((
                ev.seq,
                to_i64("seq", ev.seq)?,
                to_i64("at_ms", ev.at_ms)?,
                to_json(id, "events.data", &ev.data)?,
            ));
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        current_state(&tx, id)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (run_id, seq, at_ms, data) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (seq, seq_i, at, data) in &rows {
                match stmt.execute(params![id, seq_i, at, data]) {
                    Ok(_) => {}
                    Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                        return Err(StoreError::DuplicateEvent {
                            run_id: id.to_owned(),
                            seq: *seq,
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Ends a run. A run that already ended is left as it is and gives
    /// [`StoreError::AlreadyFinished`]; a non-terminal `finish.state` gives
    /// [`StoreError::InvalidTransition`].
    pub fn finish_run(&self, id: &str, finish: &RunFinish) -> Result<(), StoreError> {
        let finished = to_i64("finished_at_ms", finish.finished_at_ms)?;
        let record = finish
            .record
            .as_ref()
            .map(|r| to_json(id, "record", r))
            .transpose()?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let from = current_state(&tx, id)?;
        if from.is_terminal() {
            return Err(StoreError::AlreadyFinished(id.to_owned(), from));
        }
        if !finish.state.is_terminal() {
            return Err(StoreError::InvalidTransition {
                id: id.to_owned(),
                from,
                to: finish.state,
            });
        }
        tx.prepare_cached(
            "UPDATE runs SET state = ?2, finished_at_ms = ?3, record = ?4, error = ?5 WHERE id = ?1",
        )?
        .execute(params![id, finish.state.as_str(), finished, record, finish.error])?;
        tx.commit()?;
        Ok(())
    }

    /// The run with this id, or `None`.
    pub fn run(&self, id: &str) -> Result<Option<RunRow>, StoreError> {
        let conn = self.read_conn();
        let raw = conn
            .prepare_cached(
                "SELECT id, state, created_at_ms, started_at_ms, finished_at_ms, request, error,
                        messages, record
                 FROM runs WHERE id = ?1",
            )?
            .query_row([id], |row| {
                Ok((
                    RawSummary::from_row(row)?,
                    row.get::<_, String>(7)?,
                    row.get::<_, Option<String>>(8)?,
                ))
            })
            .optional()?;
        drop(conn);
        let Some((raw, messages, record)) = raw else {
            return Ok(None);
        };
        let summary = raw.decode()?;
        let messages = from_json(&summary.id, "messages", &messages)?;
        let record = record
            .map(|r| from_json(&summary.id, "record", &r))
            .transpose()?;
        Ok(Some(RunRow {
            id: summary.id,
            state: summary.state,
            created_at_ms: summary.created_at_ms,
            started_at_ms: summary.started_at_ms,
            finished_at_ms: summary.finished_at_ms,
            request: summary.request,
            messages,
            record,
            error: summary.error,
        }))
    }

    /// The events of a run with `seq > after_seq`, ascending. Unknown run: [`StoreError::UnknownRun`].
    pub fn events(&self, id: &str, after_seq: u64) -> Result<Vec<StoredEvent>, StoreError> {
        // Stored seqs fit i64, so anything larger selects nothing, like i64::MAX.
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let raw: Vec<(i64, i64, String)> = {
            let conn = self.read_conn();
            current_state(&conn, id)?;
            let mut stmt = conn.prepare_cached(
                "SELECT seq, at_ms, data FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            stmt.query_map(params![id, after], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<Result<_, _>>()?
        };
        raw.into_iter()
            .map(|(seq, at, data)| {
                Ok(StoredEvent {
                    seq: to_u64(id, "events.seq", seq)?,
                    at_ms: to_u64(id, "events.at_ms", at)?,
                    data: from_json(id, "events.data", &data)?,
                })
            })
            .collect()
    }

    /// Lists runs newest first. `limit` is clamped to `1..=200`; `before` is the `next` cursor
    /// of a previous page (anything else gives [`StoreError::BadCursor`]).
    pub fn list_runs(&self, limit: usize, before: Option<&str>) -> Result<RunPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        let before = match before {
            Some(c) => parse_cursor(c)?,
            None => i64::MAX,
        };
        let raw: Vec<(i64, RawSummary)> = {
            let conn = self.read_conn();
            let mut stmt = conn.prepare_cached(
                "SELECT id, state, created_at_ms, started_at_ms, finished_at_ms, request, error, pk
                 FROM runs WHERE pk < ?1 ORDER BY pk DESC LIMIT ?2",
            )?;
            // One extra row tells whether an older page exists.
            stmt.query_map(params![before, (limit + 1) as i64], |row| {
                Ok((row.get(7)?, RawSummary::from_row(row)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let more = raw.len() > limit;
        let mut runs = Vec::with_capacity(limit.min(raw.len()));
        let mut last_pk = None;
        for (pk, r) in raw.into_iter().take(limit) {
            runs.push(r.decode()?);
            last_pk = Some(pk);
        }
        let next = if more {
            last_pk.map(|pk| pk.to_string())
        } else {
            None
        };
        Ok(RunPage { runs, next })
    }

    /// Marks every queued or running run interrupted (`error = reason`, `finished_at_ms = now_ms`)
    /// and returns their ids, oldest first. Terminal runs are left alone. With `final_event`,
    /// each of them also gets that event after its last one (at `now_ms`), in the same
    /// transaction, so no run is ever interrupted without it.
    pub fn mark_interrupted(
        &self,
        now_ms: u64,
        reason: &str,
        final_event: Option<&Value>,
    ) -> Result<Vec<String>, StoreError> {
        let now = to_i64("now_ms", now_ms)?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<String> = tx
            .prepare_cached("SELECT id FROM runs WHERE state IN (?1, ?2) ORDER BY pk")?
            .query_map(
                params![RunState::Queued.as_str(), RunState::Running.as_str()],
                |row| row.get(0),
            )?
            .collect::<Result<_, _>>()?;
        tx.prepare_cached(
            "UPDATE runs SET state = ?3, finished_at_ms = ?4, error = ?5 WHERE state IN (?1, ?2)",
        )?
        .execute(params![
            RunState::Queued.as_str(),
            RunState::Running.as_str(),
            RunState::Interrupted.as_str(),
            now,
            reason
        ])?;
        if let Some(event) = final_event {
            let data = serde_json::to_string(event).map_err(|source| StoreError::Json {
                run_id: String::new(),
                column: "events.data",
                source,
            })?;
            let mut append = tx.prepare_cached(
                "INSERT INTO events (run_id, seq, at_ms, data) \
                 SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3 FROM events WHERE run_id = ?1",
            )?;
            for id in &ids {
                append.execute(params![id, now, data])?;
            }
        }
        tx.commit()?;
        Ok(ids)
    }

    /// Deletes ended runs (never queued or running ones) with their events: those that
    /// finished before `finished_before_ms`, and those beyond the newest `keep_latest` runs.
    /// With neither, nothing is deleted. Returns how many runs were deleted.
    pub fn prune(
        &self,
        finished_before_ms: Option<u64>,
        keep_latest: Option<usize>,
    ) -> Result<u64, StoreError> {
        let before = finished_before_ms
            .map(|ms| to_i64("finished_before_ms", ms))
            .transpose()?;
        let keep = keep_latest
            .map(|n| to_i64("keep_latest", n as u64))
            .transpose()?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut deleted = 0;
        if let Some(before) = before {
            deleted += tx
                .prepare_cached(
                    "DELETE FROM runs WHERE state NOT IN (?1, ?2) AND finished_at_ms < ?3",
                )?
                .execute(params![
                    RunState::Queued.as_str(),
                    RunState::Running.as_str(),
                    before
                ])?;
        }
        if let Some(keep) = keep {
            deleted += tx
                .prepare_cached(
                    "DELETE FROM runs WHERE state NOT IN (?1, ?2) AND pk NOT IN \
                     (SELECT pk FROM runs ORDER BY pk DESC LIMIT ?3)",
                )?
                .execute(params![
                    RunState::Queued.as_str(),
                    RunState::Running.as_str(),
                    keep
                ])?;
        }
        tx.commit()?;
        Ok(deleted as u64)
    }

    /// The number of runs in each state, every state listed once in [`RunState::ALL`] order.
    pub fn count_by_state(&self) -> Result<Vec<(RunState, u64)>, StoreError> {
        let counts: Vec<(String, i64)> = {
            let conn = self.read_conn();
            let mut stmt =
                conn.prepare_cached("SELECT state, COUNT(*) FROM runs GROUP BY state")?;
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        let mut out: Vec<(RunState, u64)> = RunState::ALL.iter().map(|s| (*s, 0)).collect();
        for (state, n) in counts {
            let st = RunState::from_str(&state).map_err(|_| StoreError::Corrupt {
                run_id: String::from("?"),
                column: "state",
                value: state.clone(),
            })?;
            if let Some(slot) = out.iter_mut().find(|(s, _)| *s == st) {
                slot.1 = u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(out)
    }
}

/// Columns 0..=6 of a run row, before decoding.
struct RawSummary {
    id: String,
    state: String,
    created_at_ms: i64,
    started_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
    request: String,
    error: Option<String>,
}

impl RawSummary {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(RawSummary {
            id: row.get(0)?,
            state: row.get(1)?,
            created_at_ms: row.get(2)?,
            started_at_ms: row.get(3)?,
            finished_at_ms: row.get(4)?,
            request: row.get(5)?,
            error: row.get(6)?,
        })
    }

    fn decode(self) -> Result<RunSummary, StoreError> {
        let state = parse_state(&self.id, &self.state)?;
        let created_at_ms = to_u64(&self.id, "created_at_ms", self.created_at_ms)?;
        let started_at_ms = self
            .started_at_ms
            .map(|v| to_u64(&self.id, "started_at_ms", v))
            .transpose()?;
        let finished_at_ms = self
            .finished_at_ms
            .map(|v| to_u64(&self.id, "finished_at_ms", v))
            .transpose()?;
        Ok(RunSummary {
            id: self.id,
            state,
            created_at_ms,
            started_at_ms,
            finished_at_ms,
            request: self.request,
            error: self.error,
        })
    }
}

fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

fn check_version(version: i64) -> Result<(), StoreError> {
    if version > SCHEMA_VERSION {
        Err(StoreError::SchemaTooNew(version))
    } else {
        Ok(())
    }
}

/// Applies the missing migrations in one immediate transaction (safe against a second
/// process opening the same file at the same time).
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version = user_version(&tx)?;
    check_version(version)?;
    let start = usize::try_from(version.max(0)).unwrap_or(0);
    if start < MIGRATIONS.len() {
        for sql in &MIGRATIONS[start..] {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

/// The state of run `id`, or [`StoreError::UnknownRun`].
fn current_state(conn: &Connection, id: &str) -> Result<RunState, StoreError> {
    let state: Option<String> = conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    match state {
        Some(s) => parse_state(id, &s),
        None => Err(StoreError::UnknownRun(id.to_owned())),
    }
}

fn parse_state(id: &str, s: &str) -> Result<RunState, StoreError> {
    RunState::from_str(s).map_err(|_| StoreError::Corrupt {
        run_id: id.to_owned(),
        column: "state",
        value: s.to_owned(),
    })
}

fn parse_cursor(cursor: &str) -> Result<i64, StoreError> {
    let bad = || StoreError::BadCursor(cursor.to_owned());
    if cursor.is_empty() || !cursor.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    cursor.parse::<i64>().map_err(|_| bad())
}

fn is_constraint(err: &rusqlite::Error, extended: std::ffi::c_int) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.extended_code == extended)
}

fn to_i64(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

fn to_u64(id: &str, column: &'static str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        run_id: id.to_owned(),
        column,
        value: value.to_string(),
    })
}

fn to_json(id: &str, column: &'static str, value: &Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Json {
        run_id: id.to_owned(),
        column,
        source,
    })
}

fn from_json(id: &str, column: &'static str, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Json {
        run_id: id.to_owned(),
        column,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for st in RunState::ALL {
            assert_eq!(st.as_str().parse::<RunState>(), Ok(st));
            assert_eq!(st.to_string(), st.as_str());
            assert_eq!(
                serde_json::to_value(st).unwrap(),
                Value::String(st.as_str().into())
            );
        }
        assert!("Queued".parse::<RunState>().is_err());
        let terminal: Vec<_> = RunState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                RunState::Succeeded,
                RunState::Failed,
                RunState::Cancelled,
                RunState::Interrupted
            ]
        );
    }

    #[test]
    fn store_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Store>();
    }

    #[test]
    fn cursor_parsing_is_strict() {
        assert_eq!(parse_cursor("42").unwrap(), 42);
        for bad in ["", "-1", "+1", "4 2", "abc", "99999999999999999999", "1.5"] {
            assert!(matches!(parse_cursor(bad), Err(StoreError::BadCursor(c)) if c == bad));
        }
    }
}
