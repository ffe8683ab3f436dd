//! Repository rules, enforced by `cargo test`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;

use clustron_tests::{layering_violations, workspace_edges, workspace_root};

#[test]
fn no_crate_depends_on_a_higher_layer() {
    let edges = workspace_edges().expect("cargo metadata");
    assert!(
        edges.contains_key("clustron-transport"),
        "metadata read: {edges:?}"
    );
    let violations = layering_violations(&edges);
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_doc_comment() {
    let mut files = Vec::new();
    rust_files(&workspace_root(), &mut files);
    assert!(files.len() > 5, "found only {files:?}");
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            !text.lines().next().is_some_and(|l| l.starts_with("//!"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:?}"
    );
}

#[test]
fn protocol_cores_do_not_use_tokio_or_the_clock() {
    // A core lives in `src/core.rs` or `src/core/` of a protocol crate.
    let mut files = Vec::new();
    rust_files(&workspace_root(), &mut files);
    let cores: Vec<_> = files
        .iter()
        .filter(|f| {
            let s = f.to_string_lossy();
            (s.contains("/src/core/") && !s.ends_with("/tests.rs")) || s.ends_with("/src/core.rs")
        })
        .collect();
    for core in cores {
        // Code only: a doc example drives the core as a user would, with
        // the real clock.
        let text: String = std::fs::read_to_string(core)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for banned in [
            "tokio",
            "Instant::now",
            "SystemTime::now",
            "thread_rng",
            "std::net::UdpSocket",
        ] {
            assert!(!text.contains(banned), "{} uses {banned}", core.display());
        }
    }
}
