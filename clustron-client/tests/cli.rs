//! The `clustron` command line without a cluster: clear errors. (Against a
//! real cluster it is exercised in `tests/tests/processes.rs`.)

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_clustron");

#[test]
fn missing_endpoints_and_certificates_are_named() {
    let output = Command::new(BIN)
        .arg("members")
        .env_remove("CLUSTRON_ENDPOINTS")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--endpoints"), "{err}");

    let output = Command::new(BIN)
        .args([
            "--endpoints",
            "127.0.0.1:1",
            "--ca-file",
            "/nonexistent/ca.pem",
        ])
        .args([
            "--cert-file",
            "/nonexistent/c.pem",
            "--key-file",
            "/nonexistent/c.key",
            "members",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

#[test]
fn a_negative_timeout_is_refused_by_name() {
    let output = Command::new(BIN)
        .args(["--endpoints", "127.0.0.1:1", "--timeout=-1"])
        .args(["--ca-file", "/nonexistent/ca.pem"])
        .args([
            "--cert-file",
            "/nonexistent/c.pem",
            "--key-file",
            "/nonexistent/c.key",
        ])
        .args(["kv", "get", "k"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--timeout"), "{err}");
}
