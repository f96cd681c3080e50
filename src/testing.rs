//! Test support: a real `redis-server` on a free loopback port.
//!
//! Used by the contract tests, the end-to-end tests and the measurement
//! tools. `scripts/test.sh` installs `redis-server` when it is missing.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// The server's working directory (its append-only file), removed on drop.
    dir: tempfile::TempDir,
    /// Extra arguments, kept for restarts.
    extra: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    #[error("cannot start redis-server (is it installed? scripts/test.sh installs it): {0}")]
    Spawn(std::io::Error),
    #[error("redis-server on port {0} did not accept connections within 10 s")]
    NotReady(u16),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Starts a server (append-only file on, in a temporary directory, so
    /// a restart keeps the data) and waits until it answers.
    pub fn start() -> Result<Self, RedisServerError> {
        Self::start_with(&[])
    }

    /// Starts a server that publishes keyspace events for sorted sets
    /// (`notify-keyspace-events Kz`), as lock events need.
    pub fn start_with_notifications() -> Result<Self, RedisServerError> {
        Self::start_with(&["--notify-keyspace-events", "Kz"])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Result<Self, RedisServerError> {
        // A port freed a moment ago can be taken by someone else: try a few.
        let mut last = RedisServerError::NotReady(0);
        for _ in 0..5 {
            let mut server = Self {
                child: None,
                port: free_port()?,
                dir: tempfile::tempdir()?,
                extra: extra.iter().map(|a| a.to_string()).collect(),
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e @ RedisServerError::Spawn(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Starts a server on a given port (e.g. one a node was pointed at
    /// before Redis existed).
    pub fn start_on(port: u16) -> Result<Self, RedisServerError> {
        let mut server = Self {
            child: None,
            port,
            dir: tempfile::tempdir()?,
            extra: Vec::new(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// A loopback port nothing listens on right now.
    pub fn free_port() -> Result<u16, RedisServerError> {
        Ok(free_port()?)
    }

    fn spawn(&mut self) -> Result<(), RedisServerError> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(RedisServerError::Spawn)?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), RedisServerError> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return Err(RedisServerError::NotReady(self.port));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(RedisServerError::NotReady(self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server with SIGTERM (it flushes its append-only file), or
    /// kills it if it has not exited within 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data (after [`Self::stop`]).
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.stop();
        self.spawn()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
