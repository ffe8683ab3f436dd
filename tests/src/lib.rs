//! Workspace integration, simulation and fault tests for Clustron.
//!
//! The library part holds helpers shared by the test files in `tests/tests/`:
//! the workspace layering rules, read from `cargo metadata`;
//! [`linearizability`], a checker for key-value histories recorded by clients
//! (simulated or real processes); [`procs`], which runs real node processes;
//! and the deterministic simulator ([`sim`]) with what runs on it:
//! membership, election, the replicated log ([`replication`]) and the whole
//! key-value server with clients ([`kv_sim`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod election;
pub mod events;
pub mod fuzz;
pub mod kv_sim;
pub mod linearizability;
pub mod local;
pub mod procs;
pub mod replication;
pub mod sim;
pub mod swim;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// The layers, lowest first. A crate may depend only on crates listed before
/// it; `clustron-client` is the exception that may only use the transport
/// (and, later, the DKV protocol types).
pub const LAYERS: &[&str] = &[
    "clustron-transport",
    "clustron-membership",
    "clustron-election",
    "clustron-events",
    "clustron-node",
    "clustron-log",
    "clustron-dkv",
];

/// The platform crates a product builds on: they inherit nothing from the
/// workspace (so a product can depend on them by path from inside its own
/// workspace), and they are all the examples may use.
pub const PLATFORM: &[&str] = &[
    "clustron-transport",
    "clustron-membership",
    "clustron-election",
    "clustron-events",
    "clustron-node",
    "clustron-log",
];

/// The examples crate: it may use the platform crates only, never DKV or
/// the test helpers, so each example shows what a new product needs.
pub const EXAMPLES: &str = "clustron-examples";

/// Crates above every layer: they may depend on anything; only tools may
/// depend on them (xtask runs the simulator's measurements).
pub const TOOLS: &[&str] = &["xtask", "clustron-tests"];

/// What `clustron-client` may depend on: the transport, and `clustron-dkv`
/// without its `server` feature (the protocol types only).
pub const CLIENT_MAY_USE: &[&str] = &["clustron-transport", "clustron-dkv"];

/// Suffix marking a dependency on `clustron-dkv` with its server compiled in.
pub const WITH_SERVER: &str = "[server]";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    // Invariant: this crate lives at `<root>/tests`.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Workspace members and, for each, the workspace members it depends on
/// (normal, dev and build dependencies alike).
pub fn workspace_edges() -> Result<BTreeMap<String, Vec<String>>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .context("cannot run cargo metadata")?;
    anyhow::ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let packages = metadata["packages"].as_array().context("no packages")?;
    let names: Vec<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    let mut edges = BTreeMap::new();
    for package in packages {
        let name = package["name"].as_str().context("package without name")?;
        let deps = package["dependencies"]
            .as_array()
            .context("no dependencies array")?
            .iter()
            .filter(|d| {
                d["name"]
                    .as_str()
                    .is_some_and(|d| names.iter().any(|n| n == d))
            })
            .filter_map(|d| {
                let name = d["name"].as_str()?;
                let server = d["uses_default_features"].as_bool() == Some(true)
                    || d["features"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|f| f.as_str() == Some("server")));
                Some(if name == "clustron-dkv" && server {
                    format!("{name}{WITH_SERVER}")
                } else {
                    name.to_owned()
                })
            })
            .collect();
        edges.insert(name.to_owned(), deps);
    }
    Ok(edges)
}

/// The workspace's binary `name` (`clustron-dkv`, `clustron`): from
/// `CLUSTRON_BIN_DIR` when set (`cargo xtask ci` points it at release
/// builds), else the one `cargo test --workspace` built beside the running
/// test, built here (once per test process) when the test runs alone.
pub fn binary(name: &str) -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    if let Some(dir) = std::env::var_os("CLUSTRON_BIN_DIR") {
        let path = std::path::Path::new(&dir).join(name);
        assert!(path.exists(), "CLUSTRON_BIN_DIR has no {name}");
        return path;
    }
    // Invariant: test executables live in target/<profile>/deps/.
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
        .expect("test executables live in target/<profile>/deps/");
    BUILD.call_once(|| {
        if !dir.join("clustron-dkv").exists() || !dir.join("clustron").exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args([
                    "build",
                    "-p",
                    "clustron-dkv",
                    "-p",
                    "clustron-client",
                    "--bins",
                ])
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "cannot build the binaries"
            );
        }
    });
    dir.join(name)
}

/// Every edge that breaks the layering, as "from -> to: why".
pub fn layering_violations(edges: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let level = |name: &str| LAYERS.iter().position(|l| *l == name);
    let mut violations = Vec::new();
    for (from, deps) in edges {
        for dep in deps {
            let to = dep.strip_suffix(WITH_SERVER).unwrap_or(dep);
            let why = if TOOLS.contains(&from.as_str()) {
                None
            } else if TOOLS.contains(&to) {
                Some("only a tool crate may depend on a tool crate")
            } else if from == EXAMPLES {
                (!PLATFORM.contains(&to)).then_some(
                    "the examples may use only the platform crates (no DKV, no test helpers)",
                )
            } else if from == "clustron-client" {
                (!CLIENT_MAY_USE.contains(&to) || dep.ends_with(WITH_SERVER))
                    .then_some("the client may use only the transport and DKV protocol types (no `server` feature)")
            } else {
                match (level(from), level(to)) {
                    (Some(a), Some(b)) if b < a => None,
                    (Some(_), Some(_)) => Some("a lower crate never names a higher one"),
                    (None, _) => Some("crate is not in the layer list (tests/src/lib.rs)"),
                    (_, None) => Some("dependency is not in the layer list"),
                }
            };
            if let Some(why) = why {
                violations.push(format!("{from} -> {dep}: {why}"));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn an_upward_edge_is_a_violation() {
        let bad = edges(&[("clustron-transport", &["clustron-membership"])]);
        assert_eq!(layering_violations(&bad).len(), 1);
        let bad = edges(&[("clustron-client", &["clustron-dkv[server]"])]);
        assert_eq!(layering_violations(&bad).len(), 1);
        let bad = edges(&[("clustron-client", &["clustron-membership"])]);
        assert_eq!(layering_violations(&bad).len(), 1);
        let bad = edges(&[("clustron-dkv", &["xtask"])]);
        assert_eq!(layering_violations(&bad).len(), 1);
        let bad = edges(&[("clustron-examples", &["clustron-dkv"])]);
        assert_eq!(layering_violations(&bad).len(), 1);
        let bad = edges(&[("clustron-examples", &["clustron-tests"])]);
        assert_eq!(layering_violations(&bad).len(), 1);
    }

    #[test]
    fn downward_and_tool_edges_are_fine() {
        let good = edges(&[
            (
                "clustron-election",
                &["clustron-transport", "clustron-membership"],
            ),
            (
                "xtask",
                &["clustron-dkv", "clustron-transport", "clustron-tests"],
            ),
            ("clustron-client", &["clustron-transport", "clustron-dkv"]),
            (
                "clustron-examples",
                &["clustron-node", "clustron-transport"],
            ),
            ("clustron-node", &["clustron-events", "clustron-election"]),
        ]);
        assert_eq!(layering_violations(&good), Vec::<String>::new());
    }
}
