//! The real `flowd` binary as a child process: black-box tests, crash tests (SIGKILL) and the
//! harness scenarios that measure the server as deployed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::TestingError;

/// Where the server's log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerLogs {
    /// To this process's stderr, at the level `TEST_LOG` names (`error` unless set).
    Inherit,
    /// Nowhere: a measurement prints only its own output.
    Discard,
}

/// The `flowd` binary of the build that built the running test or example: tests run from
/// `target/<profile>/deps/`, examples from `target/<profile>/examples/`, the binary sits in
/// `target/<profile>/`.
pub fn server_binary() -> Result<PathBuf, TestingError> {
    let exe = std::env::current_exe().map_err(|e| TestingError::Start(format!("own path: {e}")))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| TestingError::Start(format!("{} has no folder", exe.display())))?;
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir = dir.parent().unwrap_or(dir);
    }
    let binary = dir.join(format!("flowd{}", std::env::consts::EXE_SUFFIX));
    if binary.exists() {
        Ok(binary)
    } else {
        Err(TestingError::NoBinary(binary))
    }
}

/// A running `flowd`, killed when dropped.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`, from the server's listening line.
    pub base: String,
    /// The config file it was started with, to start it again after a kill.
    pub config: PathBuf,
    child: Child,
}

impl TestServer {
    /// Starts [`server_binary`] with `config` and waits for its listening line.
    ///
    /// # Panics
    /// When the server does not start: for tests, where that is the failure to report.
    pub fn start(config: impl AsRef<Path>) -> Self {
        Self::start_with_env(config, &[])
    }

    /// Like [`TestServer::start`], with extra `FLOWD_*` overrides in the environment.
    ///
    /// # Panics
    /// When the server does not start.
    pub fn start_with_env(config: impl AsRef<Path>, env: &[(&str, &str)]) -> Self {
        Self::spawn(config.as_ref(), env, ServerLogs::Inherit)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Starts [`server_binary`] with `config` and `env`, and waits for its listening line: the
    /// one line it prints on stdout once it is bound, ready and recovered.
    pub fn spawn(
        config: &Path,
        env: &[(&str, &str)],
        logs: ServerLogs,
    ) -> Result<Self, TestingError> {
        let level = std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into());
        let mut child = Command::new(server_binary()?)
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(match logs {
                ServerLogs::Inherit => Stdio::inherit(),
                ServerLogs::Discard => Stdio::null(),
            })
            .spawn()
            .map_err(|e| TestingError::Start(e.to_string()))?;
        let mut line = String::new();
        let read = match child.stdout.take() {
            Some(stdout) => BufReader::new(stdout).read_line(&mut line).map(drop),
            None => Ok(()),
        };
        let base = read
            .ok()
            .and_then(|()| line.trim().strip_prefix("flowd listening on "))
            .map(str::to_owned);
        match base {
            Some(base) => Ok(Self {
                base,
                config: config.to_path_buf(),
                child,
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(TestingError::Start(format!("first line {line:?}")))
            }
        }
    }

    /// SIGKILL: no shutdown hooks, no flush, a crash. Returns the config to start it again.
    pub fn kill(mut self) -> PathBuf {
        self.stop();
        std::mem::take(&mut self.config)
    }

    /// The server's process id, e.g. to read its CPU time and memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}
