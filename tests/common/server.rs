//! Starting `layerstore serve` as a child process and reading the address it announces.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

/// The binary under test, to which a test adds `serve` and its arguments.
pub fn layerstore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_layerstore"))
}

/// A server that announced its address.
pub struct Spawned {
    pub child: Child,
    /// What follows `layerstore listening on `: `http://127.0.0.1:PORT` (or `https://…`).
    pub url: String,
    /// Kept open so the server never writes to a closed pipe.
    pub stdout: BufReader<ChildStdout>,
}

impl Spawned {
    /// `127.0.0.1:PORT`: the URL without its scheme, which must be `scheme`.
    #[track_caller]
    pub fn host(&self, scheme: &str) -> String {
        match self
            .url
            .strip_prefix(scheme)
            .and_then(|u| u.strip_prefix("://"))
        {
            Some(host) => host.to_owned(),
            None => panic!("announced {}, expected a {scheme} URL", self.url),
        }
    }
}

/// Spawns `command` with its stderr in `log` and waits up to `wait` for the announcement on
/// its first stdout line, read on a thread so that a server that never binds fails the test
/// instead of hanging it. Panics with the server's log if no announcement comes.
pub fn spawn_server(mut command: Command, log: &Path, wait: Duration) -> Spawned {
    let log_file = std::fs::File::create(log).expect("create the server log");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .expect("spawn layerstore serve");
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = stdout;
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let _ = tx.send((read.map(|_| line), stdout));
    });
    let (line, stdout) = match rx.recv_timeout(wait) {
        Ok((Ok(line), stdout)) if !line.is_empty() => (line, stdout),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "layerstore did not announce its address ({:?}); its log:\n{}",
                other.map(|(line, _)| line),
                read_log(log)
            );
        }
    };
    let Some(url) = line.trim().strip_prefix("layerstore listening on ") else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("unexpected first line {line:?}; log:\n{}", read_log(log));
    };
    Spawned {
        url: url.to_owned(),
        child,
        stdout,
    }
}

/// The server's log so far (empty if there is none).
pub fn read_log(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

/// `layerstore serve` on an ephemeral loopback port, killed when dropped. A test that fails
/// prints the errors the server logged (a 500's cause is only logged).
pub struct Running {
    pub child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// Kept open so the server never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    /// The storage root, the log and any configuration; removed after the server is gone
    /// (fields drop after `drop`).
    pub dir: TempDir,
}

impl Running {
    /// `serve --addr 127.0.0.1:0 --root <fresh dir>`: the filesystem backend.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let root = root.to_str().expect("utf-8 path").to_owned();
        Self::start_with(dir, &["--addr", "127.0.0.1:0", "--root", &root])
    }

    /// `serve` with `args`, logging to `server.log` in `dir`.
    pub fn start_with(dir: TempDir, args: &[&str]) -> Self {
        let mut command = layerstore();
        command.arg("serve").args(args);
        let spawned = spawn_server(
            command,
            &dir.path().join("server.log"),
            Duration::from_secs(30),
        );
        Self {
            addr: spawned.host("http"),
            child: spawned.child,
            _stdout: spawned.stdout,
            dir,
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("server.log"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
            // The last few: a test with hundreds of clients can log thousands.
            let shown = &errors[errors.len().saturating_sub(20)..];
            eprintln!(
                "server log, errors only (the last {} of {}):\n{}",
                shown.len(),
                errors.len(),
                shown.join("\n")
            );
        }
    }
}
