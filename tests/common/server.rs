//! Starting `layerstore serve` as a child process and reading the address it announces.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
