//! The diagnostic log in JSON (`--log-format json`): one object per line, and what happens
//! while a request is handled carries that request's id, the one its response and audit
//! records name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::gateway::*;
use serde_json::{Value, json};

#[test]
fn json_lines_name_the_request() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens upstream: the failed hop is logged inside the request.
    let gone = server_config(
        free_port(),
        "gone",
        json!({"type": "none"}),
        vec![],
        2000,
        true,
    );
    write_config(
        dir.path(),
        &json!({"schema": 1, "version": "logs", "servers": [gone], "virtualServers": []}),
    );
    let log = dir.path().join("stderr.log");
    let (_proxy, port, admin) = start_proxy_with(
        dir.path(),
        &["--log-format", "json"],
        &[("RUST_LOG", "debug")],
        std::fs::File::create(&log).unwrap().into(),
    );
    wait_for("the proxy", || {
        (get(admin, "/readyz").0 == 200).then_some(())
    });
    let (status, _, _) = post(
        port,
        "/team/mcp/gone/server",
        &[("X-Request-Id", "logs-req-7")],
        &call("echo"),
    );
    assert_eq!(status, 200, "a JSON-RPC error for the unreachable upstream");

    // A line belongs to the request when the request span is among its spans (the hop's own
    // span is the innermost one for what happens upstream).
    let of_request = |line: &Value| {
        line["spans"].as_array().is_some_and(|spans| {
            spans
                .iter()
                .any(|s| s["name"] == "request" && s["id"] == "logs-req-7")
        })
    };
    let lines = wait_for("the failed hop logged within the request", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect();
        lines
            .iter()
            .any(|l| of_request(l) && l["fields"]["message"] == "upstream request failed")
            .then_some(lines)
    });
    let hop = lines
        .iter()
        .find(|l| of_request(l) && l["fields"]["message"] == "upstream request failed")
        .unwrap();
    assert_eq!(hop["level"], "WARN");
    assert_eq!(hop["span"]["name"], "upstream", "{hop}");
    assert_eq!(hop["span"]["server"], "team/gone", "{hop}");
    let request = hop["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "request")
        .unwrap();
    assert_eq!(request["path"], "/team/mcp/gone/server");
    assert_eq!(request["route"], "team/gone");
    assert!(hop["timestamp"].is_string());
}
