//! [`OwnNats`]: a nats-server of a drill's own, so killing it disturbs no
//! other run.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Proc, fail, free_ports};
use crate::api::Error;

/// A nats-server of its own (JetStream, file store in a temp dir), so
/// stopping it disturbs nothing else; killed and its directory removed on
/// drop.
#[derive(Debug)]
pub struct OwnNats {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    store: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl OwnNats {
    /// `/usr/sbin/nats-server` or `nats-server` on PATH.
    pub fn binary() -> Option<PathBuf> {
        let installed = PathBuf::from("/usr/sbin/nats-server");
        if installed.is_file() {
            return Some(installed);
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
    }

    /// A server of `binary` on a free port, not started yet.
    pub fn new(binary: PathBuf) -> Result<OwnNats, Error> {
        let dir = std::env::temp_dir().join(format!(
            "ecommerce-own-nats-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let store = dir.join("nats-store");
        std::fs::create_dir_all(&store)?;
        Ok(OwnNats {
            binary,
            dir: dir.clone(),
            port: free_ports(1)?[0],
            store,
            log: dir.join("nats-server.log"),
            proc: None,
        })
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again: same port, same store) and waits (≤ 15 s)
    /// until it answers.
    pub async fn start(&mut self) -> Result<(), Error> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.proc = Some(Proc { child });
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let answer = match async_nats::connect(self.url()).await {
                // The server recovers its JetStream store before it
                // listens: a connection that flushes means it is up.
                Ok(client) => client.flush().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let Err(error) = answer else { return Ok(()) };
            if Instant::now() >= deadline {
                return Err(fail(format!(
                    "nats-server not up after 15 s ({error}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no goodbye to the clients.
    pub fn kill(&mut self) {
        self.proc = None;
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
