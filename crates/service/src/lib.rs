//! What the three AP2 services share: configuration helpers, telemetry, problem+json errors,
//! the HTTP layers every router gets, and graceful shutdown.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod batch;
pub mod conn;
pub mod dpop;
pub mod http;
pub mod ids;
pub mod openapi;
pub mod pg;
pub mod problem;
pub mod rate;
pub mod secret_url;
pub mod telemetry;

pub use auth::{NamedToken, TokenSet, bearer_token};
pub use conn::ConnectionLimits;
pub use problem::{ApiJson, ApiPath, Problem};

/// The SQLite database a service keeps its state in: a few connections shared by its handlers
/// ([`READERS`]), one more owned by a writer thread that commits the writes given to
/// [`SqliteDb::write_async`] in groups, and another on a checkpointer thread that copies committed
/// pages from the WAL into the database file behind the writer.
#[derive(Debug)]
pub struct SqliteDb {
    conns: Vec<std::sync::Mutex<rusqlite::Connection>>,
    next: std::sync::atomic::AtomicUsize,
    writer: std::sync::Mutex<std::sync::mpsc::Sender<WriteJob>>,
    room: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The handlers' connections. With one, every read of every runtime worker took turns on its
/// lock, and a worker waiting for it slept with requests queued behind it. WAL lets readers
/// run side by side. Measured on the wallet's minting: 0.101–0.106 × openssl verify/s with
/// one, 0.112 with four (BENCHMARKS.md).
pub const READERS: usize = 4;

/// A group-committed write could not be made durable; the message says why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the write was not committed: {0}")]
pub struct WriteFailed(pub String);

/// One write for the writer thread: it runs in its own savepoint and says whether it
/// succeeded; what it returns is told the commit's outcome.
/// Given no connection (the transaction did not begin), it does not run.
type WriteJob = Box<dyn FnOnce(Option<&rusqlite::Connection>) -> (bool, Delivery) + Send>;
type Delivery = Box<dyn FnOnce(Option<&str>) + Send>;

/// Most writes committed together.
const GROUP_MAX: usize = 256;
/// Most writes given to the writer thread and not yet answered; a caller past that waits for
/// room. A write stays counted until its group is committed even when its caller stopped
/// waiting (a request that timed out), so a disk that stalls cannot make the queue grow
/// without end.
pub const WRITE_QUEUE: usize = 4096;

/// The connection's lock was poisoned by a panic while it was held.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the database connection lock is poisoned")]
pub struct DbPoisoned;

impl SqliteDb {
    /// Opens (or creates) the database the way every service keeps its state: WAL, so readers
    /// do not wait for the writer; `synchronous=FULL`, so an acknowledged write survives a
    /// power cut; foreign keys enforced; a 5 s busy timeout. Creates the file's directory, then
    /// runs `schema` (idempotent `CREATE … IF NOT EXISTS` statements). The file is readable by
    /// its owner only (0600, SPEC §9), and so are SQLite's `-wal` and `-shm` files, which it
    /// creates with the database file's mode.
    pub fn open(path: &std::path::Path, schema: &str) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        owner_only(path)?;
        let conn = connect(path)?;
        conn.execute_batch(schema)?;
        let mut conns = vec![std::sync::Mutex::new(conn)];
        for _ in 1..READERS {
            conns.push(std::sync::Mutex::new(connect(path)?));
        }
        let writer = connect(path)?;
        let checkpointer = connect(path)?;
        let (jobs, queue) = std::sync::mpsc::channel::<WriteJob>();
        let (doorbell, rung) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_behind(&checkpointer, &rung))?;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || group_commit(&writer, &queue, &doorbell))?;
        Ok(Self {
            conns,
            next: std::sync::atomic::AtomicUsize::new(0),
            writer: std::sync::Mutex::new(jobs),
            room: std::sync::Arc::new(tokio::sync::Semaphore::new(WRITE_QUEUE)),
        })
    }

    /// Runs `f` in the writer thread's transaction, together with the writes that arrived
    /// while the previous group was committing (group commit): each `f` in a savepoint of its
    /// own, so one that fails leaves the others alone, and one `COMMIT`, one fsync, for all.
    /// Returns `f`'s result once its group is durable, the caller's task woken then (no thread
    /// waits for it); a failed commit is `WriteFailed`. Waits first while [`WRITE_QUEUE`]
    /// writes are queued.
    pub async fn write_async<T, E>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbPoisoned> + From<WriteFailed> + Send + 'static,
    {
        // The semaphore is never closed.
        let place = self
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| writer_gone::<E>())?;
        let (tell, told) = tokio::sync::oneshot::channel::<Result<T, E>>();
        self.queue(f, move |result| {
            // Answered (or dropped, never to be run): its place is free.
            drop(place);
            let _ = tell.send(result);
        })?;
        told.await.map_err(|_| writer_gone::<E>())?
    }

    /// Gives `f` to the writer thread; `tell` receives its result once its group committed.
    fn queue<T, E>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
        tell: impl FnOnce(Result<T, E>) + Send + 'static,
    ) -> Result<(), E>
    where
        T: Send + 'static,
        E: From<DbPoisoned> + From<WriteFailed> + Send + 'static,
    {
        let job: WriteJob = Box::new(move |conn| {
            let result = conn.map(f);
            let ok = matches!(result, Some(Ok(_)));
            let deliver: Delivery = Box::new(move |commit_error| {
                let result = match (commit_error, result) {
                    (why, None) => Err(E::from(WriteFailed(why.unwrap_or("not run").to_owned()))),
                    (Some(why), Some(Ok(_))) => Err(E::from(WriteFailed(why.to_owned()))),
                    (_, Some(result)) => result,
                };
                tell(result);
            });
            (ok, deliver)
        });
        self.writer
            .lock()
            .map_err(|_| DbPoisoned)?
            .send(job)
            .map_err(|_| writer_gone::<E>())
    }

    /// Adds `column` (with its SQL declaration) to `table` unless it is there: how a schema
    /// of `CREATE … IF NOT EXISTS` statements grows a column on a database made before it.
    pub fn add_column(&self, table: &str, column: &str, declaration: &str) -> anyhow::Result<()> {
        self.with(|conn| -> anyhow::Result<()> {
            let present = conn
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
                ))?
                .exists([column])?;
            if !present {
                conn.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
                ))?;
            }
            Ok(())
        })
    }

    /// Runs `f` with one of the handlers' connections held: the first free one from a turning
    /// start, or, when all are in use, the one at the start once it is free. The store's error
    /// type says what a poisoned lock is.
    pub fn with<T, E: From<DbPoisoned>>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let n = self.conns.len();
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let free =
            (0..n).find_map(
                |i| match self.conns.get(start.wrapping_add(i) % n)?.try_lock() {
                    Ok(conn) => Some(Ok(conn)),
                    Err(std::sync::TryLockError::WouldBlock) => None,
                    Err(std::sync::TryLockError::Poisoned(_)) => Some(Err(DbPoisoned)),
                },
            );
        let mut conn = match free {
            Some(conn) => conn?,
            None => self
                .conns
                .get(start % n)
                .ok_or(DbPoisoned)?
                .lock()
                .map_err(|_| DbPoisoned)?,
        };
        f(&mut conn)
    }
}

/// The writer thread ended (the database is being dropped): no write is taken any more.
fn writer_gone<E: From<WriteFailed>>() -> E {
    E::from(WriteFailed("the writer thread is gone".into()))
}

/// `query_row` with the statement from the connection's cache (64 statements): parsed once,
/// not on every call.
pub fn query_row_cached<T, P: rusqlite::Params>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// `execute` with the statement from the connection's cache.
pub fn execute_cached<P: rusqlite::Params>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// A connection the way every service uses it: WAL, `synchronous=FULL`, foreign keys, a 5 s
/// busy timeout, a statement cache of 64.
fn connect(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Room for every statement a service prepares, so none is parsed again per call.
    conn.set_prepared_statement_cache_capacity(64);
    // The bundled SQLite is built with STAT4: without the query planner stability guarantee a
    // cached statement whose plan may depend on a bound value (a `LIMIT ?`, a row-value
    // cursor `(created_at, id) > (?3, ?4)`) is compiled again on every call whose values
    // changed: 8 % of the wallet's CPU under load. The services never run ANALYZE, so there
    // are no statistics for a fresh plan to use.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

/// The writer thread: takes what is queued (at most [`GROUP_MAX`]), runs each in a savepoint
/// of one transaction, commits once, then answers each. Ends when the database is dropped.
fn group_commit(
    conn: &rusqlite::Connection,
    queue: &std::sync::mpsc::Receiver<WriteJob>,
    doorbell: &std::sync::mpsc::SyncSender<()>,
) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let why = e.to_string();
            for job in jobs {
                // Not run: the transaction could not begin. Each is told so.
                let (_, deliver) = job(None);
                deliver(Some(&why));
            }
            continue;
        }
        let mut deliveries = Vec::with_capacity(jobs.len());
        for job in jobs {
            let savepoint = conn.execute_batch("SAVEPOINT one");
            // A write that panics is undone and its caller told (its answer is dropped); the
            // thread goes on with the others.
            let Ok((ok, deliver)) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(conn))))
            else {
                let _ = conn.execute_batch("ROLLBACK TO one; RELEASE one");
                continue;
            };
            let ended = if ok && savepoint.is_ok() {
                conn.execute_batch("RELEASE one")
            } else {
                conn.execute_batch("ROLLBACK TO one; RELEASE one")
            };
            deliveries.push((deliver, ended.err().map(|e| e.to_string())));
        }
        let committed = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        metrics::histogram!("sqlite_group_commit_size").record(deliveries.len() as f64);
        // The checkpointer is told there is more to copy; a ring already waiting is enough.
        let _ = doorbell.try_send(());
        for (deliver, ended) in deliveries {
            match (&committed, ended) {
                (Err(why), _) => deliver(Some(why)),
                (Ok(()), Some(why)) => deliver(Some(&why)),
                (Ok(()), None) => deliver(None),
            }
        }
    }
}

/// How long the checkpointer waits after a checkpoint before the next one. Shorter keeps each
/// checkpoint small; measured on the merchant's completions, p99 21–23 ms at 5 ms, 25.5–26.7 ms
/// at 20 ms, 31 ms at 100 ms (docs/PROTOCOL.md).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// The checkpointer thread: after commits, copies what the WAL holds into the database file
/// (a passive checkpoint: it never waits for the writer, nor the writer for it), at most every
/// [`CHECKPOINT_EVERY`]. The writer's own automatic checkpoint (at 1000 WAL pages) then has
/// little left to copy, so the commit that triggers it is not held up writing thousands of
/// pages. Ends when the writer thread does.
fn checkpoint_behind(conn: &rusqlite::Connection, rung: &std::sync::mpsc::Receiver<()>) {
    while rung.recv().is_ok() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "background checkpoint failed");
        }
        std::thread::sleep(CHECKPOINT_EVERY);
    }
}

/// Creates `path` with mode 0600 if it is missing, and narrows it (and SQLite's side files,
/// if there) to 0600 if it was made wider before.
fn owner_only(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Formats a Unix time as RFC 3339 UTC (`2026-11-23T11:26:19Z`).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// `e` and every cause under it, `: `-separated. Clients' errors often say only their kind: the
/// PostgreSQL client's `db error` or `error connecting to server`, reqwest's `error sending
/// request for url (…)`; the server's message (`password authentication failed for user
/// "…"`, `database "…" does not exist`) or the socket's (`Connection refused`) is their
/// source. Neither holds a password.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum TestError {
        Refused,
        Db(String),
    }
    impl From<DbPoisoned> for TestError {
        fn from(e: DbPoisoned) -> Self {
            Self::Db(e.to_string())
        }
    }
    impl From<WriteFailed> for TestError {
        fn from(e: WriteFailed) -> Self {
            Self::Db(e.to_string())
        }
    }

    /// `write_async` from a thread that is not in a runtime.
    fn write<T: Send + 'static>(
        db: &SqliteDb,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, TestError> + Send + 'static,
    ) -> Result<T, TestError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(db.write_async(f))
    }

    #[test]
    fn spec11_writes_are_committed_in_groups_and_a_failing_one_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(
            SqliteDb::open(
                &dir.path().join("g.db"),
                "CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY) STRICT;",
            )
            .unwrap(),
        );
        let results: Vec<Result<(), TestError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..32)
                .map(|i| {
                    let db = db.clone();
                    scope.spawn(move || {
                        write(&db, move |conn| {
                            conn.execute("INSERT INTO t VALUES (?1)", [i])
                                .map_err(|e| TestError::Db(e.to_string()))?;
                            // Inserted, then refused: its row must not survive.
                            if i == 7 {
                                Err(TestError::Refused)
                            } else {
                                Ok(())
                            }
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 31);
        assert!(matches!(results[7], Err(TestError::Refused)));
        let rows: i64 = db
            .with(|c| {
                c.query_row("SELECT COUNT(*) FROM t WHERE x != 7", [], |r| r.get(0))
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .unwrap();
        let seven: i64 = db
            .with(|c| {
                c.query_row("SELECT COUNT(*) FROM t WHERE x = 7", [], |r| r.get(0))
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .unwrap();
        assert_eq!((rows, seven), (31, 0));
        // A duplicate key fails alone too.
        let dup = write(&db, |conn| {
            conn.execute("INSERT INTO t VALUES (1)", [])
                .map(|_| ())
                .map_err(|e| TestError::Db(e.to_string()))
        });
        assert!(matches!(dup, Err(TestError::Db(why)) if why.contains("UNIQUE")));
    }

    #[test]
    fn spec11_committed_writes_reach_the_database_file_before_the_wal_fills() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let db = SqliteDb::open(
            &path,
            "CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY, b BLOB NOT NULL) STRICT;",
        )
        .unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        // About 200 pages: far below the 1000 at which a commit checkpoints the WAL itself, so
        // only the checkpointer copies them into the database file.
        for i in 0..50 {
            write(&db, move |conn| {
                for j in 0..4 {
                    conn.execute("INSERT INTO t VALUES (?1, zeroblob(4000))", [i * 4 + j])
                        .map_err(|e| TestError::Db(e.to_string()))?;
                }
                Ok(())
            })
            .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let grown = loop {
            let len = std::fs::metadata(&path).unwrap().len();
            if len >= before + 150 * 4096 || std::time::Instant::now() > deadline {
                break len;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(
            grown >= before + 150 * 4096,
            "the database file is {grown} bytes (was {before}): the WAL was not checkpointed"
        );
    }

    #[test]
    fn spec11_a_cached_statement_is_not_compiled_again_when_its_bound_values_change() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(
            &dir.path().join("p.db"),
            "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY NOT NULL, until INTEGER NOT NULL) STRICT;
             CREATE INDEX IF NOT EXISTS t_by_until ON t(until);",
        )
        .unwrap();
        // A page after a cursor, as the wallet lists a user's pending requests.
        let sql = "SELECT k FROM t WHERE (until, k) > (?1, ?2) ORDER BY until, k LIMIT ?3";
        let db_error = |e: rusqlite::Error| TestError::Db(e.to_string());
        let reprepared = db
            .with(|conn| {
                for i in 0..64 {
                    conn.execute(
                        "INSERT INTO t VALUES (?1, ?2)",
                        rusqlite::params![i.to_string(), i],
                    )
                    .map_err(db_error)?;
                }
                for after in 0..10_i64 {
                    let mut stmt = conn.prepare_cached(sql).map_err(db_error)?;
                    let keys: Vec<String> = stmt
                        .query_map(rusqlite::params![after, "", after + 1], |r| r.get(0))
                        .map_err(db_error)?
                        .collect::<Result<_, _>>()
                        .map_err(db_error)?;
                    assert_eq!(keys.len(), usize::try_from(after + 1).unwrap());
                    assert_eq!(keys[0], after.to_string());
                }
                let stmt = conn.prepare_cached(sql).map_err(db_error)?;
                Ok::<_, TestError>(stmt.get_status(rusqlite::StatementStatus::RePrepare))
            })
            .unwrap();
        assert_eq!(
            reprepared, 0,
            "compiled again when its bound values changed"
        );
    }

    #[cfg(unix)]
    #[test]
    fn spec9_database_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let db = SqliteDb::open(&path, "CREATE TABLE IF NOT EXISTS t (x INTEGER) STRICT;").unwrap();
        db.with(|c| {
            c.execute("INSERT INTO t VALUES (1)", [])
                .map_err(|_| DbPoisoned)
        })
        .unwrap();
        for file in ["state.db", "state.db-wal", "state.db-shm"] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        // A file made wider before is narrowed at the next open.
        drop(db);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        SqliteDb::open(&path, "").unwrap();
        assert_eq!(mode(&path), 0o600);
    }
    #[test]
    fn spec11_a_read_runs_while_another_read_holds_a_connection() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(
            SqliteDb::open(
                &dir.path().join("r.db"),
                "CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY) STRICT;",
            )
            .unwrap(),
        );
        let (inside, entered) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = {
            let db = db.clone();
            std::thread::spawn(move || {
                db.with(|_conn| -> Result<(), TestError> {
                    inside.send(()).unwrap();
                    released.recv().unwrap();
                    Ok(())
                })
            })
        };
        entered.recv().unwrap();
        let (answer, answered) = std::sync::mpsc::channel::<i64>();
        let reader = {
            let db = db.clone();
            std::thread::spawn(move || {
                let rows: Result<i64, TestError> = db.with(|c| {
                    c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                        .map_err(|e| TestError::Db(e.to_string()))
                });
                answer.send(rows.unwrap()).unwrap();
            })
        };
        // Not a speed limit: with one shared connection the read waits for the release, which
        // only comes after this, so it would never answer.
        let rows = answered.recv_timeout(std::time::Duration::from_secs(30));
        release.send(()).unwrap();
        holder.join().unwrap().unwrap();
        reader.join().unwrap();
        assert_eq!(
            rows,
            Ok(0),
            "the read waited for the connection another read held"
        );
    }

    #[test]
    fn spec11_a_write_waits_for_room_when_the_writer_queue_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(
            SqliteDb::open(
                &dir.path().join("q.db"),
                "CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY) STRICT;",
            )
            .unwrap(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            // The writer thread is held inside the first write until `release`.
            let (release, released) = std::sync::mpsc::channel::<()>();
            let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut queued = vec![tokio::spawn({
                let db = db.clone();
                let started = started.clone();
                async move {
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    db.write_async(move |conn| {
                        released.recv().unwrap();
                        conn.execute("INSERT INTO t VALUES (0)", [])
                            .map(|_| ())
                            .map_err(|e| TestError::Db(e.to_string()))
                    })
                    .await
                }
            })];
            for i in 1..WRITE_QUEUE as i64 {
                let db = db.clone();
                let started = started.clone();
                queued.push(tokio::spawn(async move {
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    db.write_async(move |conn| {
                        conn.execute("INSERT INTO t VALUES (?1)", [i])
                            .map(|_| ())
                            .map_err(|e| TestError::Db(e.to_string()))
                    })
                    .await
                }));
            }
            // Each has been polled once, so each is queued (or, past the bound, waiting).
            while started.load(std::sync::atomic::Ordering::SeqCst) < WRITE_QUEUE {
                tokio::task::yield_now().await;
            }
            // One more, polled once and then given up: it waited for room, so it never
            // reached the writer and never runs.
            let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            {
                let ran = ran.clone();
                let extra = std::pin::pin!(db.write_async(move |_conn| {
                    ran.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, TestError>(())
                }));
                let polled = futures_util::FutureExt::now_or_never(extra);
                assert!(polled.is_none(), "a write went through a full queue");
            }
            release.send(()).unwrap();
            for task in queued {
                task.await.unwrap().unwrap();
            }
            assert!(
                !ran.load(std::sync::atomic::Ordering::SeqCst),
                "a write was queued past the bound"
            );
            // The places are free again.
            db.write_async(|conn| {
                conn.execute("INSERT INTO t VALUES (-1)", [])
                    .map(|_| ())
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .await
            .unwrap();
        });
        let rows: i64 = db
            .with(|c| {
                c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                    .map_err(|e| TestError::Db(e.to_string()))
            })
            .unwrap();
        assert_eq!(rows, WRITE_QUEUE as i64 + 1);
    }

    /// An error with an optional cause, as the client's are.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn an_error_is_described_with_every_cause_once() {
        let server = Layer("FATAL: database \"x\" does not exist", None);
        let client = Layer("db error", Some(Box::new(server)));
        assert_eq!(
            describe(&client),
            "db error: FATAL: database \"x\" does not exist"
        );
        // A cause whose text the error already ends with is not repeated.
        let io = Layer("Connection refused", None);
        let wrapped = Layer("connect: Connection refused", Some(Box::new(io)));
        assert_eq!(describe(&wrapped), "connect: Connection refused");
        assert_eq!(describe(&Layer("alone", None)), "alone");
    }
}
