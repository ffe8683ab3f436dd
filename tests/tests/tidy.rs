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

/// Files under `dir` (recursively), `target` and dot-folders left out.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_example_uses_the_dkv_product_or_the_test_helpers() {
    let mut found = Vec::new();
    files(&workspace_root().join("examples"), &mut found);
    assert!(
        found.iter().any(|f| f.ends_with("work_queue.rs")),
        "examples not found: {found:?}"
    );
    for file in found {
        let text = std::fs::read_to_string(&file).unwrap();
        for banned in [
            "clustron_dkv",
            "clustron-dkv",
            "clustron_tests",
            "clustron-tests",
        ] {
            assert!(
                !text.contains(banned),
                "{} names {banned}: examples may use only the platform crates",
                file.display()
            );
        }
    }
}

fn manifest(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap();
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every place in `value` where a key `workspace` is set, as dotted paths.
fn inherited(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
    if let toml::Value::Table(table) = value {
        for (key, value) in table {
            let path = format!("{prefix}.{key}");
            if key == "workspace" {
                out.push(path.clone());
            }
            inherited(&path, value, out);
        }
    }
}

#[test]
fn platform_crates_inherit_nothing_and_agree_with_the_workspace() {
    // Why: a product embedding the checkout inside its own workspace makes
    // these crates members of *its* workspace, where nothing of ours can be
    // inherited (README, "Build your own product on Clustron").
    let root = workspace_root();
    let workspace = manifest(&root.join("Cargo.toml"));
    let shared = &workspace["workspace"];
    for krate in clustron_tests::PLATFORM {
        let path = root.join(krate).join("Cargo.toml");
        let own = manifest(&path);
        let mut found = Vec::new();
        inherited("", &toml::Value::Table(own.clone()), &mut found);
        assert!(
            found.is_empty(),
            "{} inherits {found:?} from the workspace",
            path.display()
        );
        for field in ["version", "edition", "rust-version", "license"] {
            assert_eq!(
                own["package"].get(field),
                shared["package"].get(field),
                "{krate}: package.{field} differs from workspace.package.{field}"
            );
        }
        assert_eq!(
            own.get("lints"),
            shared.get("lints"),
            "{krate}: [lints] differ from [workspace.lints]"
        );
        for section in ["dependencies", "dev-dependencies"] {
            let Some(deps) = own.get(section).and_then(|d| d.as_table()) else {
                continue;
            };
            for (name, spec) in deps {
                let version = |spec: &toml::Value| match spec {
                    toml::Value::String(v) => Some(v.clone()),
                    other => other
                        .get("version")
                        .and_then(|v| v.as_str())
                        .map(String::from),
                };
                let no_defaults =
                    |spec: &toml::Value| spec.get("default-features") == Some(&false.into());
                if name.starts_with("clustron-") {
                    assert_eq!(
                        spec.get("path").and_then(|p| p.as_str()),
                        Some(format!("../{name}").as_str()),
                        "{krate}: {section}.{name} must be a sibling path"
                    );
                    assert_eq!(
                        version(spec).as_deref(),
                        shared["package"]["version"].as_str(),
                        "{krate}: {section}.{name} must name the workspace version"
                    );
                    continue;
                }
                let theirs = shared["dependencies"]
                    .get(name.as_str())
                    .unwrap_or_else(|| {
                        panic!("{krate}: {section}.{name} is not in [workspace.dependencies]")
                    });
                assert_eq!(
                    version(spec),
                    version(theirs),
                    "{krate}: {section}.{name} version differs from the workspace's"
                );
                assert_eq!(
                    no_defaults(spec),
                    no_defaults(theirs),
                    "{krate}: {section}.{name} default-features differs from the workspace's"
                );
            }
        }
    }
}
