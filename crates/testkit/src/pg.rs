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
        .unwrap_or_else(|e| panic!("{INSTALL_HINT}\n({url}: {})", ap2_service::describe(&e)))
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
            .unwrap_or_else(|e| {
                panic!(
                    "creating a test database on {server}: {}",
                    ap2_service::describe(&e)
                )
            });
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

/// A PostgreSQL server of a test's own (`initdb` in a temporary directory, a free loopback
/// port, trust authentication on loopback), for tests that stop and start the server. Run as
/// root, the server runs as the `postgres` user (`runuser`), as PostgreSQL requires.
pub struct PgServer {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
    _tmp: tempfile::TempDir,
}

fn pg_bin(name: &str) -> std::path::PathBuf {
    // Debian keeps the server binaries out of PATH, one directory per major version.
    let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.filter_map(|d| d.ok().map(|d| d.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from(name))
}

fn as_postgres_user(program: std::path::PathBuf) -> std::process::Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let mut cmd = std::process::Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        std::process::Command::new(program)
    }
}

impl PgServer {
    /// A fresh server, running.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let _ = std::process::Command::new("chown")
            .args(["postgres"])
            .arg(tmp.path())
            .status();
        let status = as_postgres_user(pg_bin("initdb"))
            .arg("-D")
            .arg(&dir)
            .args(["-A", "trust", "-U", "postgres"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT}\n(initdb: {e})"));
        assert!(status.success(), "{INSTALL_HINT}\n(initdb failed)");
        let mut server = Self {
            dir,
            port: crate::free_port(),
            child: None,
            _tmp: tmp,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = as_postgres_user(pg_bin("postgres"))
            .arg("-D")
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-k")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT}\n(postgres: {e})"));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let url = self.url();
        while off_runtime(|| {
            url.parse::<postgres::Config>()
                .ok()
                .and_then(|mut c| {
                    c.connect_timeout(Duration::from_secs(1));
                    c.connect(postgres::NoTls).ok()
                })
                .is_none()
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "postgres did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (SIGINT: fast shutdown, connections cut) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The server's own pid (runuser does not pass signals on): fast shutdown.
            let pid = std::fs::read_to_string(self.dir.join("postmaster.pid"))
                .ok()
                .and_then(|text| text.lines().next().map(str::to_owned))
                .unwrap_or_else(|| child.id().to_string());
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
