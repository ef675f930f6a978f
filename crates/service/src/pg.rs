//! PostgreSQL for the services (SPEC §11): a pool of connections whose `search_path` is the
//! service's own schema, and versioned migrations applied at start under an advisory lock, so
//! that instances starting together migrate once.

use std::collections::HashMap;
use std::time::Duration;

use postgres::{Client, NoTls, Statement};

use crate::describe;

/// A pooled connection.
pub type PgConnection = r2d2::PooledConnection<Manager>;

/// A connection that could not be made, with its cause in its message (what the pool logs and
/// answers when no connection can be had).
#[derive(Debug)]
pub struct ConnectFailed(String);

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectFailed {}

/// One connection and the statements prepared on it: a statement prepared once is executed
/// in one round trip afterwards, where an unprepared one takes two (parse, then execute).
pub struct PgConn {
    client: Client,
    prepared: HashMap<&'static str, Statement>,
}

impl PgConn {
    /// `sql` prepared on this connection: the first call prepares it, later ones reuse it.
    pub fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }
}

impl std::ops::Deref for PgConn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Makes the pool's connections.
pub struct Manager {
    config: postgres::Config,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration holds the password: not printed.
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = ConnectFailed;

    fn connect(&self) -> Result<PgConn, ConnectFailed> {
        Ok(PgConn {
            client: self
                .config
                .connect(NoTls)
                .map_err(|e| ConnectFailed(describe(&e)))?,
            prepared: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), ConnectFailed> {
        conn.client
            .simple_query("")
            .map(|_| ())
            .map_err(|e| ConnectFailed(describe(&e)))
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed()
    }
}

/// The pool of one service's connections.
#[derive(Clone)]
pub struct PgDb {
    pool: std::sync::Arc<Closing>,
}

/// The pool, closed off any runtime's thread: a synchronous client closes its connection by
/// blocking on a runtime of its own, which panics on a thread that drives a runtime (a service
/// or a test dropping its store in async code).
struct Closing(Option<r2d2::Pool<Manager>>);

impl Drop for Closing {
    fn drop(&mut self) {
        let Some(pool) = self.0.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok() {
            let closing = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(pool));
            if let Err(e) = closing {
                tracing::warn!(error = %e, "no thread to close the PostgreSQL connections on");
            }
        }
    }
}

impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: not printed.
        f.debug_struct("PgDb")
            .field(
                "connections",
                &self.pool.0.as_ref().map(|p| p.state().connections),
            )
            .finish()
    }
}

/// Longest a caller waits for a connection, or a connection for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Every connection's settings: `schema` is its `search_path`, and a prepared statement is
/// planned once per connection (`force_generic_plan`) with nested loops over indexes only
/// (sequential scans, hash and merge joins off). The services' queries look rows up by key or
/// read one range of an index, so that is their plan at any table size, and a statement
/// prepared while its tables are empty (a fresh deployment) keeps a plan that still fits them
/// when they are large. Measured (docs/PROTOCOL.md): planned for the tables of the moment, the
/// merchant's batched charge records kept two sequential scans of the orders table, 18 ms per
/// batch at 40 000 orders; planned on every execution instead, the planning was a quarter of
/// PostgreSQL's CPU.
fn session_options(schema: &str) -> String {
    format!(
        "-c search_path={schema} -c plan_cache_mode=force_generic_plan -c enable_seqscan=off \
         -c enable_hashjoin=off -c enable_mergejoin=off"
    )
}

impl PgDb {
    /// Connects to `url` with at most `max_connections`, makes `schema` (lowercase letters and
    /// `_`) the connections' `search_path`, and applies the `migrations` not applied yet, in
    /// order: migration `i` is version `i + 1`, recorded in `<schema>.schema_migrations` in the
    /// transaction that applies it. A database migrated by a newer version than this one is
    /// refused.
    pub fn open(
        url: &str,
        schema: &str,
        migrations: &[&str],
        max_connections: u32,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !schema.is_empty() && schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "schema names are lowercase letters and _"
        );
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--database-url: {}", describe(&e)))?;
        config
            .options(&session_options(schema))
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name(schema);
        let pool = r2d2::Pool::builder()
            .max_size(max_connections.max(1))
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            // No test query per checkout (a round trip on every store call): a connection the
            // server dropped (a restart) fails its next query, is found closed on return, and
            // is replaced.
            .test_on_check_out(false)
            .build(Manager { config })
            .map_err(|e| anyhow::anyhow!("PostgreSQL: {e}"))?;
        let db = Self {
            pool: std::sync::Arc::new(Closing(Some(pool))),
        };
        db.migrate(schema, migrations)?;
        Ok(db)
    }

    fn migrate(&self, schema: &str, migrations: &[&str]) -> anyhow::Result<()> {
        let mut conn = self.get().map_err(anyhow::Error::msg)?;
        let mut tx = conn.transaction()?;
        // One key for every service's migrations: instances starting at once take turns.
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock(4242424242);
             CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );"
        ))?;
        let applied: i32 = tx
            .query_one(
                &format!("SELECT COALESCE(MAX(version), 0) FROM {schema}.schema_migrations"),
                &[],
            )?
            .get(0);
        let known = i32::try_from(migrations.len())?;
        anyhow::ensure!(
            applied <= known,
            "the database schema {schema} is at version {applied}, newer than this build ({known})"
        );
        for (version, sql) in (1..).zip(migrations) {
            if version <= applied {
                continue;
            }
            tx.batch_execute(sql).map_err(|e| {
                anyhow::anyhow!("migration {version} of {schema}: {}", describe(&e))
            })?;
            tx.execute(
                &format!("INSERT INTO {schema}.schema_migrations (version) VALUES ($1)"),
                &[&version],
            )?;
            tracing::info!(schema, version, "database migrated");
        }
        tx.commit()?;
        Ok(())
    }

    /// A connection from the pool; the error says why none could be had.
    pub fn get(&self) -> Result<PgConnection, String> {
        match &self.pool.0 {
            Some(pool) => pool.get().map_err(|e| e.to_string()),
            None => Err("the pool is closed".into()),
        }
    }
}

/// Whether `e` is a unique-constraint violation.
pub fn is_unique_violation(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// A pooled asynchronous connection; [`deadpool_postgres::ClientWrapper::prepare_cached`] keeps the
/// statements it prepared.
pub type PgAsyncConnection = deadpool::managed::Object<AsyncManager>;

/// The asynchronous pool a hot path uses (SPEC §11): queries run on the caller's task, with no
/// hop to a blocking thread and back, and concurrent queries on one connection are pipelined.
///
/// The connections are driven by a thread of their own (`pg-io`, a single-threaded runtime),
/// and the store's batch writers run there too ([`PgPool::runtime`]): a server's answer is read
/// when it arrives, not when one of the service's runtime workers, busy with requests (a
/// signature check each), next looks at its sockets. Measured under the completion load
/// (docs/PROTOCOL.md): a batch of session reads took 0.70 ms from its send to its answer on
/// the service's runtime and 0.40 ms on `pg-io`, for about 0.05 ms of the server's time.
#[derive(Clone)]
pub struct PgPool {
    pool: deadpool::managed::Pool<AsyncManager>,
    io: std::sync::Arc<IoThread>,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration holds the password: not printed.
        f.debug_struct("PgPool")
            .field("connections", &self.pool.status().size)
            .finish()
    }
}

/// The `pg-io` thread and its runtime; the thread ends (and its runtime's tasks with it) when
/// this is dropped.
#[derive(Debug)]
struct IoThread {
    runtime: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl IoThread {
    fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("pg-io".into())
            .spawn(move || {
                // Ends when the sender is dropped; the runtime is dropped here, off any runtime.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            runtime: handle,
            _stop: stop,
        })
    }
}

/// Why no asynchronous connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server refused or could not be reached.
    #[error("{}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The `pg-io` thread is gone (the pool is closing).
    #[error("the PostgreSQL I/O thread is gone")]
    IoGone,
}

/// Makes the asynchronous pool's connections, each connected and driven on the `pg-io` thread.
pub struct AsyncManager {
    config: tokio_postgres::Config,
    io: tokio::runtime::Handle,
}

impl std::fmt::Debug for AsyncManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration holds the password: not printed.
        f.debug_struct("AsyncManager").finish_non_exhaustive()
    }
}

impl deadpool::managed::Manager for AsyncManager {
    type Type = deadpool_postgres::ClientWrapper;
    type Error = ConnectError;

    async fn create(&self) -> Result<Self::Type, ConnectError> {
        let config = self.config.clone();
        // Connected on `pg-io`, so the socket is that runtime's to watch.
        let connected = self.io.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            let driven = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %describe(&e), "PostgreSQL connection closed");
                }
            });
            Ok::<_, tokio_postgres::Error>(deadpool_postgres::ClientWrapper::new(client, driven))
        });
        match connected.await {
            Ok(made) => Ok(made?),
            Err(_) => Err(ConnectError::IoGone),
        }
    }

    async fn recycle(
        &self,
        client: &mut Self::Type,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<ConnectError> {
        // A connection the server dropped is found closed on return and replaced; no test
        // query per checkout.
        if client.is_closed() {
            return Err(deadpool::managed::RecycleError::message(
                "the connection is closed",
            ));
        }
        Ok(())
    }
}

impl PgPool {
    /// Migrates `schema` as [`PgDb::open`] does (on a blocking thread, one connection), then
    /// opens a pool of at most `max_connections` whose `search_path` is `schema`, and starts
    /// its `pg-io` thread.
    pub async fn open(
        url: &str,
        schema: &'static str,
        migrations: &'static [&'static str],
        max_connections: u32,
    ) -> anyhow::Result<Self> {
        let owned = url.to_owned();
        // The synchronous client is dropped on the blocking thread too: it may not be dropped on a
        // runtime's thread.
        tokio::task::spawn_blocking(move || PgDb::open(&owned, schema, migrations, 1).map(drop))
            .await??;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| anyhow::anyhow!("--database-url: {}", describe(&e)))?;
        config
            .options(session_options(schema))
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name(schema);
        let io = IoThread::start()?;
        let manager = AsyncManager {
            config,
            io: io.runtime.clone(),
        };
        let pool = deadpool::managed::Pool::builder(manager)
            .max_size(usize::try_from(max_connections.max(1))?)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| anyhow::anyhow!("PostgreSQL: {e}"))?;
        Ok(Self {
            pool,
            io: std::sync::Arc::new(io),
        })
    }

    /// The `pg-io` thread's runtime, where the store's batch writers are spawned.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.io.runtime
    }

    /// A connection from the pool; the error says why none could be had.
    pub async fn get(&self) -> Result<PgAsyncConnection, String> {
        self.pool.get().await.map_err(|e| e.to_string())
    }
}
