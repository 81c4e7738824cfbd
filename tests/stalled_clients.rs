//! Invariant 9 over HTTP: one client cannot take the registry from the others.
//!
//! Hundreds of clients send a request's head and a few KiB of its body, then stall, as over a
//! slow or dead link. Meanwhile every other client must be served as usual, and the stalled
//! requests may cost the server connections and bounded memory but never a thread: an engine
//! that holds a blocking-pool thread for the life of a request body is starved by a few
//! hundred such clients (tokio's pool has 512 threads), and then every GET, upload and status
//! request waits behind them.
//!
//! Each test runs a `layerstore serve` child on the filesystem backend and stalls raw TCP
//! connections to it. Nothing is synchronised by sleeping: that the server has read every
//! stalled request is read from the kernel (`/proc/net/tcp`: the client's bytes were delivered
//! and the server's receive queue is empty), as are the session locks and threads the server
//! holds. So this file is Linux-only.
//!
//! No duration is asserted as performance: each request of the other clients gets a generous
//! bound ([`PROMPTLY`]) that only a hang exceeds.

#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use reqwest::{Method, Response, StatusCode, header};

mod common;
use common::pattern;
use common::server::{Running, layerstore, read_log, spawn_server};

/// Stalled clients per test: above 256, two threads each (what the old engine held) exceed
/// tokio's blocking pool.
const STALLED: usize = 300;
/// Stalled clients that hang up at once, in the test of what they leave: twice as many as
/// tokio's blocking pool has threads (512). An engine that holds a thread per stalled request
/// and, on it, waits for another job then never recovers, even after they hang up: every
/// thread waits for a job queued behind it. (The old engine recovered from 600, not 1100.)
const TWICE_THE_POOL: usize = 1024;
/// What a request of another client may take while the others are stalled. A hang exceeds
/// it; a slow machine does not.
const PROMPTLY: Duration = Duration::from_secs(10);
/// How long the server may take to read every stalled request, or to let idle threads go.
const SETTLE: Duration = Duration::from_secs(60);
/// Body bytes a stalled client sends before it stops.
const SENT: usize = 4096;
/// Body bytes a stalled client announces in its `Content-Length`.
const ANNOUNCED: usize = 1024 * 1024;

const REPO: &str = "library/stalled";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn digest_of(bytes: &[u8]) -> String {
    layerstore::Digest::sha256(bytes).to_string()
}

// ---------------------------------------------------------------------------------------------
// The registry and its other clients

/// A running registry, the HTTP client of its well-behaved users, and what they pushed
/// before anyone stalled.
struct Registry {
    server: Running,
    client: reqwest::Client,
    /// A blob of a few MiB (several read steps), for the GET and the HEAD.
    blob: Vec<u8>,
    /// An upload session with a first chunk, started before the stalls.
    session: String,
}

impl Registry {
    async fn start() -> Self {
        raise_open_files_limit();
        let server = Running::start();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(SETTLE)
            .build()
            .expect("http client");
        let mut registry = Self {
            server,
            client,
            blob: pattern(1, 3 * 1024 * 1024 + 5),
            session: String::new(),
        };
        registry.upload(&registry.blob).await;
        registry.session = registry.start_upload().await;
        registry.patch(&registry.session, 0, b"first chunk").await;
        registry
    }

    fn url(&self, path_or_location: &str) -> String {
        format!("http://{}{path_or_location}", self.server.addr)
    }

    /// Starts an upload session; returns its `Location`.
    async fn start_upload(&self) -> String {
        let post = self
            .client
            .post(self.url(&format!("/v2/{REPO}/blobs/uploads/")))
            .header(header::CONTENT_LENGTH, "0");
        let response = send(post, "starting an upload").await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{response:?}");
        location_of(&response)
    }

    async fn patch(&self, location: &str, start: usize, bytes: &[u8]) {
        let range = format!("{start}-{}", start + bytes.len() - 1);
        let patch = self
            .client
            .patch(self.url(location))
            .header(header::CONTENT_RANGE, range)
            .body(bytes.to_vec());
        expect(patch, "appending a chunk", StatusCode::ACCEPTED).await;
    }

    async fn commit(&self, location: &str, digest: &str) {
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = self
            .client
            .put(self.url(&format!("{location}{separator}digest={digest}")));
        expect(put, "committing an upload", StatusCode::CREATED).await;
    }

    /// Pushes `bytes` as a client does: a session, one chunk, a commit. Returns the digest.
    async fn upload(&self, bytes: &[u8]) -> String {
        let location = self.start_upload().await;
        self.patch(&location, 0, bytes).await;
        let digest = digest_of(bytes);
        self.commit(&location, &digest).await;
        digest
    }

    /// Pulls a blob and checks it is `expected`, byte for byte.
    async fn pull(&self, expected: &[u8]) {
        let get = self
            .client
            .get(self.url(&format!("/v2/{REPO}/blobs/{}", digest_of(expected))));
        let response = send(get, "pulling a blob").await;
        assert_eq!(response.status(), StatusCode::OK, "{response:?}");
        let body = response.bytes().await.expect("blob body");
        assert!(
            body.len() == expected.len() && body == expected,
            "pulled {} bytes that differ from the {} pushed",
            body.len(),
            expected.len()
        );
    }

    async fn upload_status(&self, location: &str) -> Response {
        let get = self.client.get(self.url(location));
        send(get, "reading an upload's status").await
    }

    /// What each client of a registry does, all at once, while others are stalled (as
    /// `stalled` says): every one must be answered within [`PROMPTLY`], and correctly.
    async fn assert_serves_everyone_promptly(&self, stalled: &str) {
        let digest = digest_of(&self.blob);
        let base = async {
            let get = self.client.get(self.url("/v2/"));
            expect(get, "GET /v2/", StatusCode::OK).await;
        };
        let head = async {
            let head = self.client.request(
                Method::HEAD,
                self.url(&format!("/v2/{REPO}/blobs/{digest}")),
            );
            let response = send(head, "HEAD of a blob").await;
            assert_eq!(response.status(), StatusCode::OK, "{response:?}");
            let headers = response.headers();
            assert_eq!(
                headers[header::CONTENT_LENGTH],
                self.blob.len().to_string().as_str()
            );
            assert_eq!(headers["docker-content-digest"], digest.as_str());
        };
        let new_upload = async {
            let small = pattern(2, 1000);
            self.upload(&small).await;
            self.pull(&small).await;
        };
        let large_upload = async {
            let large = pattern(3, 16 * 1024 * 1024);
            self.upload(&large).await;
            self.pull(&large).await;
        };
        let earlier_session = async {
            let second = b" and the second";
            self.patch(&self.session, b"first chunk".len(), second)
                .await;
            let whole = [&b"first chunk"[..], second].concat();
            self.commit(&self.session, &digest_of(&whole)).await;
            self.pull(&whole).await;
        };
        let checks = [
            promptly("GET /v2/", base).boxed(),
            promptly("a GET of a 3 MiB blob", self.pull(&self.blob)).boxed(),
            promptly("a HEAD of that blob", head).boxed(),
            promptly("a new upload (POST, PATCH, PUT, GET)", new_upload).boxed(),
            promptly("a 16 MiB upload (POST, PATCH, PUT, GET)", large_upload).boxed(),
            promptly(
                "a PATCH and commit to a session started earlier",
                earlier_session,
            )
            .boxed(),
        ];
        let late: Vec<&str> = futures::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect();
        assert!(
            late.is_empty(),
            "with {stalled}, these did not complete within {PROMPTLY:?}: {}",
            late.join("; ")
        );
    }
}

async fn send(request: reqwest::RequestBuilder, what: &str) -> Response {
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn expect(request: reqwest::RequestBuilder, what: &str, status: StatusCode) {
    let response = send(request, what).await;
    assert_eq!(response.status(), status, "{what}: {response:?}");
}

/// `None` if `request` completes within [`PROMPTLY`], else `Some(what)`.
async fn promptly(what: &str, request: impl Future<Output = ()>) -> Option<&str> {
    tokio::time::timeout(PROMPTLY, request)
        .await
        .is_err()
        .then_some(what)
}

fn location_of(response: &Response) -> String {
    response
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .unwrap_or_else(|| panic!("no Location in {response:?}"))
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// Stalled clients, over raw connections

/// How a stalled body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// A `Content-Length` of [`ANNOUNCED`] bytes, of which [`SENT`] come.
    Length,
    /// `Transfer-Encoding: chunked`: one chunk of [`SENT`] bytes, then nothing, not even the
    /// last chunk.
    Chunked,
}

impl Framing {
    /// Half of the clients use each.
    fn of(i: usize) -> Self {
        if i.is_multiple_of(2) {
            Self::Length
        } else {
            Self::Chunked
        }
    }
}

/// A client that stopped midway through a request.
struct Stalled {
    stream: TcpStream,
    /// What it stopped doing.
    stopped: Stopped,
    /// The upload session a stalled PATCH appends to.
    session: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// It sent part of a request body.
    Sending,
    /// It sent a GET and stopped reading the response.
    Reading,
}

impl Stalled {
    fn sending(stream: TcpStream) -> Self {
        Self {
            stream,
            stopped: Stopped::Sending,
            session: None,
        }
    }
}

/// Connects to the registry. A read that waits for longer than [`PROMPTLY`] fails.
fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(PROMPTLY))
        .expect("read timeout");
    stream
}

/// Sends `request` on `stream`, keeping the connection, and reads the response's head: its
/// status and, if any, its `Location`.
fn exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, Option<String>) {
    let what = String::from_utf8_lossy(&request[..request.len().min(80)]).into_owned();
    stream.write_all(request).expect("send");
    // The server sends nothing more until the next request: reading up to the blank line
    // takes only this response (whose body is empty).
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{what:?}: no response: {e}"));
        assert!(n > 0, "{what:?}: connection closed");
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    // `HTTP/1.1 202 Accepted`
    let status = head.get(9..12).and_then(|s| s.parse().ok());
    let status = status.unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    let location = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    });
    (status, location)
}

/// Starts `n` upload sessions, each on a connection of its own. All are started before any
/// client stalls: a starved server could not start them afterwards.
fn open_sessions(addr: &str, n: usize) -> Vec<Stalled> {
    (0..n)
        .map(|_| {
            let mut stream = connect(addr);
            let post = format!("POST /v2/{REPO}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n\r\n");
            let (status, location) = exchange(&mut stream, post.as_bytes());
            assert_eq!(status, 202, "starting a session");
            Stalled {
                session: Some(location.expect("a session's Location")),
                ..Stalled::sending(stream)
            }
        })
        .collect()
}

/// Sends the head of a request and [`SENT`] bytes of its body, framed as `framing`, and
/// nothing more.
fn stall(stream: &mut TcpStream, method: &str, path: &str, content_type: &str, framing: Framing) {
    let body = pattern(7, SENT);
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n{}\r\n\r\n",
        match framing {
            Framing::Length => format!("Content-Length: {ANNOUNCED}"),
            Framing::Chunked => "Transfer-Encoding: chunked".to_owned(),
        }
    )
    .into_bytes();
    if framing == Framing::Chunked {
        request.extend_from_slice(format!("{SENT:x}\r\n").as_bytes());
    }
    request.extend_from_slice(&body);
    if framing == Framing::Chunked {
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request).expect("send a stalled request");
}

/// Stalls a PATCH on each session, half of each framing.
fn stall_patches(sessions: &mut [Stalled]) {
    for (i, s) in sessions.iter_mut().enumerate() {
        let location = s.session.clone().expect("a session");
        stall(
            &mut s.stream,
            "PATCH",
            &location,
            "application/octet-stream",
            Framing::of(i),
        );
    }
}

/// Opens [`STALLED`] connections, each with a session and a stalled PATCH to it, and waits
/// until the server has read each.
async fn stalled_patches(registry: &Registry) -> Vec<Stalled> {
    let mut stalled = open_sessions(&registry.server.addr, STALLED);
    stall_patches(&mut stalled);
    until_taken(registry, &stalled).await;
    stalled
}

// ---------------------------------------------------------------------------------------------
// What the server holds, from /proc

/// The send and receive queues of every established TCP connection on IPv4, by (local port,
/// remote port).
fn tcp_queues() -> HashMap<(u16, u16), (u64, u64)> {
    const ESTABLISHED: &str = "01";
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = |address: &str| {
        let hex = address.rsplit(':').next()?;
        u16::from_str_radix(hex, 16).ok()
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&ESTABLISHED) {
                return None;
            }
            let (tx, rx) = fields.get(4)?.split_once(':')?;
            let queues = (
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            );
            Some(((port(fields.get(1)?)?, port(fields.get(2)?)?), queues))
        })
        .collect()
}

/// Waits until the server has taken what each stalled client did: a client that stopped
/// sending had every byte it sent delivered (its send queue is empty) and read by the server
/// (the server's receive queue is empty); a client that stopped reading has more of its
/// response waiting in the server's send queue than it took.
async fn until_taken(registry: &Registry, stalled: &[Stalled]) {
    let server = port_of(&registry.server.addr);
    let clients: Vec<(u16, Stopped)> = stalled
        .iter()
        .map(|s| {
            (
                s.stream.local_addr().expect("local address").port(),
                s.stopped,
            )
        })
        .collect();
    let pending = || {
        let queues = tcp_queues();
        let queues_of = |client: u16| {
            let ours = queues.get(&(client, server));
            let theirs = queues.get(&(server, client));
            (ours.map(|q| q.0), theirs.map(|q| q.1), theirs.map(|q| q.0))
        };
        clients
            .iter()
            .filter(|&&(client, stopped)| {
                let (client_tx, server_rx, server_tx) = queues_of(client);
                let taken = match stopped {
                    Stopped::Sending => client_tx == Some(0) && server_rx == Some(0),
                    Stopped::Reading => server_tx.is_some_and(|n| n > 0),
                };
                !taken
            })
            .count()
    };
    until(
        || (pending() == 0).then_some(()),
        || {
            format!(
                "the server has not taken {} of {} stalled requests",
                pending(),
                clients.len()
            )
        },
    )
    .await;
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// Threads of process `pid`.
fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a thread count")
}

/// How many threads a server may run while `stalled` requests wait for their clients: its
/// runtime's own (a worker per CPU and the main thread), plus fewer than one for every two
/// stalled requests. An engine that held a thread per stalled request would run at least its
/// own plus one per request.
fn threads_allowed(stalled: usize) -> usize {
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    workers + 1 + stalled / 2
}

/// Waits until process `pid` holds at least `locks` session locks (each stalled upload is
/// under way) and runs fewer than `allowed` threads, while others are stalled (as `stalled`
/// says). The threads that ran the requests' first steps go idle and leave tokio's pool after
/// its keep-alive (10 s), within [`SETTLE`].
async fn until_no_thread_is_held(pid: u32, stalled: &str, locks: usize, allowed: usize) {
    until(
        || (locks_of(pid) >= locks && threads_of(pid) < allowed).then_some(()),
        || {
            format!(
                "with {stalled}, the server holds {} session locks (expected {locks}) and runs \
                 {} threads (allowed: fewer than {allowed})",
                locks_of(pid),
                threads_of(pid)
            )
        },
    )
    .await;
}

/// File locks (`flock`) held by process `pid`: one per upload session it is appending to.
fn locks_of(pid: u32) -> usize {
    let locks = std::fs::read_to_string("/proc/locks").expect("read /proc/locks");
    let pid = pid.to_string();
    locks
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // `1: FLOCK ADVISORY WRITE <pid> ...`; a waiter's line has `->` after the number.
        .filter(|f| f.get(1) == Some(&"FLOCK") && f.get(4) == Some(&pid.as_str()))
        .count()
}

/// Polls `check` until it gives a value, or panics with `why()` after [`SETTLE`].
async fn until<T>(mut check: impl FnMut() -> Option<T>, why: impl Fn() -> String) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "after {SETTLE:?}, {}", why());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The limit on open files the most demanding test needs: the server holds four per stalled
/// upload (its connection and its session's lock, state and data files).
const OPEN_FILES: u64 = 5 * TWICE_THE_POOL as u64;

/// The soft and hard limits on open files of this process.
fn open_files_limit() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
    assert_eq!(read, 0, "getrlimit: {}", std::io::Error::last_os_error());
    limit
}

/// Raises this process's soft limit on open files to its hard limit, for itself and the
/// server it starts: a default soft limit of 1024 is below what these tests hold.
fn raise_open_files_limit() {
    let hard = open_files_limit().rlim_max;
    let limit = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) };
    assert_eq!(set, 0, "setrlimit: {}", std::io::Error::last_os_error());
    assert!(
        hard >= OPEN_FILES,
        "these tests need {OPEN_FILES} open files; the hard limit is {hard}"
    );
}

/// Process `pid`'s soft and hard limits on open files, from `/proc/<pid>/limits`.
fn open_files_limit_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("process limits");
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .expect("a limit on open files");
    let mut values = line.split_whitespace();
    let mut next = || values.next().expect("a limit").to_owned();
    (next(), next())
}

// ---------------------------------------------------------------------------------------------
// Stalled PATCHes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_stalled_patches_do_not_delay_a_get_a_head_or_a_new_upload() {
    let registry = Registry::start().await;
    let _stalled = stalled_patches(&registry).await;
    registry
        .assert_serves_everyone_promptly(&format!("{STALLED} PATCHes stalled"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_stalled_patches_hold_no_server_thread() {
    let registry = Registry::start().await;
    let _stalled = stalled_patches(&registry).await;
    let pid = registry.server.child.id();
    let stalled = format!("{STALLED} PATCHes stalled");
    until_no_thread_is_held(pid, &stalled, STALLED, threads_allowed(STALLED)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_patches_whose_clients_hang_up_leave_their_sessions_resumable_where_they_were() {
    let registry = Registry::start().await;
    let mut stalled = open_sessions(&registry.server.addr, TWICE_THE_POOL);
    // A first chunk in each session, on its connection, before the stalled one.
    let first = pattern(8, 1024);
    for s in &mut stalled {
        let location = s.session.clone().expect("a session");
        let request = format!(
            "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Range: 0-1023\r\n\
             Content-Length: 1024\r\n\r\n"
        );
        let (status, _) = exchange(&mut s.stream, &[request.as_bytes(), &first].concat());
        assert_eq!(status, 202, "a first chunk");
    }
    stall_patches(&mut stalled);
    until_taken(&registry, &stalled).await;
    // Every client hangs up.
    let sessions: Vec<String> = stalled
        .into_iter()
        .map(|s| s.session.expect("a session"))
        .collect();

    registry
        .assert_serves_everyone_promptly("the stalled clients hung up")
        .await;
    // Each session is where its first chunk left it, and takes the rest.
    let rest = pattern(9, 1024);
    let whole = [&first[..], &rest].concat();
    let digest = digest_of(&whole);
    let late = futures::stream::iter(&sessions)
        .map(|location| {
            let resume = async {
                let status = registry.upload_status(location).await;
                assert_eq!(status.status(), StatusCode::NO_CONTENT, "{status:?}");
                assert_eq!(status.headers()[header::RANGE], "0-1023", "{status:?}");
                registry.patch(location, 1024, &rest).await;
                registry.commit(location, &digest).await;
            };
            promptly(location, resume)
        })
        .buffer_unordered(8)
        .filter_map(std::future::ready)
        .next()
        .await;
    assert!(
        late.is_none(),
        "session {} was not resumed within {PROMPTLY:?}",
        late.unwrap_or_default()
    );
    registry.pull(&whole).await;
}

/// So that the number of stalled clients it can hold is bounded by the hard limit, not by a
/// default soft limit of 1024 (a few hundred stalled uploads), as a Go registry's is.
#[test]
fn the_server_raises_its_soft_limit_on_open_files_to_the_hard_limit() {
    let hard = open_files_limit().rlim_max;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    let mut command = layerstore();
    command
        .arg("serve")
        .args(["--addr", "127.0.0.1:0", "--root"]);
    command.arg(&root);
    // Started with a low soft limit, as from a default shell.
    let low = libc::rlimit {
        rlim_cur: hard.min(512),
        rlim_max: hard,
    };
    // SAFETY: the closure runs in the child between fork and exec and calls only setrlimit,
    // which is async-signal-safe.
    unsafe {
        command.pre_exec(
            move || match libc::setrlimit(libc::RLIMIT_NOFILE, &raw const low) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            },
        );
    }
    let spawned = spawn_server(command, &dir.path().join("server.log"), SETTLE);
    let (mut child, log) = (spawned.child, dir.path().join("server.log"));
    let limit = open_files_limit_of(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(limit.0, limit.1, "the server's soft and hard limits");
    assert!(
        read_log(&log).contains("open files"),
        "the limit is not logged:\n{}",
        read_log(&log)
    );
}

// ---------------------------------------------------------------------------------------------
// Other requests that stall

/// Stalled clients of the other requests that take a body, and readers that stop reading a
/// blob larger than what the kernel and the server buffer for a connection (a few MiB).
struct OtherStalls {
    stalled: Vec<Stalled>,
    /// Of them, monolithic uploads (`POST ?digest=`), which take a session lock each.
    posts: usize,
    /// Of them, the fewest of one kind: the readers.
    readers: usize,
}

/// Per kind: monolithic POSTs of each framing, manifest PUTs, blob readers. Readers are fewer:
/// each pins a few MiB of socket buffers.
const OTHER_STALLED: usize = 100;
const READERS: usize = 32;

async fn stall_other_requests(registry: &Registry) -> OtherStalls {
    let large = pattern(4, 16 * 1024 * 1024);
    let large = registry.upload(&large).await;
    let addr = &registry.server.addr;
    let post = format!(
        "/v2/{REPO}/blobs/uploads/?digest={}",
        digest_of(b"never sent")
    );
    let mut stalled = Vec::new();
    for framing in [Framing::Length, Framing::Chunked] {
        for _ in 0..OTHER_STALLED {
            let mut stream = connect(addr);
            stall(
                &mut stream,
                "POST",
                &post,
                "application/octet-stream",
                framing,
            );
            stalled.push(Stalled::sending(stream));
        }
    }
    for i in 0..OTHER_STALLED {
        let mut stream = connect(addr);
        let put = format!("/v2/{REPO}/manifests/stalled-{i}");
        stall(&mut stream, "PUT", &put, OCI_MANIFEST, Framing::Length);
        stalled.push(Stalled::sending(stream));
    }
    let get = format!("GET /v2/{REPO}/blobs/{large} HTTP/1.1\r\nHost: x\r\n\r\n");
    for _ in 0..READERS {
        let mut stream = connect(addr);
        stream.write_all(get.as_bytes()).expect("send a GET");
        stalled.push(Stalled {
            stopped: Stopped::Reading,
            ..Stalled::sending(stream)
        });
    }
    until_taken(registry, &stalled).await;
    OtherStalls {
        stalled,
        posts: 2 * OTHER_STALLED,
        readers: READERS,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_monolithic_posts_manifest_puts_and_blob_reads_do_not_delay_a_get_a_head_or_a_new_upload()
 {
    let registry = Registry::start().await;
    let others = stall_other_requests(&registry).await;
    let stalled = format!(
        "{} monolithic POSTs, manifest PUTs and blob reads stalled",
        others.stalled.len()
    );
    registry.assert_serves_everyone_promptly(&stalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_monolithic_posts_manifest_puts_and_blob_reads_hold_no_server_thread() {
    let registry = Registry::start().await;
    let others = stall_other_requests(&registry).await;
    let pid = registry.server.child.id();
    let stalled = format!(
        "{} monolithic POSTs, manifest PUTs and blob reads stalled ({} reads)",
        others.stalled.len(),
        others.readers
    );
    // A thread per stalled request of any one kind is too many.
    let allowed = threads_allowed(others.readers);
    until_no_thread_is_held(pid, &stalled, others.posts, allowed).await;
}
