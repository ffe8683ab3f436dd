//! Voter changes with real `clustron-dkv` processes, through the `clustron`
//! CLI as an operator runs them: three voters and a node started outside
//! the voter set, which joins as a learner and catches up; a readwrite
//! certificate may list the voters but not change them; the learner is
//! promoted, a voter removed, then the leader itself (it hands over, and
//! the next leader removes it); the cluster serves writes throughout, with
//! a voter of the new set down, and after `kill -9` and restart of every
//! node the decided set still holds (it was persisted before it counted).
//! Conditions are awaited with deadlines.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use clustron_tests::procs::{
    certs, clustron, dkv, eventually, free_port_tcp, free_port_udp, json, kv_get, kv_put, launch,
    leader_of, start,
};

/// `clustron voters --json` through `endpoints`: (name, role, lag) rows.
fn voters(dir: &Path, endpoints: &[SocketAddr]) -> Option<Vec<(String, String, u64)>> {
    let rows = json({
        let mut c = clustron(dir, endpoints);
        c.args(["voters", "--json"]).stderr(Stdio::null());
        c
    })?;
    rows.as_array()?
        .iter()
        .map(|r| {
            assert!(r["applied_index"].is_u64(), "no applied_index in {r}");
            Some((
                r["name"].as_str()?.to_owned(),
                r["role"].as_str()?.to_owned(),
                r["lag"].as_u64()?,
            ))
        })
        .collect()
}

/// The names with `role` in `rows`, sorted.
fn with_role(rows: &[(String, String, u64)], role: &str) -> Vec<String> {
    let mut names: Vec<String> = rows
        .iter()
        .filter(|(_, r, _)| r == role)
        .map(|(n, _, _)| n.clone())
        .collect();
    names.sort();
    names
}

/// `clustron voters ARGS --json` with the admin certificate.
fn change(dir: &Path, endpoints: &[SocketAddr], args: &[&str]) -> Output {
    clustron(dir, endpoints)
        .arg("voters")
        .args(args)
        .arg("--json")
        .output()
        .unwrap()
}

fn rows_of(output: &Output) -> Vec<(String, String, u64)> {
    assert!(
        output.status.success(),
        "clustron voters failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["role"].as_str().unwrap().to_owned(),
                r["lag"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_learner_is_promoted_voters_are_removed_and_the_cluster_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    certs(dir, &["n1", "n2", "n3", "n4"]);
    let status = dkv()
        .args(["certs", "client", "rw", "--role", "readwrite", "--ca"])
        .arg(dir)
        .arg("--out")
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "clustron-dkv certs client rw");

    tracing::info!("three voters (--voters n1,n2,n3) and n4, started outside the set");
    let (n1, seed) = start(dir, "n1", 300, None);
    let (n2, n2_addr) = start(dir, "n2", 200, Some(seed));
    let (n3, n3_addr) = start(dir, "n3", 100, Some(seed));
    let n4_admin = SocketAddr::from(([127, 0, 0, 1], free_port_tcp()));
    let n4_addr = SocketAddr::from(([127, 0, 0, 1], free_port_udp()));
    let (n4, _) = launch(None, dir, "n4", 50, Some(seed), n4_addr, n4_admin);
    let endpoints = [seed, n2_addr, n3_addr, n4_addr];
    eventually("all four are ready with leader n1", || {
        [&n1, &n2, &n3, &n4]
            .iter()
            .all(|p| leader_of(p.admin).is_some_and(|(name, _)| name == "n1"))
    });
    for i in 0..20 {
        assert!(kv_put(dir, &endpoints, &format!("k{i}"), "before"));
    }

    tracing::info!("`clustron voters` shows three voters and the learner n4, caught up");
    eventually("n4 is a learner with no lag", || {
        voters(dir, &endpoints).is_some_and(|rows| {
            with_role(&rows, "voter") == names(&["n1", "n2", "n3"])
                && with_role(&rows, "learner") == names(&["n4"])
                && rows.iter().all(|(_, _, lag)| *lag == 0)
        })
    });
    eventually("the learner n4 applied the writes", || {
        kv_get(dir, &[n4_addr], "k19", true) == Some(Some("before".into()))
    });

    tracing::info!("a readwrite certificate lists the voters but may not change them");
    let rw = |args: &[&str]| {
        let list: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
        Command::new(clustron_tests::binary("clustron"))
            .args(["--endpoints", &list.join(",")])
            .arg("--ca-file")
            .arg(dir.join("ca.pem"))
            .arg("--cert-file")
            .arg(dir.join("rw.pem"))
            .arg("--key-file")
            .arg(dir.join("rw.key"))
            .arg("voters")
            .args(args)
            .output()
            .unwrap()
    };
    assert!(rw(&["--json"]).status.success(), "readwrite cannot list");
    let refused = rw(&["add", "n4"]);
    assert!(
        !refused.status.success(),
        "a readwrite client added a voter"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("role readwrite may not change the voters"),
        "unclear refusal: {stderr}"
    );

    tracing::info!("unsafe or impossible changes are refused, saying why");
    let unknown = change(dir, &endpoints, &["add", "n9"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("n9 is not a member"));
    let already = change(dir, &endpoints, &["add", "n2"]);
    assert!(!already.status.success());
    assert!(String::from_utf8_lossy(&already.stderr).contains("n2 is already a voter"));

    tracing::info!("the learner n4 is promoted: four voters");
    let rows = rows_of(&change(dir, &endpoints, &["add", "n4"]));
    assert_eq!(with_role(&rows, "voter"), names(&["n1", "n2", "n3", "n4"]));
    assert!(kv_put(dir, &endpoints, "after-add", "yes"));

    tracing::info!("voter n3 is removed; it stays a learner while alive");
    let rows = rows_of(&change(dir, &endpoints, &["remove", "n3"]));
    assert_eq!(with_role(&rows, "voter"), names(&["n1", "n2", "n4"]));
    eventually("n3 is listed as a learner", || {
        voters(dir, &endpoints).is_some_and(|rows| with_role(&rows, "learner") == names(&["n3"]))
    });
    drop(n3);

    tracing::info!("the leader n1 is removed: it hands over, the next leader removes it");
    let rows = rows_of(&change(dir, &endpoints, &["remove", "n1"]));
    assert_eq!(with_role(&rows, "voter"), names(&["n2", "n4"]));
    eventually("n2 leads", || {
        leader_of(n2.admin).is_some_and(|(name, _)| name == "n2")
    });
    assert!(kv_put(dir, &endpoints, "after-remove", "yes"));
    assert_eq!(
        kv_get(dir, &endpoints, "after-add", false),
        Some(Some("yes".into()))
    );
    drop((n1, n2, n4));

    tracing::info!("kill -9 of every node, restart with the old --voters: the decided set holds");
    let (_n1, _) = launch(None, dir, "n1", 300, Some(n2_addr), seed, free_admin());
    let (_n2, _) = launch(None, dir, "n2", 200, Some(seed), n2_addr, free_admin());
    let (_n4, _) = launch(None, dir, "n4", 50, Some(seed), n4_addr, n4_admin);
    let live = [seed, n2_addr, n4_addr];
    eventually("the restarted cluster lists voters n2 and n4", || {
        voters(dir, &live).is_some_and(|rows| with_role(&rows, "voter") == names(&["n2", "n4"]))
    });
    assert!(kv_put(dir, &live, "after-restart", "yes"));
    for key in ["k0", "after-add", "after-remove", "after-restart"] {
        assert!(
            kv_get(dir, &live, key, false).is_some_and(|v| v.is_some()),
            "{key} lost"
        );
    }
}

fn free_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port_tcp()))
}
