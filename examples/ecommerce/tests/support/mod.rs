//! Shared setup: a fresh system on a temp directory, serving on 127.0.0.1:0.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("trellis-ecommerce-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) async fn start(tag: &str) -> (ecommerce::Running, TempDir) {
    let dir = TempDir::new(tag);
    let config = ecommerce::Config {
        data_dir: dir.0.clone(),
        addr: "127.0.0.1:0".parse().expect("addr"),
        drain: Duration::from_millis(10),
        ..ecommerce::Config::default()
    };
    (ecommerce::start(config).await.expect("system starts"), dir)
}
