//! The RESP port from outside: Debian's `redis-cli` and `redis-benchmark`
//! (package `redis-tools`, installed by `.ci/run`) over TLS with client
//! certificates from a cluster CA made by the project's cert helpers, the
//! commands of issue #14 with the replies Redis gives, pipelining, role
//! checks; and the listener's own rules (plaintext only on loopback, the
//! connection limit, shutdown).
//!
//! The listener serves a [`MemoryBackend`] in this process: what is tested
//! is the protocol, TLS and authorisation, not the distributed store.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clustron_dkv::cache::resp::{MemoryBackend, RespConfig, RespError, RespListener};
use clustron_transport::{CertRequest, CertificateAuthority, ClientRole, TlsIdentity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::oneshot;

/// A CA, a node certificate for the server and one client certificate per
/// role, as files `redis-cli` reads.
struct Pki {
    dir: tempfile::TempDir,
    server: TlsIdentity,
}

impl Pki {
    fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("resp-test-ca").unwrap();
        ca.save(dir.path()).unwrap();
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let node = ca
            .issue(
                &CertRequest::node("n1")
                    .unwrap()
                    .ip(localhost)
                    .dns("localhost"),
            )
            .unwrap();
        let server = TlsIdentity::from_certified(ca.cert_pem(), &node).unwrap();
        for role in [ClientRole::ReadWrite, ClientRole::ReadOnly] {
            let cert = ca
                .issue(&CertRequest::client(&format!("app-{role}"), role).unwrap())
                .unwrap();
            cert.save(dir.path(), role.as_str()).unwrap();
        }
        Pki { dir, server }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `redis-cli`'s TLS arguments for a client of `role`.
    fn tls_args(&self, role: ClientRole) -> Vec<String> {
        let file = |ext: &str| {
            let path = self.dir.path().join(format!("{}.{ext}", role.as_str()));
            assert!(path.exists(), "{} missing", path.display());
            path.display().to_string()
        };
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.ca().display().to_string(),
            "--cert".into(),
            file("pem"),
            "--key".into(),
            file("key"),
        ]
    }
}

/// A RESP listener serving a fresh [`MemoryBackend`] until dropped.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn start(config: RespConfig) -> Server {
        Server::start_with(config, Arc::new(MemoryBackend::new())).await
    }

    async fn start_with(config: RespConfig, backend: Arc<MemoryBackend>) -> Server {
        let listener = RespListener::bind(config).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            listener
                .serve(backend, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Server {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the listener and waits until it has returned.
    async fn stop(mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the listener stops within the deadline")
                .unwrap();
        }
    }
}

fn redis_cli() -> &'static str {
    let found = std::process::Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "redis-cli is missing: install Debian's redis-tools (apt-get install -y redis-tools; \
         .ci/run does it)"
    );
    "redis-cli"
}

/// Runs `redis-cli` with `args`, `stdin` as its input; at most 60 s.
async fn run_cli(args: &[String], stdin: &[u8]) -> Output {
    let mut child = Command::new(redis_cli())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("redis-cli finishes within the deadline")
        .unwrap()
}

fn address_args(addr: SocketAddr) -> Vec<String> {
    vec![
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
    ]
}

/// Runs each of `lines` as one command through one `redis-cli` session in
/// its human output format (`--no-raw`); one output line per reply line.
async fn session(pki: &Pki, addr: SocketAddr, role: ClientRole, lines: &[&str]) -> Vec<String> {
    let mut args = address_args(addr);
    args.extend(pki.tls_args(role));
    args.push("--no-raw".into());
    let input = lines.join("\n") + "\n";
    let output = run_cli(&args, input.as_bytes()).await;
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What a reply must look like.
enum Expect {
    /// Exactly this text.
    Is(&'static str),
    /// An integer in this range (times: the clock runs during the test).
    IntegerIn(i64, i64),
}

fn check(lines: &[String], steps: &[(&str, Expect)]) {
    assert_eq!(
        lines.len(),
        steps.len(),
        "one reply line per command expected; got {lines:#?}"
    );
    for (line, (command, expect)) in lines.iter().zip(steps) {
        let ok = match expect {
            Expect::Is(text) => line == text,
            Expect::IntegerIn(low, high) => line
                .strip_prefix("(integer) ")
                .and_then(|n| n.parse::<i64>().ok())
                .is_some_and(|n| (*low..=*high).contains(&n)),
        };
        assert!(ok, "{command}: got {line:?}");
    }
}

#[tokio::test]
async fn redis_cli_over_tls_runs_the_issue_commands_with_redis_replies() {
    use Expect::*;
    let pki = Pki::generate();
    let server = Server::start(RespConfig::tls(
        "127.0.0.1:0".parse().unwrap(),
        pki.server.clone(),
    ))
    .await;
    let steps: Vec<(&str, Expect)> = vec![
        ("PING", Is("PONG")),
        ("SELECT 0", Is("OK")),
        ("CLIENT SETNAME issue-14", Is("OK")),
        ("CLIENT GETNAME", Is("\"issue-14\"")),
        ("SET greeting hello", Is("OK")),
        ("GET greeting", Is("\"hello\"")),
        ("SET greeting again NX", Is("(nil)")),
        ("SET missing x XX", Is("(nil)")),
        ("SET greeting hi XX GET", Is("\"hello\"")),
        ("SET session s1 EX 100", Is("OK")),
        ("TTL session", IntegerIn(99, 100)),
        ("SET short s2 PX 60000", Is("OK")),
        ("PTTL short", IntegerIn(1, 60_000)),
        ("SETEX token 30 t", Is("OK")),
        ("TTL token", IntegerIn(29, 30)),
        ("EXPIRE greeting 50", Is("(integer) 1")),
        ("TTL greeting", IntegerIn(49, 50)),
        ("PEXPIRE greeting 70000", Is("(integer) 1")),
        ("PERSIST greeting", Is("(integer) 1")),
        ("TTL greeting", Is("(integer) -1")),
        ("TTL nothing", Is("(integer) -2")),
        ("EXISTS greeting session nothing", Is("(integer) 2")),
        ("INCR counter", Is("(integer) 1")),
        ("INCRBY counter 41", Is("(integer) 42")),
        ("DECR counter", Is("(integer) 41")),
        ("DECRBY counter 40", Is("(integer) 1")),
        (
            "INCR greeting",
            Is("(error) ERR value is not an integer or out of range"),
        ),
        ("MSET a 1 b 2", Is("OK")),
        ("MGET a nothing b", Is("1) \"1\"")),
        ("", Is("2) (nil)")),
        ("", Is("3) \"2\"")),
        ("APPEND a 23", Is("(integer) 3")),
        ("STRLEN a", Is("(integer) 3")),
        ("DEL a b nothing", Is("(integer) 2")),
        ("DBSIZE", Is("(integer) 5")),
        (
            "GET",
            Is("(error) ERR wrong number of arguments for 'get' command"),
        ),
        (
            "FOO bar",
            Is("(error) ERR unknown command 'FOO', with args beginning with: 'bar' "),
        ),
        ("SELECT 1", Is("(error) ERR DB index is out of range")),
        ("FLUSHDB", Is("OK")),
        ("DBSIZE", Is("(integer) 0")),
    ];
    // MGET's reply takes three lines; the empty "commands" mark them.
    let commands: Vec<&str> = steps
        .iter()
        .map(|s| s.0)
        .filter(|c| !c.is_empty())
        .collect();
    let lines = session(&pki, server.addr, ClientRole::ReadWrite, &commands).await;
    check(&lines, &steps);

    // One-shot commands whose replies are long: INFO and COMMAND.
    let mut args = address_args(server.addr);
    args.extend(pki.tls_args(ClientRole::ReadWrite));
    let info = run_cli(&[args.clone(), vec!["INFO".into()]].concat(), b"").await;
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("redis_version:7.0.0"), "{info}");
    let count = run_cli(
        &[args.clone(), vec!["COMMAND".into(), "COUNT".into()]].concat(),
        b"",
    )
    .await;
    let count: usize = String::from_utf8_lossy(&count.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, clustron_dkv::cache::resp::command::SPECS.len());
    server.stop().await;
}

#[tokio::test]
async fn redis_cli_pipe_mode_gets_every_reply_of_a_pipeline() {
    let pki = Pki::generate();
    let server = Server::start(RespConfig::tls(
        "127.0.0.1:0".parse().unwrap(),
        pki.server.clone(),
    ))
    .await;
    let mut input = Vec::new();
    for i in 0..2000 {
        clustron_dkv::cache::resp::codec::encode_command(
            &["SET".to_owned(), format!("key:{i}"), format!("value-{i}")],
            &mut input,
        );
    }
    let mut args = address_args(server.addr);
    args.extend(pki.tls_args(ClientRole::ReadWrite));
    args.push("--pipe".into());
    let output = run_cli(&args, &input).await;
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(report.contains("errors: 0, replies: 2000"), "{report}");
    let lines = session(
        &pki,
        server.addr,
        ClientRole::ReadWrite,
        &["DBSIZE", "GET key:1999"],
    )
    .await;
    assert_eq!(lines, ["(integer) 2000", "\"value-1999\""]);
    server.stop().await;
}

#[tokio::test]
async fn a_readonly_certificate_reads_but_cannot_set_or_delete() {
    let pki = Pki::generate();
    let server = Server::start(RespConfig::tls(
        "127.0.0.1:0".parse().unwrap(),
        pki.server.clone(),
    ))
    .await;
    let writer = session(&pki, server.addr, ClientRole::ReadWrite, &["SET k v"]).await;
    assert_eq!(writer, ["OK"]);
    let reader = session(
        &pki,
        server.addr,
        ClientRole::ReadOnly,
        &[
            "GET k",
            "SET k changed",
            "DEL k",
            "MSET k x",
            "INCR n",
            "FLUSHDB",
            "GET k",
            "EXISTS n",
        ],
    )
    .await;
    let refused = |name: &str| {
        format!(
            "(error) NOPERM this certificate's role (readonly) may not run the '{name}' command"
        )
    };
    assert_eq!(
        reader,
        [
            "\"v\"".to_owned(),
            refused("set"),
            refused("del"),
            refused("mset"),
            refused("incr"),
            refused("flushdb"),
            "\"v\"".to_owned(),
            "(integer) 0".to_owned(),
        ]
    );
    server.stop().await;
}

/// `redis-cli` got no reply and said why.
fn refused(output: &Output) {
    assert_eq!(String::from_utf8_lossy(&output.stdout), "", "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Error"), "{output:?}");
}

#[tokio::test]
async fn a_client_without_a_certificate_from_the_ca_is_refused() {
    let pki = Pki::generate();
    let server = Server::start(RespConfig::tls(
        "127.0.0.1:0".parse().unwrap(),
        pki.server.clone(),
    ))
    .await;
    // TLS but no client certificate: the handshake fails.
    let mut args = address_args(server.addr);
    args.extend([
        "--tls".to_owned(),
        "--cacert".to_owned(),
        pki.ca().display().to_string(),
        "--no-raw".to_owned(),
    ]);
    let output = run_cli(&args, b"PING\n").await;
    refused(&output);
    // A certificate from another CA: refused too.
    let other = Pki::generate();
    let mut args = address_args(server.addr);
    args.extend(other.tls_args(ClientRole::ReadWrite));
    args.extend(["--insecure".to_owned(), "--no-raw".to_owned()]);
    let output = run_cli(&args, b"PING\n").await;
    refused(&output);
    server.stop().await;
}

#[tokio::test]
async fn redis_benchmark_connects_over_tls_and_completes_set_and_get() {
    let pki = Pki::generate();
    let server = Server::start(RespConfig::tls(
        "127.0.0.1:0".parse().unwrap(),
        pki.server.clone(),
    ))
    .await;
    let mut args = address_args(server.addr);
    args.extend(pki.tls_args(ClientRole::ReadWrite));
    args.extend(
        [
            "-t", "set,get", "-n", "2000", "-c", "4", "-P", "8", "-d", "256", "--csv",
        ]
        .map(String::from),
    );
    let mut child = Command::new("redis-benchmark")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-benchmark (Debian redis-tools) runs");
    drop(child.stdin.take());
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("redis-benchmark finishes within the deadline")
        .unwrap();
    let csv = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    // One CSV row per test, with a requests-per-second figure.
    for test in ["\"SET\"", "\"GET\""] {
        let row = csv.lines().find(|l| l.starts_with(test));
        let rps = row
            .and_then(|r| r.split(',').nth(1))
            .and_then(|v| v.trim_matches('"').parse::<f64>().ok());
        assert!(rps.is_some_and(|r| r > 0.0), "{test}: {csv}");
    }
    // CONFIG GET was answered: no warning about the server's configuration.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("Could not fetch server CONFIG"),
        "{stderr}"
    );
    server.stop().await;
}

#[tokio::test]
async fn plaintext_is_served_only_on_loopback() {
    let anywhere: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let refused = RespListener::bind(RespConfig::insecure(anywhere))
        .await
        .unwrap_err();
    assert!(matches!(refused, RespError::PlaintextNotLoopback { .. }));
    let why = refused.to_string();
    assert!(
        why.contains("0.0.0.0:0") && why.contains("loopback") && why.contains("--resp-insecure"),
        "{why}"
    );

    let server = Server::start(RespConfig::insecure("127.0.0.1:0".parse().unwrap())).await;
    let mut args = address_args(server.addr);
    args.push("--no-raw".into());
    let output = run_cli(&args, b"SET k v\nGET k\n").await;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "OK\n\"v\"\n");
    server.stop().await;
}

/// A plaintext connection's next reply line, within a deadline.
async fn reply_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            line.push(byte[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a reply within the deadline");
    String::from_utf8_lossy(&line).into_owned()
}

#[tokio::test]
async fn connections_over_the_limit_are_told_so_and_closed() {
    let mut config = RespConfig::insecure("127.0.0.1:0".parse().unwrap());
    config.max_connections = NonZeroUsize::new(1).unwrap();
    let server = Server::start(config).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    first.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(reply_line(&mut first).await, "+PONG\r\n");
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        reply_line(&mut second).await,
        "-ERR max number of clients reached\r\n"
    );
    assert_eq!(
        reply_line(&mut second).await,
        "",
        "closed after the refusal"
    );
    // The slot frees when the first client leaves.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut third = TcpStream::connect(server.addr).await.unwrap();
        third.write_all(b"PING\r\n").await.unwrap();
        if reply_line(&mut third).await == "+PONG\r\n" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot of a closed connection was never freed"
        );
        tokio::task::yield_now().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_shutdown_closes_idle_connections_and_the_listener_returns() {
    // With an hour of grace, the listener returns within the stop
    // deadline only if the idle connection closes on the signal.
    let mut config = RespConfig::insecure("127.0.0.1:0".parse().unwrap());
    config.shutdown_grace = Duration::from_secs(3600);
    let backend = Arc::new(MemoryBackend::new());
    let server = Server::start_with(config, backend.clone()).await;
    let addr = server.addr;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"SET k v\r\n").await.unwrap();
    assert_eq!(reply_line(&mut client).await, "+OK\r\n");
    server.stop().await;
    assert_eq!(reply_line(&mut client).await, "", "closed by the server");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    assert_eq!(
        backend.apply(clustron_dkv::cache::CacheOp::Exists { key: b"k".to_vec() }),
        Ok(clustron_dkv::cache::CacheReply::Bool(true))
    );
}
