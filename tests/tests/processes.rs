//! Real `clustron-dkv` processes, looked at through the admin HTTP port and
//! the `clustron` CLI. On 127.0.0.1: five nodes (three voters) form a
//! cluster and elect the highest priority; a user event published on one
//! node reaches subscribers on all the others; `kill -9` of a learner and
//! then of the leader is seen `dead` by every node and by a watching client,
//! and the second gives a new leader with a higher epoch; a node with a
//! certificate from another CA cannot join and says why; SIGTERM is seen as
//! `left`; a leader stopped past its lease is replaced and comes back as a
//! follower; a restarted node rejoins. In network namespaces the test
//! creates and removes: a leader cut off from the majority steps down, the
//! majority elects, and the cluster heals. A node that cannot do its job
//! steps aside: two of three voters elect (and after a full restart with
//! one down); a node whose store cannot open exits non-zero; a leader whose
//! log's disk (or whole disk) fills hands over and clients move on, and it
//! says why; a node that lost its log's tail does not vote until it caught
//! up, and nothing acknowledged is lost. Conditions are awaited with
//! deadlines.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clustron_tests::procs::{
    certs, certs_for, clustron, eventually, free_port_tcp, free_port_udp, get, holds_lease,
    incarnation, json, kv_get, kv_put, launch, leader_of, metric, signal, spawn_line_reader, start,
    Lab, Proc, DEADLINE,
};

#[test]
fn five_processes_elect_n1_survive_kill_9_of_the_leader_and_see_sigterm_as_left() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["n1", "n2", "n3", "n4", "n5"]);
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, n2_addr) = start(dir.path(), "n2", 200, Some(seed));
    let (mut n3, n3_addr) = start(dir.path(), "n3", 100, Some(seed));
    // Two learners: members that follow but never vote.
    let (n4, n4_addr) = start(dir.path(), "n4", 0, Some(seed));
    let (n5, n5_addr) = start(dir.path(), "n5", 0, Some(seed));
    let endpoints = [seed, n2_addr, n3_addr];

    // Knowing the leader does not mean knowing every member yet: gossip may
    // still be carrying the learners to the voters, so wait for both.
    eventually(
        "all five are ready with leader n1 and see five alive",
        || {
            [&n1, &n2, &n3, &n4, &n5].iter().all(|p| {
                leader_of(p.admin).is_some_and(|(name, _)| name == "n1")
                    && metric(p.admin, "clustron_members{state=\"alive\"}") == Some(5)
            })
        },
    );
    let (_, first_epoch) = leader_of(n2.admin).unwrap();
    eventually("n1 reports that it holds the lease", || {
        metric(n1.admin, "clustron_is_leader") == Some(1)
    });
    assert_eq!(get(n1.admin, "/healthz").map(|r| r.0), Some(200));

    // The CLI sees the same.
    let members = json({
        let mut c = clustron(dir.path(), &endpoints);
        c.args(["members", "--json"]);
        c
    })
    .expect("clustron members --json");
    let members = members.as_array().unwrap();
    assert_eq!(members.len(), 5);
    for m in members {
        assert_eq!(m["state"], "alive");
        assert_eq!(m["voter"], m["name"] != "n4" && m["name"] != "n5");
        assert_eq!(m["leader"], m["name"] == "n1");
    }

    // A user event published through n2 reaches subscribers on every other
    // node. Subscribing is asynchronous, so the publisher repeats (a new
    // sequence number each time) until every subscriber has printed one.
    let mut subscribers = Vec::new();
    for addr in [seed, n3_addr, n4_addr, n5_addr] {
        let mut child = clustron(dir.path(), &[addr])
            .args(["events", "subscribe", "deploys"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = spawn_line_reader(child.stdout.take().unwrap());
        subscribers.push((child, lines, false));
    }
    eventually("the event reaches subscribers on n1, n3, n4 and n5", || {
        let published = clustron(dir.path(), &[n2_addr])
            .args(["events", "publish", "deploys", "v42"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(published.success());
        for (_, lines, got) in &mut subscribers {
            while let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
                // "TOPIC ORIGIN#SEQ PAYLOAD", published on n2.
                assert!(line.starts_with("deploys n2#"), "unexpected line {line:?}");
                assert!(line.ends_with(" v42"), "unexpected line {line:?}");
                *got = true;
            }
        }
        subscribers.iter().all(|(_, _, got)| *got)
    });
    for (mut child, _, _) in subscribers {
        let _ = child.kill();
        let _ = child.wait();
    }

    // The key-value store: a write through a follower is redirected to the
    // leader; a linearizable read sees it at once; a learner applies it.
    assert!(kv_put(dir.path(), &[n3_addr], "config/mode", "blue"));
    assert_eq!(
        kv_get(dir.path(), &endpoints, "config/mode", false),
        Some(Some("blue".into()))
    );
    eventually("the learner n4 applied the write", || {
        kv_get(dir.path(), &[n4_addr], "config/mode", true) == Some(Some("blue".into()))
    });
    // And says so on its admin port.
    assert!(metric(n4.admin, "clustron_kv_revision").is_some_and(|r| r >= 1));
    assert!(metric(n4.admin, "clustron_kv_applied_index").is_some_and(|i| i >= 2));
    assert!(metric(n1.admin, "clustron_kv_wal_syncs_total").is_some_and(|n| n >= 1));
    // Three clients contend for one lock: the critical sections never
    // overlap, and the fencing tokens grow from holder to holder.
    let journal = dir.path().join("journal");
    let section = format!(
        "echo \"start $CLUSTRON_LOCK_TOKEN\" >> {0}; sleep 0.2; echo \"end $CLUSTRON_LOCK_TOKEN\" >> {0}",
        journal.display()
    );
    let lockers: Vec<Child> = [seed, n2_addr, n3_addr]
        .iter()
        .map(|addr| {
            clustron(dir.path(), &[*addr])
                .args(["kv", "lock", "deploy", "--", "sh", "-c", &section])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut locker in lockers {
        assert!(locker.wait().unwrap().success(), "a locker failed");
    }
    let lines: Vec<String> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    let mut last_token = 0;
    for pair in lines.chunks(2) {
        let token: u64 = pair[0].strip_prefix("start ").unwrap().parse().unwrap();
        assert_eq!(
            pair[1],
            format!("end {token}"),
            "overlapping holders: {lines:?}"
        );
        assert!(token > last_token, "fencing tokens did not grow: {lines:?}");
        last_token = token;
    }

    // Leader election among clients: the first candidate leads until it
    // resigns, while the second waits its turn.
    let leader_of_election = || -> Option<String> {
        let output = clustron(dir.path(), &endpoints)
            .args(["kv", "leader", "scheduler"])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let candidate = |addr: SocketAddr, value: &str, release: &Path| {
        let hold = format!("while [ ! -e {} ]; do sleep 0.05; done", release.display());
        clustron(dir.path(), &[addr])
            .args([
                "kv",
                "campaign",
                "scheduler",
                value,
                "--",
                "sh",
                "-c",
                &hold,
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (release_a, release_b) = (dir.path().join("release-a"), dir.path().join("release-b"));
    let mut a = candidate(seed, "node-a", &release_a);
    eventually("node-a leads", || {
        leader_of_election().as_deref() == Some("node-a")
    });
    let mut b = candidate(n2_addr, "node-b", &release_b);
    eventually("node-b is queued", || {
        json({
            let mut c = clustron(dir.path(), &endpoints);
            c.args(["kv", "get", "_election/scheduler/", "--prefix", "--json"]);
            c
        })
        .is_some_and(|rows| rows.as_array().is_some_and(|r| r.len() == 2))
    });
    assert_eq!(leader_of_election().as_deref(), Some("node-a"));
    std::fs::write(&release_a, b"").unwrap();
    assert!(a.wait().unwrap().success());
    eventually("node-b leads after node-a resigned", || {
        leader_of_election().as_deref() == Some("node-b")
    });
    std::fs::write(&release_b, b"").unwrap();
    assert!(b.wait().unwrap().success());
    assert_eq!(leader_of_election().as_deref(), Some(""));

    // A key watcher through n3, which outlives the leader.
    let mut key_watcher = clustron(dir.path(), &[n3_addr, n2_addr])
        .args(["kv", "watch", "config/", "--prefix"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let key_lines = spawn_line_reader(key_watcher.stdout.take().unwrap());
    eventually("the key watcher sees a new write", || {
        assert!(kv_put(dir.path(), &endpoints, "config/tick", "1"));
        key_lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|line| line.starts_with("PUT config/tick=1"))
    });

    // A client watching the topology through n1, which is about to die.
    let mut watcher = clustron(dir.path(), &endpoints)
        .args(["watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let watch_lines = spawn_line_reader(watcher.stdout.take().unwrap());
    assert!(watch_lines
        .recv_timeout(DEADLINE)
        .unwrap()
        .contains("snapshot"));

    // kill -9 of a non-leader.
    drop(n5);
    eventually("n1..n4 see n5 dead", || {
        [&n1, &n2, &n3, &n4]
            .iter()
            .all(|p| metric(p.admin, "clustron_members{state=\"dead\"}") == Some(1))
    });
    eventually("the watching client sees n5 dead", || {
        watch_lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|line| line.contains("\"member\":\"n5\"") && line.contains("\"dead\""))
    });
    assert!(
        [&n1, &n2, &n3, &n4]
            .iter()
            .all(|p| leader_of(p.admin) == Some(("n1".into(), first_epoch))),
        "losing a learner changed the leader"
    );

    // kill -9 of the leader.
    drop(n1);
    eventually("n2..n4 follow n2 with a higher epoch", || {
        [&n2, &n3, &n4].iter().all(|p| {
            leader_of(p.admin).is_some_and(|(name, epoch)| name == "n2" && epoch > first_epoch)
        })
    });
    eventually("n2..n4 see n1 and n5 dead", || {
        [&n2, &n3, &n4]
            .iter()
            .all(|p| metric(p.admin, "clustron_members{state=\"dead\"}") == Some(2))
    });
    eventually("the watching client sees n1 dead", || {
        watch_lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|line| {
                // A delta, or the fresh snapshot from the node it failed over to.
                (line.contains("\"member\":\"n1\"") && line.contains("\"dead\""))
                    || line.contains("{\"name\":\"n1\",\"state\":\"dead\"}")
            })
    });
    let _ = watcher.kill();
    let _ = watcher.wait();
    // The store survived its leader: the value is there, a write goes to n2,
    // and the key watcher saw it without a gap.
    assert_eq!(
        kv_get(dir.path(), &endpoints, "config/mode", false),
        Some(Some("blue".into()))
    );
    assert!(kv_put(dir.path(), &endpoints, "config/mode", "green"));
    eventually("the key watcher sees the write after the failover", || {
        key_lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|line| line.starts_with("PUT config/mode=green"))
    });
    let _ = key_watcher.kill();
    let _ = key_watcher.wait();
    eventually("n3 forgets the watcher of the killed client", || {
        metric(n3.admin, "clustron_kv_watchers") == Some(0)
    });
    let status = json({
        let mut c = clustron(dir.path(), &endpoints);
        c.args(["status", "--json"]);
        c
    })
    .expect("clustron status --json");
    assert_eq!(status["leader"], "n2");
    assert_eq!(status["members"]["dead"], 2);

    // A node with a certificate from another CA cannot join, and says why.
    let foreign = tempfile::tempdir().unwrap();
    certs(foreign.path(), &["n4"]);
    let (mut intruder, _) = start(foreign.path(), "n4", 0, Some(n2_addr));
    let exited = intruder.child.wait().unwrap();
    assert!(
        !exited.success(),
        "a node with a foreign certificate joined"
    );
    let stderr = std::fs::read_to_string(foreign.path().join("n4.log")).unwrap();
    assert!(
        stderr.contains("not signed by this cluster's CA") || stderr.contains("refused"),
        "the intruder did not say why: {stderr}"
    );

    // SIGTERM of n3: a graceful leave, exit status 0.
    signal(&n3.child, "-TERM");
    let exited = n3.child.wait().unwrap();
    assert!(exited.success(), "SIGTERM exit status: {exited}");
    eventually("n2 sees n3 left", || {
        metric(n2.admin, "clustron_members{state=\"left\"}") == Some(1)
    });
}

#[test]
fn a_stopped_leader_is_replaced_and_comes_back_as_a_follower_and_restarts_lose_no_write() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["n1", "n2", "n3"]);
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, n2_addr) = start(dir.path(), "n2", 200, Some(seed));
    let n3_listen = SocketAddr::from(([127, 0, 0, 1], free_port_udp()));
    let n3_admin = SocketAddr::from(([127, 0, 0, 1], free_port_tcp()));
    let (n3, _) = launch(None, dir.path(), "n3", 100, Some(seed), n3_listen, n3_admin);
    eventually("all three follow n1", || {
        [&n1, &n2, &n3]
            .iter()
            .all(|p| leader_of(p.admin).is_some_and(|(name, _)| name == "n1"))
    });
    let (_, first_epoch) = leader_of(n2.admin).unwrap();

    // SIGSTOP of the leader for longer than its lease.
    signal(&n1.child, "-STOP");
    eventually("n2 and n3 elect n2", || {
        [&n2, &n3].iter().all(|p| {
            leader_of(p.admin).is_some_and(|(name, epoch)| name == "n2" && epoch > first_epoch)
        })
    });
    signal(&n1.child, "-CONT");
    // Its first word after waking: not a leader (its lease ran out while
    // stopped), and it follows n2 until it takes over again by handover.
    eventually("n1 answers again", || get(n1.admin, "/healthz").is_some());
    assert_eq!(
        metric(n1.admin, "clustron_is_leader"),
        Some(0),
        "a woken leader still claimed its lease"
    );
    eventually("n1 follows a newer leader", || {
        leader_of(n1.admin).is_some_and(|(_, epoch)| epoch > first_epoch)
    });

    // kill -9 of n3, then a restart under its name, port and data.
    let endpoints = [seed, n2_addr];
    assert!(kv_put(dir.path(), &endpoints, "durable/before", "1"));
    let (_, before) = incarnation(dir.path(), &endpoints, "n3").unwrap();
    drop(n3);
    eventually("n2 sees n3 dead", || {
        incarnation(dir.path(), &endpoints, "n3").is_some_and(|(state, _)| state == "dead")
    });
    // Written while n3 is down: it must catch up.
    assert!(kv_put(dir.path(), &endpoints, "durable/while-down", "2"));
    let (n3, _) = launch(None, dir.path(), "n3", 100, Some(seed), n3_listen, n3_admin);
    eventually("n3 is alive again with a higher incarnation", || {
        incarnation(dir.path(), &endpoints, "n3")
            .is_some_and(|(state, inc)| state == "alive" && inc > before)
    });
    eventually(
        "the restarted n3 has what was written before and while it was down",
        || {
            kv_get(dir.path(), &[n3_listen], "durable/before", true) == Some(Some("1".into()))
                && kv_get(dir.path(), &[n3_listen], "durable/while-down", true)
                    == Some(Some("2".into()))
        },
    );

    // kill -9 of every node at once, then a restart of all: every
    // acknowledged write comes back from the write-ahead logs.
    assert!(kv_put(dir.path(), &endpoints, "durable/last", "3"));
    let (n1_admin, n2_admin) = (n1.admin, n2.admin);
    drop((n1, n2, n3));
    let (_n1, _) = launch(None, dir.path(), "n1", 300, None, seed, n1_admin);
    let (_n2, _) = launch(None, dir.path(), "n2", 200, Some(seed), n2_addr, n2_admin);
    let (_n3, _) = launch(None, dir.path(), "n3", 100, Some(seed), n3_listen, n3_admin);
    let all = [seed, n2_addr, n3_listen];
    eventually(
        "the restarted cluster serves every acknowledged write",
        || {
            ["before", "while-down", "last"]
                .iter()
                .zip(["1", "2", "3"])
                .all(|(key, value)| {
                    kv_get(dir.path(), &all, &format!("durable/{key}"), false)
                        == Some(Some(value.into()))
                })
        },
    );
}

#[test]
fn a_partitioned_leader_steps_down_the_majority_elects_and_the_cluster_heals() {
    let Some(lab) = Lab::create(3) else {
        eprintln!("skipped: network namespaces need root (CI runs as root)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let names = ["n1", "n2", "n3"];
    let ips: Vec<IpAddr> = (1..=3).map(|i| lab.addr(i)).collect();
    certs_for(dir.path(), &names, &ips);
    // Each node has its own address, so all use the same ports.
    let listen = |i: usize| SocketAddr::new(ips[i - 1], 7000);
    let admin = |i: usize| SocketAddr::new(ips[i - 1], 8000);
    let seed = listen(1);
    let nodes: Vec<Proc> = [300, 200, 100]
        .into_iter()
        .enumerate()
        .map(|(k, priority)| {
            let i = k + 1;
            let seed = (i != 1).then_some(seed);
            let ns = lab.ns(i);
            launch(
                Some(&ns),
                dir.path(),
                names[k],
                priority,
                seed,
                listen(i),
                admin(i),
            )
            .0
        })
        .collect();
    let [n1, n2, n3] = [&nodes[0], &nodes[1], &nodes[2]];
    eventually("all three follow n1", || {
        nodes
            .iter()
            .all(|p| leader_of(p.admin).is_some_and(|(name, _)| name == "n1"))
    });
    let (_, first_epoch) = leader_of(n2.admin).unwrap();

    // Never two lease holders at once: n1 holds it before and after a look
    // at n2 only if both held it at the same moment.
    let one_leader = || {
        let before = holds_lease(n1.admin);
        let other = holds_lease(n2.admin) || holds_lease(n3.admin);
        let after = holds_lease(n1.admin);
        assert!(!(before && other && after), "two nodes held the lease");
    };

    // Partition {n1} | {n2, n3}: the leader is the minority.
    lab.cut(1, 2);
    lab.cut(1, 3);
    eventually("n2 and n3 elect n2 with a higher epoch", || {
        one_leader();
        [n2, n3].iter().all(|p| {
            leader_of(p.admin).is_some_and(|(name, epoch)| name == "n2" && epoch > first_epoch)
        })
    });
    eventually("n1, alone, knows no leader and holds no lease", || {
        one_leader();
        get(n1.admin, "/readyz").is_some_and(|(status, _)| status == 503) && !holds_lease(n1.admin)
    });
    // A client on the minority side is told so.
    let status = json({
        let mut c = clustron(dir.path(), &[listen(1)]);
        c.args(["status", "--json"]);
        c
    })
    .expect("clustron status --json through n1");
    assert_eq!(status["leader"], serde_json::Value::Null, "{status}");
    eventually("both sides see the other dead", || {
        metric(n1.admin, "clustron_members{state=\"dead\"}") == Some(2)
            && [n2, n3]
                .iter()
                .all(|p| metric(p.admin, "clustron_members{state=\"dead\"}") == Some(1))
    });
    assert!(!holds_lease(n1.admin), "the minority side took a lease");
    // The majority side writes; the minority side cannot.
    assert!(kv_put(dir.path(), &[listen(2)], "partition", "majority"));
    let minority = clustron(dir.path(), &[listen(1)])
        .args(["--timeout", "2", "kv", "put", "partition", "minority"])
        .output()
        .unwrap();
    assert!(!minority.status.success(), "the minority side took a write");

    // Heal: one leader, known to all, and every member alive in every view.
    lab.heal(1, 2);
    lab.heal(1, 3);
    eventually("the cluster heals", || {
        one_leader();
        let views: Vec<_> = nodes.iter().map(|p| leader_of(p.admin)).collect();
        views[0].is_some()
            && views.iter().all(|v| *v == views[0])
            && nodes
                .iter()
                .all(|p| metric(p.admin, "clustron_members{state=\"alive\"}") == Some(3))
    });
    let (_, healed_epoch) = leader_of(n1.admin).unwrap();
    assert!(healed_epoch > first_epoch);
    // n1 caught up with the majority's write, and only that one.
    eventually("n1 applied the majority's write", || {
        kv_get(dir.path(), &[listen(1)], "partition", true) == Some(Some("majority".into()))
    });
}

// ----- a node that cannot do its job steps aside (issue 10) ----------------

/// Whether this process runs as root (mounts, network namespaces).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}

/// A tmpfs mounted at a path (root only), lazily unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs with `options` at `path` (created); `None` unless root.
    fn mount(path: &Path, options: &str) -> Option<Tmpfs> {
        if !is_root() {
            return None;
        }
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs at {}", path.display());
        Some(Tmpfs(path.to_owned()))
    }

    /// Fills it up: the next write that needs a new page fails (ENOSPC).
    fn fill(&self) {
        let mut file = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&[0xa5]).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The write-ahead log segments of node `name`, oldest first.
fn wal_segments(dir: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join(name).join("kv").join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

fn follow_all(nodes: &[&Proc], leader: &str) -> bool {
    nodes
        .iter()
        .all(|p| leader_of(p.admin).is_some_and(|(name, _)| name == leader))
}

/// `/readyz` answers 503 with a body containing `why`.
fn not_ready_because(admin: SocketAddr, why: &str) -> bool {
    get(admin, "/readyz").is_some_and(|(status, body)| status == 503 && body.contains(why))
}

#[test]
fn two_of_three_voters_elect_and_a_full_restart_with_one_voter_down_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["n1", "n2", "n3"]);
    // Voters n1, n2, n3; n3 is not started yet.
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, n2_addr) = start(dir.path(), "n2", 200, Some(seed));
    eventually("n1 and n2 elect n1 while n3 was never started", || {
        follow_all(&[&n1, &n2], "n1")
    });
    assert!(kv_put(dir.path(), &[seed, n2_addr], "majority/first", "1"));
    let (n3, n3_addr) = start(dir.path(), "n3", 100, Some(seed));
    eventually("the late n3 follows n1 and has the write", || {
        follow_all(&[&n3], "n1")
            && kv_get(dir.path(), &[n3_addr], "majority/first", true) == Some(Some("1".into()))
    });

    // Everything stops; n2 and n3 come back, n1 stays down.
    let (n2_admin, n3_admin) = (n2.admin, n3.admin);
    drop((n1, n2, n3));
    let (n2, _) = launch(None, dir.path(), "n2", 200, None, n2_addr, n2_admin);
    let (n3, _) = launch(
        None,
        dir.path(),
        "n3",
        100,
        Some(n2_addr),
        n3_addr,
        n3_admin,
    );
    eventually("n2 and n3 elect n2 with n1 down", || {
        follow_all(&[&n2, &n3], "n2")
    });
    let both = [n2_addr, n3_addr];
    assert_eq!(
        kv_get(dir.path(), &both, "majority/first", false),
        Some(Some("1".into()))
    );
    assert!(kv_put(dir.path(), &both, "majority/second", "2"));
}

#[test]
fn a_node_whose_store_cannot_open_exits_non_zero_and_the_others_elect() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["n1", "n2", "n3"]);
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, n2_addr) = start(dir.path(), "n2", 200, Some(seed));
    let (n3, n3_addr) = start(dir.path(), "n3", 100, Some(seed));
    eventually("all three follow n1", || follow_all(&[&n1, &n2, &n3], "n1"));
    for i in 0..5 {
        assert!(kv_put(dir.path(), &[seed], &format!("k{i}"), "v"));
    }
    let n1_admin = n1.admin;
    drop(n1);

    // One byte flipped in n1's first record, with valid records after it:
    // damage to data that was durable, not a torn tail.
    let segment = wal_segments(dir.path(), "n1").remove(0);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[6 + 8 + 3] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let (mut n1, _) = launch(None, dir.path(), "n1", 300, None, seed, n1_admin);
    eventually("n1, highest priority, exits non-zero", || {
        n1.child.try_wait().unwrap().is_some_and(|s| !s.success())
    });
    let log = std::fs::read_to_string(dir.path().join("n1.log")).unwrap();
    let file = segment.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        log.contains(&file) && log.contains("corrupt"),
        "the error does not name {file}: {log}"
    );
    eventually("n2 and n3 elect n2 meanwhile", || {
        follow_all(&[&n2, &n3], "n2")
    });
    assert!(kv_put(dir.path(), &[n2_addr, n3_addr], "after", "1"));

    // A read-only data directory (a read-only mount: root ignores modes).
    let Some(_ro) = Tmpfs::mount(&dir.path().join("n1"), "size=1m,ro") else {
        eprintln!("read-only part skipped: mounting needs root (CI runs as root)");
        return;
    };
    let (mut n1, _) = launch(None, dir.path(), "n1", 300, None, seed, n1_admin);
    eventually("n1 with a read-only data dir exits non-zero", || {
        n1.child.try_wait().unwrap().is_some_and(|s| !s.success())
    });
    let log = std::fs::read_to_string(dir.path().join("n1.log")).unwrap();
    assert!(log.contains("Read-only file system"), "{log}");
    assert!(follow_all(&[&n2, &n3], "n2"));
}

#[test]
fn a_leader_whose_write_ahead_log_fails_steps_aside_and_clients_move_on() {
    let dir = tempfile::tempdir().unwrap();
    // n1's write-ahead log on a small file system of its own, to fill.
    let Some(wal) = Tmpfs::mount(&dir.path().join("n1/kv/wal"), "size=2m") else {
        eprintln!("skipped: mounting needs root (CI runs as root)");
        return;
    };
    certs(dir.path(), &["n1", "n2", "n3"]);
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, n2_addr) = start(dir.path(), "n2", 200, Some(seed));
    let (n3, n3_addr) = start(dir.path(), "n3", 100, Some(seed));
    eventually("all three follow n1", || follow_all(&[&n1, &n2, &n3], "n1"));
    // The client lists the leader first.
    let endpoints = [seed, n2_addr, n3_addr];
    assert!(kv_put(dir.path(), &endpoints, "before", "1"));

    // The disk under n1's log fills. The log has zeros written up to 1 MiB
    // ahead of its records (WalOptions::prefill_bytes): writes go on into
    // them until it needs more, which fails. Every write succeeds for the
    // client, on n1 or after it moves on.
    wal.fill();
    let big = "x".repeat(64 * 1024);
    let mut written = 0;
    while metric(n1.admin, "clustron_kv_stopped") != Some(1) {
        assert!(written < 40, "n1 took 2.5 MiB more on a full disk");
        assert!(
            kv_put(dir.path(), &endpoints, &format!("big/{written}"), &big),
            "write {written} failed instead of moving to another node"
        );
        written += 1;
    }
    eventually("n1 says its store stopped and why", || {
        metric(n1.admin, "clustron_kv_stopped") == Some(1)
            && not_ready_because(n1.admin, "write-ahead log")
    });
    eventually("another node leads", || {
        leader_of(n2.admin).is_some_and(|(name, _)| name != "n1")
    });
    assert_eq!(metric(n1.admin, "clustron_is_leader"), Some(0));
    // Any node may answer a serializable read: the client leaves n1, listed
    // first, at its first refusal.
    assert_eq!(
        kv_get(dir.path(), &endpoints, "before", true),
        Some(Some("1".into())),
        "a serializable read stayed on the stopped node"
    );
    for i in 0..10 {
        assert!(
            kv_put(dir.path(), &endpoints, &format!("after/{i}"), "v"),
            "put {i} failed"
        );
    }
    for i in 0..written {
        assert_eq!(
            kv_get(dir.path(), &endpoints, &format!("big/{i}"), false).map(|v| v.map(|v| v.len())),
            Some(Some(64 * 1024)),
            "big/{i}"
        );
    }
}

#[test]
fn a_leader_whose_whole_disk_fills_steps_aside_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // All of n1's data (election promises too) on a file system to fill.
    let Some(disk) = Tmpfs::mount(&dir.path().join("n1"), "size=4m") else {
        eprintln!("skipped: mounting needs root (CI runs as root)");
        return;
    };
    certs(dir.path(), &["n1", "n2", "n3"]);
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, n2_addr) = start(dir.path(), "n2", 200, Some(seed));
    let (n3, n3_addr) = start(dir.path(), "n3", 100, Some(seed));
    eventually("all three follow n1", || follow_all(&[&n1, &n2, &n3], "n1"));
    let endpoints = [seed, n2_addr, n3_addr];

    // The leader's promise, rewritten at most a second apart as a check
    // that its storage still takes writes, can no longer be saved.
    disk.fill();
    eventually("n1 withdraws and says why", || {
        metric(n1.admin, "clustron_election_withdrawn") == Some(1)
            && not_ready_because(n1.admin, "failed")
            && metric(n1.admin, "clustron_is_leader") == Some(0)
    });
    eventually("another node leads", || follow_all(&[&n2, &n3], "n2"));
    assert!(kv_put(dir.path(), &endpoints, "after", "1"));
}

#[test]
fn a_node_that_lost_its_log_tail_never_votes_with_less_and_no_acknowledged_write_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["n1", "n2", "n3"]);
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, n2_addr) = start(dir.path(), "n2", 200, Some(seed));
    let (n3, n3_addr) = start(dir.path(), "n3", 100, Some(seed));
    eventually("all three follow n1", || follow_all(&[&n1, &n2, &n3], "n1"));

    // Writes acknowledged by n1 and n2 while n3 is down.
    let n3_admin = n3.admin;
    drop(n3);
    let keys: Vec<String> = (0..10).map(|i| format!("acked/{i}")).collect();
    for key in &keys {
        assert!(kv_put(dir.path(), &[seed, n2_addr], key, "1"));
    }
    // Both stop; n1 loses the tail of its log (its last segment).
    let (n1_admin, n2_admin) = (n1.admin, n2.admin);
    drop((n1, n2));
    let last = wal_segments(dir.path(), "n1").pop().unwrap();
    std::fs::remove_file(last).unwrap();

    // n1 and n3 are a majority, but neither holds those writes any more:
    // n1 must not vote with less than it acknowledged.
    let (n1, _) = launch(None, dir.path(), "n1", 300, None, seed, n1_admin);
    let (n3, _) = launch(None, dir.path(), "n3", 100, Some(seed), n3_addr, n3_admin);
    let mut reported = false;
    eventually(
        "n1 reports the lost tail (or, wrongly, n1 and n3 elect)",
        || {
            reported = not_ready_because(n1.admin, "lost");
            reported || leader_of(n3.admin).is_some()
        },
    );
    let (n2, _) = launch(None, dir.path(), "n2", 200, Some(seed), n2_addr, n2_admin);
    eventually("every acknowledged write is readable", || {
        keys.iter().all(|key| {
            kv_get(dir.path(), &[n2_addr, n3_addr, seed], key, false) == Some(Some("1".into()))
        })
    });
    assert!(reported, "n1 never said it lost acknowledged entries");
    eventually("n1 caught up, votes again and serves the writes", || {
        leader_of(n1.admin).is_some()
            && keys
                .iter()
                .all(|key| kv_get(dir.path(), &[seed], key, true) == Some(Some("1".into())))
    });
    drop(n2);
}
