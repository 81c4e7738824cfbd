//! The log lines of `layerstore serve` as `log` configures them (`formatter`, `fields`,
//! `accesslog`), read from the server's stderr. A request's access line is written before its
//! response leaves, so once the client has the response the line is in the log (or never
//! will be).

mod common;

use common::server::Running;
use serde_json::Value;

/// `serve --config` on a fresh filesystem root with `log` set to `log_yaml` (the section's
/// body, indented by two).
fn start(log_yaml: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "version: 0.1\nlog:\n{log_yaml}storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  \
         addr: 127.0.0.1:0\n",
        dir.path().join("data").display()
    );
    let file = dir.path().join("config.yml");
    std::fs::write(&file, yaml).unwrap();
    Running::start_with(dir, &["--config", file.to_str().unwrap()])
}

async fn get(server: &Running, path: &str) {
    let response = reqwest::get(format!("http://{}{path}", server.addr))
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
}

/// Every line of the log as a JSON object (a line that is not one fails the test).
fn json_lines(server: &Running) -> Vec<serde_json::Map<String, Value>> {
    server
        .log()
        .lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(object)) => object,
            other => panic!("not a JSON object ({other:?}): {line}"),
        })
        .collect()
}

fn access_lines(lines: &[serde_json::Map<String, Value>]) -> Vec<&serde_json::Map<String, Value>> {
    lines
        .iter()
        .filter(|l| l["target"] == "layerstore::access")
        .collect()
}

#[tokio::test]
async fn json_lines_parse_as_json_and_carry_the_configured_fields() {
    let server = start("  formatter: json\n  fields:\n    service: registry\n    replica: 3\n");
    get(&server, "/v2/").await;
    let lines = json_lines(&server);
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        for key in ["time", "level", "msg", "target"] {
            assert!(line.contains_key(key), "no {key}: {line:?}");
        }
        assert_eq!(line["service"], "registry", "{line:?}");
        assert_eq!(line["replica"], 3, "{line:?}");
    }
}

#[tokio::test]
async fn the_access_log_writes_one_line_per_request_by_default() {
    let server = start("  formatter: json\n");
    get(&server, "/v2/").await;
    get(&server, "/v2/_catalog").await;
    let lines = json_lines(&server);
    let access = access_lines(&lines);
    let paths: Vec<&Value> = access.iter().map(|l| &l["path"]).collect();
    assert_eq!(paths, ["/v2/", "/v2/_catalog"], "{access:?}");
    assert_eq!(access[1]["method"], "GET");
    assert_eq!(access[1]["status"], 200);
}

#[tokio::test]
async fn a_disabled_access_log_writes_no_line_per_request() {
    let server = start("  formatter: json\n  accesslog:\n    disabled: true\n");
    get(&server, "/v2/").await;
    get(&server, "/v2/_catalog").await;
    let lines = json_lines(&server);
    assert!(!lines.is_empty(), "the server logs its start");
    assert!(access_lines(&lines).is_empty(), "{lines:?}");
    assert!(!server.log().contains("/v2/_catalog"), "{}", server.log());
}

#[tokio::test]
async fn text_lines_carry_the_configured_fields() {
    let server = start("  formatter: text\n  fields:\n    service: registry\n");
    get(&server, "/v2/").await;
    let log = server.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 2, "{log}");
    for line in &lines {
        assert!(line.ends_with(" service=\"registry\""), "{line}");
        assert!(serde_json::from_str::<Value>(line).is_err(), "{line}");
    }
}
