//! A real Redis Cluster for tests: six `redis-server --cluster-enabled yes` processes on free
//! loopback ports, joined by `redis-cli --cluster create` as three masters with a replica
//! each. Stopped and removed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

const INSTALL_HINT: &str = "redis-server and redis-cli are needed by this test and were not \
     found on PATH. Install them (Debian/Ubuntu: `apt-get install -y redis-server`) and run the \
     tests again.";

/// One node of the cluster.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// Six nodes: three masters, three replicas.
pub struct RedisCluster {
    nodes: Vec<Node>,
    _tmp: tempfile::TempDir,
}

fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl RedisCluster {
    /// Starts the six nodes and forms the cluster; returns once every node says `cluster_state:ok`.
    /// A master that stops answering is failed over after about a second (`cluster-node-timeout
    /// 1000`).
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let dir = tmp.path().join(port.to_string());
            std::fs::create_dir_all(&dir).expect("node dir");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                // The bus port given, not the default of port + 10 000: that is past 65 535
                // for a free port above 55 535, and the node would not start.
                .args(["--cluster-port", &free_port().to_string()])
                .args([
                    "--cluster-config-file",
                    "nodes.conf",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
            nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        let cluster = Self { nodes, _tmp: tmp };
        for node in &cluster.nodes {
            cluster.wait(|| cli(node.port, &["PING"]).is_some_and(|r| r.contains("PONG")));
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_ok();
        cluster
    }

    fn wait(&self, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running node says `cluster_state:ok`, and every master whose
    /// replica still runs has it connected and in sync.
    pub fn wait_ok(&self) {
        self.wait(|| {
            self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                cli(n.port, &["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            })
        });
        let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
        if running == self.nodes.len() {
            self.wait(|| {
                self.master_ports().iter().all(|port| {
                    cli(*port, &["INFO", "replication"]).is_some_and(|info| {
                        info.contains("connected_slaves:1") && info.contains("state=online")
                    })
                })
            });
        }
    }

    /// Waits until every master's replica has all the master wrote so far (the replica's
    /// acknowledged offset has reached the master's): what was written before is on both.
    pub fn wait_replicated(&self) {
        let caught_up = |info: &str| {
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            let replica = info
                .lines()
                .find(|l| l.starts_with("slave0:"))
                .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("offset=")))
                .and_then(|v| v.trim().parse::<u64>().ok());
            matches!((field("master_repl_offset:"), replica), (Some(m), Some(r)) if r >= m)
        };
        self.wait(|| {
            self.master_ports().iter().all(|port| {
                cli(*port, &["INFO", "replication"]).is_some_and(|info| caught_up(&info))
            })
        });
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The ports of the nodes that are masters now.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter(|n| cli(n.port, &["ROLE"]).is_some_and(|role| role.starts_with("master")))
            .map(|n| n.port)
            .collect()
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the node on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        if let Some(Node {
            child: Some(child), ..
        }) = self.nodes.iter().find(|n| n.port == port)
        {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = Command::new("kill")
                    .args(["-CONT", &child.id().to_string()])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
