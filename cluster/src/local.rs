//! A NATS cluster on loopback for tests and benchmarks.
//!
//! It runs the nats-server that `scripts/install-deps` pins: `$ANNALS_NATS_SERVER`, or
//! `${ANNALS_CACHE_DIR:-$HOME/.cache/annals}/nats-server-<NATS_VERSION>/nats-server`. Each
//! server syncs every write (`sync_interval: always`) and accepts messages of 8 MB, as
//! `scripts/cluster` configures them. Every process is killed when the cluster is dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server version `scripts/install-deps` installs.
pub const NATS_VERSION: &str = "2.14.6";

/// The nats-server binary the tests use (see the module docs).
pub fn nats_server_path() -> PathBuf {
    if let Some(path) = std::env::var_os("ANNALS_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("ANNALS_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/annals")
        });
    cache
        .join(format!("nats-server-{NATS_VERSION}"))
        .join("nats-server")
}

struct Server {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of nats-server processes on loopback, each with its own JetStream
/// directory in a temporary directory.
pub struct LocalNats {
    servers: Vec<Server>,
    dir: tempfile::TempDir,
}

/// Clusters of one process start one at a time: a port is free only until its server
/// binds it, and another cluster must not be handed it meanwhile.
static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl LocalNats {
    /// Starts `size` servers forming one cluster (one server: no cluster block) and waits
    /// until each reports itself healthy with JetStream.
    pub fn start(size: usize) -> std::io::Result<Self> {
        let binary = nats_server_path();
        if !binary.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "nats-server not found at {}: run scripts/install-deps",
                    binary.display()
                ),
            ));
        }
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new().prefix("annals-nats-").tempdir()?;
        // Every port is held until all are chosen, so no two of them are the same.
        let listeners = (0..size * 3)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut free = Vec::new();
        for listener in &listeners {
            free.push(listener.local_addr()?.port());
        }
        drop(listeners);
        let ports: Vec<(u16, u16, u16)> = free.chunks(3).map(|p| (p[0], p[1], p[2])).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("nats://127.0.0.1:{cluster}"))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, cluster, monitor)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store)?;
            let cluster_block = if size > 1 {
                format!(
                    "cluster {{\n  name: annals\n  listen: 127.0.0.1:{cluster}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n{cluster_block}",
                    store.display()
                ),
            )?;
            servers.push(Server {
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port: *client,
                monitor_port: *monitor,
                config,
                child: None,
            });
        }
        let mut cluster = Self { servers, dir };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let server = &mut self.servers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)?;
        let child = Command::new(nats_server_path())
            .arg("-c")
            .arg(&server.config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?;
        server.child = Some(child);
        Ok(())
    }

    /// Waits until server `i` answers its health check (JetStream included).
    pub fn wait_healthy(&self, i: usize, timeout: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        let port = self.servers[i].monitor_port;
        loop {
            if healthz(port).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} is not healthy after {timeout:?}; its log: {}",
                        self.servers[i].name,
                        self.servers[i].log.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The client URL of every server.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client_port))
            .collect()
    }

    /// How many servers the cluster has.
    pub fn size(&self) -> usize {
        self.servers.len()
    }

    /// Kills server `i` with SIGKILL (no chance to flush or say goodbye) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `i` again on its ports and directory, and waits until it is healthy.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_healthy(i, Duration::from_secs(30))
    }

    /// The directory that holds the servers' configurations, JetStream data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// Whether the server's `/healthz` answers 200.
fn healthz(port: u16) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"))
}
