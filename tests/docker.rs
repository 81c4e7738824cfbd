//! docker against the real server: `docker login`, `push` and `pull` behind `auth.htpasswd`,
//! and behind `auth.token` with a token server the test starts (the realm is plain HTTP, which
//! dockerd follows). Images are built here `FROM scratch` (nothing is pulled from a hub).
//!
//! dockerd must be running and reachable (`docker version` succeeds): without it these tests
//! fail when `CI=true` and are skipped with a note on stderr otherwise. dockerd treats
//! 127.0.0.0/8 as a plain-HTTP registry, so `127.0.0.1:PORT` needs no `--insecure-registry`;
//! `.ci/run` installs Debian 12's `docker.io` (dockerd 20.10) and starts dockerd by hand
//! (`dockerd_start`), which is also how to run these tests on a machine without an init system.
//!
//! Every test has a docker config directory of its own (`DOCKER_CONFIG`), so logins never reach
//! `~/.docker` nor another test, its own server, and repository names with the process id in
//! them; the images it builds or pulls are removed from dockerd when it ends.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rand::RngCore;
use tempfile::TempDir;

mod common;
use common::server::Running;
use common::token_issuer::{IssuerConfig, TokenIssuer, User};

/// Pushes and pulls of a few hundred KiB take well under a second; this only stops a client
/// that hangs from hanging the test run.
const DOCKER_TIMEOUT_SECS: u32 = 180;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether dockerd answers: `false` (with a note) outside CI when it does not; a panic in CI.
fn docker_available() -> bool {
    let answers = Command::new("docker")
        .arg("version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if answers {
        return true;
    }
    assert!(
        !in_ci(),
        "dockerd is required when CI=true (`docker version` failed; .ci/run starts it)"
    );
    // Straight to stderr, past libtest's capture, so that a skip shows in `cargo test`.
    let _ = writeln!(
        std::io::stderr(),
        "skipping: dockerd is not reachable (`docker version` failed)"
    );
    false
}

// ---------------------------------------------------------------------------------------------
// The server

const USER: &str = "docker-user";
/// With colons: docker sends it whole, the server (or token server) splits at the first.
const PASSWORD: &str = "pass:with:colons";
/// A token-server user whose tokens never grant push.
const READER: &str = "docker-reader";

/// How the registry authenticates.
#[derive(Clone, Copy)]
enum Auth {
    /// `auth.htpasswd` with [`USER`].
    Htpasswd,
    /// `auth.token` trusting a [`TokenIssuer`] that knows [`USER`] (pull and push under `test/`)
    /// and [`READER`] (pull only).
    Token,
}

/// A registry behind `auth`, with the token server when there is one.
struct Registry {
    server: Running,
    issuer: Option<TokenIssuer>,
}

impl Registry {
    fn start(auth: Auth) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let (section, issuer) = match auth {
            Auth::Htpasswd => {
                let htpasswd = dir.path().join("htpasswd");
                let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
                std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).expect("write htpasswd");
                let section = format!(
                    "auth:\n  htpasswd:\n    realm: docker-test\n    path: {}\n",
                    htpasswd.display()
                );
                (section, None)
            }
            Auth::Token => {
                let issuer = TokenIssuer::start(IssuerConfig {
                    users: vec![
                        User::new(USER, PASSWORD, &["repository:test/*:pull,push"]),
                        User::new(READER, PASSWORD, &["repository:test/*:pull"]),
                    ],
                    ..IssuerConfig::default()
                });
                let bundle = dir.path().join("bundle.pem");
                std::fs::write(&bundle, issuer.root_cert_bundle()).expect("write bundle.pem");
                let section = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    \
                     rootcertbundle: {}\n",
                    issuer.realm(),
                    issuer.service(),
                    issuer.issuer(),
                    bundle.display()
                );
                (section, Some(issuer))
            }
        };
        let config = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:0\n{section}",
            root.display()
        );
        let path = dir.path().join("config.yml");
        std::fs::write(&path, config).expect("write config.yml");
        let path = path.to_str().expect("utf-8 path").to_owned();
        let server = Running::start_with(dir, &["--config", &path]);
        Registry { server, issuer }
    }

    /// `127.0.0.1:PORT/REPOSITORY:TAG` of [`repository`]`(what)`: unique on the machine while
    /// this server runs (its port), and among test runs sharing one dockerd (the pid).
    fn reference(&self, what: &str, tag: &str) -> String {
        format!("{}/{}:{tag}", self.server.addr, repository(what))
    }

    fn host(&self) -> &str {
        &self.server.addr
    }
}

/// `test/WHAT-PID`: under `test/`, where the token server's users may act.
fn repository(what: &str) -> String {
    format!("test/{what}-{}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// docker

/// The docker CLI with a config directory of its own: what it logs in to is stored there.
struct Docker {
    config: TempDir,
}

impl Docker {
    fn new() -> Self {
        Docker {
            config: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `docker ARGS` with `stdin`, stopped after [`DOCKER_TIMEOUT_SECS`].
    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new("timeout")
            .args([
                "--kill-after=10",
                &DOCKER_TIMEOUT_SECS.to_string(),
                "docker",
            ])
            .args(args)
            .env("DOCKER_CONFIG", self.config.path())
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker (through coreutils' timeout)");
        let mut input = child.stdin.take().expect("piped stdin");
        input
            .write_all(stdin.as_bytes())
            .expect("write docker's stdin");
        drop(input);
        let output = child.wait_with_output().expect("wait for docker");
        assert!(
            !matches!(output.status.code(), Some(124 | 137)),
            "docker {args:?} did not finish in {DOCKER_TIMEOUT_SECS} s: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    /// Runs docker and returns its stdout, trimmed; panics with its stderr if it fails.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "docker {args:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Runs docker, which must fail; returns its stderr.
    #[track_caller]
    fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !output.status.success(),
            "docker {args:?} succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        stderr
    }

    /// `docker login HOST -u USER --password-stdin`.
    fn login(&self, host: &str, user: &str, password: &str) -> Output {
        self.run_with_stdin(
            &["login", host, "-u", user, "--password-stdin"],
            &format!("{password}\n"),
        )
    }

    #[track_caller]
    fn logged_in(&self, host: &str, user: &str) {
        let output = self.login(host, user, PASSWORD);
        assert!(
            output.status.success(),
            "docker login {host} as {user} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The image ID of `reference` in dockerd, `None` if it has no such image.
    fn image_id(&self, reference: &str) -> Option<String> {
        let output = self.run(&["image", "inspect", "--format", "{{.Id}}", reference]);
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

/// The texts with which docker reports that the registry (or token server) refused it.
fn is_refusal(stderr: &str) -> bool {
    [
        "unauthorized",
        "401 Unauthorized",
        "no basic auth credentials",
        "authentication required",
        "denied",
        "insufficient_scope",
    ]
    .iter()
    .any(|text| stderr.contains(text))
}

/// An image built here, removed from dockerd (with every tag it has there) when dropped.
struct Image {
    /// `sha256:…`, the digest of its config: what a pull must give back.
    id: String,
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "--force", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Builds an image `FROM scratch` tagged `reference`: two layers, a small text file and 256 KiB
/// of random bytes (so its layers and ID are its own).
fn build(docker: &Docker, reference: &str) -> Image {
    let context = tempfile::tempdir().expect("tempdir");
    write_context(context.path(), reference);
    let context = context.path().to_str().expect("utf-8 path");
    // The legacy builder (DOCKER_BUILDKIT=0, set for every command): Debian 12's docker.io has
    // no buildx plugin, without which the CLI cannot build with BuildKit.
    let id = docker.ok(&["build", "--quiet", "--tag", reference, context]);
    let id = id.lines().last().unwrap_or_default().to_owned();
    assert!(id.starts_with("sha256:"), "docker build printed {id:?}");
    Image { id }
}

fn write_context(dir: &Path, reference: &str) {
    let mut data = vec![0u8; 256 << 10];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(dir.join("data.bin"), data).expect("write data.bin");
    std::fs::write(dir.join("hello.txt"), format!("hello from {reference}\n"))
        .expect("write hello.txt");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY data.bin /data.bin\nCMD [\"/x\"]\n",
    )
    .expect("write Dockerfile");
}

// ---------------------------------------------------------------------------------------------
// The behaviours, each under htpasswd and under token auth

/// `docker login` with a wrong password fails (at the registry, or at the token server), and
/// with the right one succeeds.
fn login_refuses_a_wrong_password_and_accepts_the_right_one(auth: Auth) {
    if !docker_available() {
        return;
    }
    let registry = Registry::start(auth);
    let docker = Docker::new();
    let wrong = docker.login(registry.host(), USER, "wrong");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success(), "login with a wrong password");
    assert!(is_refusal(&stderr), "{stderr}");
    let right = docker.login(registry.host(), USER, PASSWORD);
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
}

/// Without a login, `docker push` is refused.
fn push_without_login_is_refused(auth: Auth) {
    if !docker_available() {
        return;
    }
    let registry = Registry::start(auth);
    let docker = Docker::new();
    let reference = registry.reference("anonymous", "v1");
    let _image = build(&docker, &reference);
    let stderr = docker.fails(&["push", &reference]);
    assert!(is_refusal(&stderr), "{stderr}");
}

/// Logged in, `docker push`, then `docker rmi` and `docker pull` give back the same image ID.
fn pull_after_rmi_gives_back_the_pushed_image(auth: Auth) {
    if !docker_available() {
        return;
    }
    let registry = Registry::start(auth);
    let docker = Docker::new();
    docker.logged_in(registry.host(), USER);
    let reference = registry.reference("round-trip", "v1");
    let image = build(&docker, &reference);
    docker.ok(&["push", &reference]);
    docker.ok(&["rmi", &reference]);
    assert_eq!(docker.image_id(&reference), None, "rmi left the image");
    docker.ok(&["pull", &reference]);
    assert_eq!(docker.image_id(&reference), Some(image.id.clone()));
    if let Some(issuer) = &registry.issuer {
        let repository = repository("round-trip");
        // docker asks for `push,pull`, in that order.
        let grants_push = |scope: &String| {
            scope
                .strip_prefix(&format!("repository:{repository}:"))
                .is_some_and(|actions| actions.split(',').any(|a| a == "push"))
        };
        assert!(
            issuer
                .requests()
                .iter()
                .any(|r| r.user.as_deref() == Some(USER)
                    && r.status == 200
                    && r.scopes.iter().any(grants_push)),
            "docker never got a push token for {repository}: {:?}",
            issuer.requests()
        );
    }
}

/// After `docker logout` a pull is refused (nothing is anonymous), and after logging in again
/// it works.
fn pull_after_logout_is_refused_and_after_login_again_works(auth: Auth) {
    if !docker_available() {
        return;
    }
    let registry = Registry::start(auth);
    let docker = Docker::new();
    docker.logged_in(registry.host(), USER);
    let reference = registry.reference("logout", "v1");
    let image = build(&docker, &reference);
    docker.ok(&["push", &reference]);
    docker.ok(&["rmi", &reference]);
    docker.ok(&["logout", registry.host()]);
    let stderr = docker.fails(&["pull", &reference]);
    assert!(is_refusal(&stderr), "{stderr}");
    assert_eq!(
        docker.image_id(&reference),
        None,
        "a refused pull stored it"
    );
    docker.logged_in(registry.host(), USER);
    docker.ok(&["pull", &reference]);
    assert_eq!(docker.image_id(&reference), Some(image.id.clone()));
}

#[test]
fn htpasswd_docker_login_refuses_a_wrong_password_and_accepts_the_right_one() {
    login_refuses_a_wrong_password_and_accepts_the_right_one(Auth::Htpasswd);
}

#[test]
fn htpasswd_docker_push_without_login_is_refused() {
    push_without_login_is_refused(Auth::Htpasswd);
}

#[test]
fn htpasswd_docker_pull_after_rmi_gives_back_the_pushed_image() {
    pull_after_rmi_gives_back_the_pushed_image(Auth::Htpasswd);
}

#[test]
fn htpasswd_docker_pull_after_logout_is_refused_and_after_login_again_works() {
    pull_after_logout_is_refused_and_after_login_again_works(Auth::Htpasswd);
}

#[test]
fn token_docker_login_refuses_a_wrong_password_and_accepts_the_right_one() {
    login_refuses_a_wrong_password_and_accepts_the_right_one(Auth::Token);
}

#[test]
fn token_docker_push_without_login_is_refused() {
    push_without_login_is_refused(Auth::Token);
}

#[test]
fn token_docker_pull_after_rmi_gives_back_the_pushed_image() {
    pull_after_rmi_gives_back_the_pushed_image(Auth::Token);
}

#[test]
fn token_docker_pull_after_logout_is_refused_and_after_login_again_works() {
    pull_after_logout_is_refused_and_after_login_again_works(Auth::Token);
}

/// A user whose tokens grant only pull pulls what another user pushed (the same image ID), but
/// its own push of a new tag there is refused and stores nothing.
#[test]
fn token_docker_pull_only_user_pulls_but_its_push_is_refused() {
    if !docker_available() {
        return;
    }
    let registry = Registry::start(Auth::Token);
    let writer = Docker::new();
    writer.logged_in(registry.host(), USER);
    let reference = registry.reference("pull-only", "v1");
    let image = build(&writer, &reference);
    writer.ok(&["push", &reference]);
    writer.ok(&["rmi", &reference]);

    let reader = Docker::new();
    reader.logged_in(registry.host(), READER);
    reader.ok(&["pull", &reference]);
    assert_eq!(reader.image_id(&reference), Some(image.id.clone()));

    let retagged = registry.reference("pull-only", "v2");
    reader.ok(&["tag", &reference, &retagged]);
    let stderr = reader.fails(&["push", &retagged]);
    // The server's refusal names the scope the token lacked.
    let missing = format!("repository:{}:push", repository("pull-only"));
    assert!(stderr.contains(&missing), "{stderr}");
    let stderr = writer.fails(&["pull", &retagged]);
    assert!(
        stderr.contains("not found") || stderr.contains("manifest unknown"),
        "the refused push stored {retagged}: {stderr}"
    );
}
