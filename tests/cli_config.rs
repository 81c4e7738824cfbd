//! `layerstore check-config FILE`, run as a user would: the built binary on a file on disk.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `layerstore check-config <file>` with no `REGISTRY_*` variable inherited, plus `env`.
fn check_config(file: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_layerstore"));
    command.arg("check-config").arg(file);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REGISTRY_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run layerstore")
}

fn config_file(yaml: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    file
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const GOOD: &str = "\
version: 0.1
log:
  level: debug
  formatter: json
storage:
  filesystem:
    rootdirectory: /srv/layerstore
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: true
      age: 168h
      interval: 1h30m
      dryrun: false
http:
  addr: :5000
";

#[test]
fn a_good_file_exits_zero_and_prints_the_resolved_values() {
    let file = config_file(GOOD);
    let output = check_config(file.path(), &[]);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        text(&output.stderr)
    );
    for expected in [
        "filesystem",
        "/srv/layerstore",
        "delete                 enabled",
        "inmemory, 10000 entries",
        "age 168h, interval 1h30m",
        "0.0.0.0:5000",
        "level                  debug",
        "formatter              json",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
}

#[test]
fn a_bad_file_exits_non_zero_and_names_the_key_on_stderr() {
    let file = config_file(&GOOD.replace("rootdirectory:", "rootdirectroy:"));
    let output = check_config(file.path(), &[]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("storage.filesystem.rootdirectroy: unknown key"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&file.path().display().to_string()),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing resolved is printed");
}

#[test]
fn an_auth_section_that_cannot_be_honoured_is_refused() {
    let file = config_file(&format!(
        "{GOOD}auth:\n  htpasswd:\n    realm: r\n    path: /nonexistent/auth/htpasswd\n"
    ));
    let output = check_config(file.path(), &[]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("auth.htpasswd.path: cannot read /nonexistent/auth/htpasswd"),
        "{stderr}"
    );
    let file = config_file(&format!("{GOOD}auth:\n  silly: {{realm: r, service: s}}\n"));
    let output = check_config(file.path(), &[]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("auth.silly: "));
}

#[test]
fn an_htpasswd_section_is_described() {
    let htpasswd = config_file("");
    let file = config_file(&format!(
        "{GOOD}auth:\n  htpasswd:\n    realm: Registry\n    path: {}\n",
        htpasswd.path().display()
    ));
    let output = check_config(file.path(), &[]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        stdout.contains("htpasswd (bcrypt entries only)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("realm                  Registry"),
        "{stdout}"
    );
}

/// `auth.token` with `bundle` (PEM text) as its root bundle.
fn token_config(bundle: &str) -> (tempfile::NamedTempFile, tempfile::NamedTempFile) {
    let bundle = config_file(bundle);
    let file = config_file(&format!(
        "{GOOD}auth:\n  token:\n    realm: http://auth.example/token\n    service: registry\n    \
         issuer: auth-service\n    rootcertbundle: {}\n",
        bundle.path().display()
    ));
    (bundle, file)
}

#[test]
fn a_token_section_is_described_once_its_keys_load() {
    let signer = rcgen::generate_simple_self_signed(vec!["token-signer".to_owned()]).unwrap();
    let (_bundle, file) = token_config(&signer.cert.pem());
    let output = check_config(file.path(), &[]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for line in [
        "kind                   token",
        "realm                  http://auth.example/token",
        "service                registry",
        "issuer                 auth-service",
        "auth.token: the signing keys load",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from\n{stdout}");
    }
}

#[test]
fn a_token_bundle_without_a_certificate_is_refused_naming_it() {
    let (bundle, file) = token_config("not a certificate\n");
    let output = check_config(file.path(), &[]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "auth.token: rootcertbundle {}: no PEM CERTIFICATE",
            bundle.path().display()
        )),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing resolved is printed");
}

#[test]
fn an_htpasswd_file_with_a_non_bcrypt_entry_is_refused_naming_the_line() {
    let htpasswd = config_file("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n");
    let file = config_file(&format!(
        "{GOOD}auth:\n  htpasswd:\n    realm: Registry\n    path: {}\n",
        htpasswd.path().display()
    ));
    let output = check_config(file.path(), &[]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("{}: line 1: SHA-1", htpasswd.path().display())),
        "{stderr}"
    );
}

#[test]
fn registry_environment_variables_override_the_file() {
    let file = config_file(GOOD);
    let output = check_config(
        file.path(),
        &[
            ("REGISTRY_HTTP_ADDR", "127.0.0.1:6000"),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/elsewhere"),
        ],
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(stdout.contains("127.0.0.1:6000"), "{stdout}");
    assert!(stdout.contains("/elsewhere"), "{stdout}");
    assert!(stdout.contains("REGISTRY_HTTP_ADDR"), "{stdout}");
}

#[test]
fn a_missing_file_is_an_error() {
    let output = check_config(Path::new("/nonexistent/layerstore/config.yml"), &[]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("cannot read /nonexistent/layerstore/config.yml"));
}

#[test]
fn a_gc_schedule_is_described_as_a_layerstore_extension() {
    let file = config_file(&GOOD.replace(
        "  maintenance:\n",
        "  maintenance:\n    gc:\n      enabled: true\n      interval: 6h\n      grace: 0s\n      \
         deleteuntagged: true\n",
    ));
    let output = check_config(file.path(), &[]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        stdout.contains(
            "gc                     enabled (layerstore extension), interval 6h, grace 0s, \
             deleteuntagged true, dryrun false"
        ),
        "{stdout}"
    );
}

#[test]
fn a_bad_gc_value_exits_non_zero_and_names_the_key() {
    let file = config_file(&GOOD.replace(
        "  maintenance:\n",
        "  maintenance:\n    gc:\n      enabled: true\n      interval: 0s\n",
    ));
    let output = check_config(file.path(), &[]);
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("storage.maintenance.gc.interval: must be greater than zero"),
        "{stderr}"
    );
}
