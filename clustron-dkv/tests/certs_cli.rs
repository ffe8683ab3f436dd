//! `clustron-dkv certs` from the command line: what it refuses to do.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_clustron-dkv");

fn init(dir: &std::path::Path, force: bool) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(["certs", "init", "--out"]).arg(dir);
    if force {
        command.arg("--force");
    }
    command.output().unwrap()
}

#[test]
fn certs_init_refuses_to_overwrite_an_existing_ca_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let first = init(dir.path(), false);
    assert!(first.status.success(), "{first:?}");
    let key = std::fs::read(dir.path().join("ca.key")).unwrap();
    let cert = std::fs::read(dir.path().join("ca.pem")).unwrap();

    // A second init into the same folder would invalidate every certificate
    // the first CA signed: refused, naming the file and the way out.
    let second = init(dir.path(), false);
    assert!(!second.status.success(), "overwrote the CA: {second:?}");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("ca.key") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("ca.key")).unwrap(), key);
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), cert);

    // A lone ca.pem (the key kept elsewhere) is protected too.
    let lone = tempfile::tempdir().unwrap();
    std::fs::write(lone.path().join("ca.pem"), &cert).unwrap();
    assert!(!init(lone.path(), false).status.success());
    assert_eq!(std::fs::read(lone.path().join("ca.pem")).unwrap(), cert);

    // --force replaces both.
    let forced = init(dir.path(), true);
    assert!(forced.status.success(), "{forced:?}");
    assert_ne!(std::fs::read(dir.path().join("ca.key")).unwrap(), key);
    assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), cert);
}
