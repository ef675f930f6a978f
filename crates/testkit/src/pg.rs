//! A fresh PostgreSQL database per test, on the server `.ci/run` starts (or any other, named by
//! `AP2_TEST_POSTGRES_URL`), dropped when the test ends. Without a server the test fails with
//! how to get one; it is never skipped.

use std::time::Duration;

/// Where the server is when `AP2_TEST_POSTGRES_URL` does not say.
pub const DEFAULT_SERVER: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

const INSTALL_HINT: &str = "PostgreSQL is needed by this test and could not be reached. \
     Install and start it (Debian/Ubuntu: `apt-get install -y postgresql && pg_ctlcluster 15 main \
     start && runuser -u postgres -- psql -c \"ALTER USER postgres PASSWORD 'postgres'\"`; or \
     run `.ci/run`, which does this), or point AP2_TEST_POSTGRES_URL at a server where the user \
     may create databases, and run the tests again.";

/// A database made for one test.
pub struct PgDatabase {
    server: String,
    name: String,
    url: String,
}

fn server_url() -> String {
    std::env::var("AP2_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned())
}

fn connect(url: &str) -> postgres::Client {
    let mut config: postgres::Config = url.parse().expect("AP2_TEST_POSTGRES_URL is not a URL");
    config.connect_timeout(Duration::from_secs(5));
    config
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("{INSTALL_HINT}\n({url}: {e})"))
}

/// Runs `f` on a thread of its own: the synchronous client brings its own runtime, which may
/// not start inside a test's.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

impl PgDatabase {
    /// Creates `ap2_test_<random>` on the server.
    pub fn create() -> Self {
        off_runtime(Self::create_here)
    }

    fn create_here() -> Self {
        let server = server_url();
        let name = format!(
            "ap2_test_{}",
            ap2_mandate::Jti::random()
                .expect("randomness")
                .as_str()
                .to_ascii_lowercase()
                .replace('-', "_")
        );
        let mut admin = connect(&server);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating a test database on {server}: {e}"));
        let url = match server.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("AP2_TEST_POSTGRES_URL must end with /<database>"),
        };
        Self { server, name, url }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `f` with a client of the database, off the test's runtime.
    pub fn with_client<T: Send>(&self, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
        off_runtime(|| f(&mut connect(&self.url)))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        off_runtime(|| {
            if let Ok(mut config) = self.server.parse::<postgres::Config>() {
                config.connect_timeout(Duration::from_secs(5));
                if let Ok(mut admin) = config.connect(postgres::NoTls) {
                    let _ = admin.batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.name
                    ));
                }
            }
        });
    }
}
