//! The `clustron-dkv` command line: certificates and refused configurations.
//! (Cluster scenarios with real processes live in `tests/tests/processes.rs`,
//! which uses the binary this package builds.)

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_clustron-dkv");

fn stderr_of(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(!output.status.success(), "the command was expected to fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn certs_init_and_node_write_pem_files_with_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Command::new(BIN)
        .args(["certs", "init", "--out"])
        .arg(dir.path())
        .status()
        .unwrap()
        .success());
    let node = Command::new(BIN)
        .args([
            "certs",
            "node",
            "n1",
            "--ip",
            "127.0.0.1",
            "--dns",
            "n1.local",
            "--ca",
        ])
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(node.success());
    for key in ["ca.key", "n1.key"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    assert!(std::fs::read_to_string(dir.path().join("n1.pem"))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

#[test]
fn an_unknown_key_in_the_config_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "name = \"n1\"\nlisten = \"127.0.0.1:7000\"\nlisen_port = 1\n",
    )
    .unwrap();
    let err = stderr_of(Command::new(BIN).arg("run").arg("--config").arg(&file));
    assert!(err.contains("lisen_port"), "{err}");
}

#[test]
fn bad_and_missing_values_are_refused_by_name() {
    let err = stderr_of(Command::new(BIN).args(["run", "--listen", "not-an-address"]));
    assert!(err.contains("--listen"), "{err}");
    let err = stderr_of(
        Command::new(BIN)
            .args(["run", "--name", "n1"])
            .env_remove("CLUSTRON_LISTEN"),
    );
    assert!(err.contains("missing `listen`"), "{err}");
    let err = stderr_of(
        Command::new(BIN)
            .args([
                "run",
                "--name",
                "n1",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                "/tmp/x",
            ])
            .args(["--ca-file", "a", "--cert-file", "b", "--key-file", "c"])
            .env("CLUSTRON_LOG_FORMAT", "xml"),
    );
    assert!(err.contains("log_format"), "{err}");
}
