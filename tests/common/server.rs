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

/// A `layerstore serve --config` on S3 whose `rootdirectory` is the prefix of a test backend,
/// so that the test sees what the server stored; killed on drop.
pub struct S3Server {
    child: std::process::Child,
    _stdout: std::io::BufReader<std::process::ChildStdout>,
    host: String,
    dir: tempfile::TempDir,
}

impl S3Server {
    pub fn start(b: &super::TestBackend) -> Self {
        use super::backends::*;
        let var = |name: &str| std::env::var(name).unwrap();
        let region = std::env::var(S3_REGION).unwrap_or_else(|_| "us-east-1".to_owned());
        let prefix = format!(
            "/{}",
            b.key_prefix.as_ref().expect("an S3 backend's prefix")
        );
        // Scalars as JSON strings, which YAML reads as double-quoted strings.
        let q = |v: &str| serde_json::Value::from(v).to_string();
        let yaml = format!(
            "version: 0.1\nstorage:\n  s3:\n    bucket: {}\n    region: {}\n    \
             regionendpoint: {}\n    accesskey: {}\n    secretkey: {}\n    secure: false\n    \
             rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            q(&var(S3_BUCKET)),
            q(&region),
            q(&var(S3_ENDPOINT)),
            q(&var(S3_ACCESS_KEY_ID)),
            q(&var(S3_SECRET_ACCESS_KEY)),
            q(&prefix),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.yml");
        std::fs::write(&config, yaml).expect("write config.yml");
        let mut command = layerstore();
        command.arg("serve").arg("--config").arg(&config);
        let spawned = spawn_server(
            command,
            &dir.path().join("server.log"),
            Duration::from_secs(60),
        );
        Self {
            host: spawned.host("http"),
            child: spawned.child,
            _stdout: spawned.stdout,
            dir,
        }
    }

    pub fn url(&self, path_or_location: &str) -> String {
        if path_or_location.starts_with("http://") {
            path_or_location.to_owned()
        } else {
            format!("http://{}{path_or_location}", self.host)
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = read_log(&self.dir.path().join("server.log"));
            eprintln!("server log:\n{log}");
        }
    }
}
