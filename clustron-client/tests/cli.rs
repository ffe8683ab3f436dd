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

/// `clustron ARGS` with an endpoint and certificate files that are never
/// reached: whatever fails must fail while parsing.
fn parse_only(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["--endpoints", "127.0.0.1:1"])
        .args(["--ca-file", "/nonexistent/ca.pem"])
        .args(["--cert-file", "/nonexistent/c.pem"])
        .args(["--key-file", "/nonexistent/c.key"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn lease_ttls_out_of_range_are_refused_while_parsing() {
    // 0 expired at once; 18446744073709552 s overflowed to a 384 ms lease.
    for args in [
        &["kv", "grant", "0"][..],
        &["kv", "grant", "18446744073709552"],
        &["kv", "grant", "31536001"],
        &["kv", "lock", "name", "--ttl", "0", "--", "true"],
        &["kv", "campaign", "name", "me", "--ttl", "0", "--", "true"],
    ] {
        let output = parse_only(args);
        assert!(!output.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains("1..=31536000"), "{args:?}: {err}");
        assert!(
            !err.contains("/nonexistent"),
            "{args:?} got past parsing: {err}"
        );
    }
}
