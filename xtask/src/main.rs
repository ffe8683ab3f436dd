//! Repository chores, run as `cargo xtask <command>`:
//!
//! - `cluster [--nodes N]`: a local cluster on 127.0.0.1 in this process, with
//!   generated certificates and the default configuration; prints the members
//!   and every change until Ctrl-C, then leaves gracefully.
//! - `ci`: `cargo fmt --check`, `cargo clippy --workspace --all-targets -D warnings`
//!   (and the transport and `clustron-node` without default features),
//!   release builds of `clustron-dkv` and `clustron`, then the whole test
//!   suite, whose process tests run those release binaries
//!   (`CLUSTRON_BIN_DIR`). This is what `.ci/run` runs.
//! - `bench [transport|membership|election|node|kv|watch]`: builds
//!   `clustron-bench` and `clustron-dkv` in release mode and runs the suites;
//!   each prints a table (`watch` only when named: it takes minutes).
//! - `certs DIR [--nodes N]`: writes a CA, N node certificates and an admin client
//!   certificate into DIR, for trying things by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use clustron_transport::{CertRequest, CertificateAuthority, ClientRole};

mod cluster;
mod node_bench;
mod watch_bench;

#[derive(Parser)]
#[command(name = "xtask", about = "Clustron repository chores")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A local cluster on 127.0.0.1 until Ctrl-C (default configuration).
    Cluster {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Where the CA and node certificates live (created on first use).
        #[arg(long, default_value = "target/dev-cluster")]
        dir: PathBuf,
        /// UDP port of the first node; the others follow. 0 picks free ports.
        #[arg(long, default_value_t = 7401)]
        port: u16,
    },
    /// Format check, clippy with warnings denied, and every test.
    Ci,
    /// Release-mode benchmarks; prints a table per suite.
    Bench {
        /// Which suites: `transport`, `membership`, `election`, `node`, `kv`
        /// (default: all of these), `watch`.
        suites: Vec<String>,
    },
    /// Writes a CA, node certificates n1..nN and an admin client certificate.
    Certs {
        /// Output directory.
        dir: PathBuf,
        /// How many node certificates.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Cluster { nodes, dir, port } => cluster::run(nodes, &dir, port),
        Cmd::Ci => ci(),
        Cmd::Bench { suites } => bench(&suites),
        Cmd::Certs { dir, nodes } => certs(&dir, nodes),
    }
}

fn root() -> PathBuf {
    // Invariant: xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where cargo puts release builds: `CARGO_TARGET_DIR` if set.
fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root().join("target"), PathBuf::from)
        .join("release")
}

fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    run_cargo(args, None)
}

/// Runs cargo from the workspace root, with `CLUSTRON_BIN_DIR` if given.
fn run_cargo(args: &[&str], bin_dir: Option<&Path>) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    if let Some(dir) = bin_dir {
        command.env("CLUSTRON_BIN_DIR", dir);
    }
    let status = command
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The features a product may turn off still compile: a node that
    // loads PEM files only (no rcgen), membership without the election or
    // the event bus.
    cargo(&[
        "clippy",
        "-p",
        "clustron-transport",
        "-p",
        "clustron-node",
        "--no-default-features",
        "--",
        "-D",
        "warnings",
    ])?;
    // The process tests run release binaries, as users do.
    cargo(&[
        "build",
        "--release",
        "-p",
        "clustron-dkv",
        "-p",
        "clustron-client",
        "--bins",
    ])?;
    let bins = release_dir();
    eprintln!(
        "$ CLUSTRON_BIN_DIR={} cargo test --workspace --no-fail-fast",
        bins.display()
    );
    // Every failing test binary is reported, not only the first.
    run_cargo(&["test", "--workspace", "--no-fail-fast"], Some(&bins))
}

const SUITES: &[&str] = &["transport", "membership", "election", "node", "kv"];

/// Suites run only when named.
const EXTRA_SUITES: &[&str] = &["watch"];

fn bench(suites: &[String]) -> Result<()> {
    let suites: Vec<&str> = if suites.is_empty() {
        SUITES.to_vec()
    } else {
        suites.iter().map(String::as_str).collect()
    };
    for suite in &suites {
        if !SUITES.contains(suite) && !EXTRA_SUITES.contains(suite) {
            bail!(
                "unknown bench suite {suite:?}; known: {}, {}",
                SUITES.join(", "),
                EXTRA_SUITES.join(", ")
            );
        }
    }
    cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "xtask",
        "--bin",
        "clustron-bench",
        "-p",
        "clustron-dkv",
        "--bin",
        "clustron-dkv",
    ])?;
    let binary = release_dir().join("clustron-bench");
    let dkv = release_dir().join("clustron-dkv");
    for suite in suites {
        if suite == "node" {
            node_bench::run(&dkv)?;
            continue;
        }
        if suite == "kv" {
            // In the release benchmark binary: the load generator shares
            // the cores with the nodes, so it must not be a debug build.
            let status = Command::new(&binary)
                .arg("kv")
                .arg(&dkv)
                .status()
                .with_context(|| format!("cannot run {}", binary.display()))?;
            if !status.success() {
                bail!("bench kv failed ({status})");
            }
            continue;
        }
        if suite == "watch" {
            watch_bench::run(&dkv)?;
            continue;
        }
        let status = Command::new(&binary)
            .arg(suite)
            .status()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        if !status.success() {
            bail!("bench {suite} failed ({status})");
        }
    }
    Ok(())
}

fn certs(dir: &Path, nodes: usize) -> Result<()> {
    let ca = CertificateAuthority::generate("Clustron dev CA")?;
    ca.save(dir)?;
    for i in 1..=nodes {
        let name = format!("n{i}");
        let request = CertRequest::node(&name)?.ip("127.0.0.1".parse()?);
        ca.issue(&request)?.save(dir, &name)?;
    }
    ca.issue(&CertRequest::client("admin", ClientRole::Admin)?)?
        .save(dir, "admin")?;
    println!(
        "wrote ca.pem, ca.key, n1..n{nodes}.pem/.key and admin.pem/.key to {}",
        dir.display()
    );
    Ok(())
}
