//! `clustron-dkv`: certificates, a node, or a local dev cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use clustron_dkv::config::{FileConfig, LogFormat, NodeConfig};
use clustron_transport::{CertRequest, CertificateAuthority, ClientRole};

/// jemalloc, not the C library's allocator: a node allocates and frees
/// buffers per request, per QUIC packet and per log entry on several threads
/// at once. Measured with `clustron-bench kv` (alternating rounds against the
/// same build with the system allocator): 10-17 % less server CPU per
/// linearizable get, ~5 % per CAS and per put at 1000 in flight, and a
/// steady node's RSS a few MB lower after a million puts (issues 11 and 13).
/// mimalloc was tried too: as fast, but its RSS was 25-100 % higher.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "clustron-dkv", version, about = "Clustron DKV node")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a cluster CA and issue node and client certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCmd,
    },
    /// Run a node.
    Run(Box<RunArgs>),
    /// Start a local cluster on 127.0.0.1 in the foreground (Ctrl-C stops it).
    Dev {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Where certificates and data live (created on first use).
        #[arg(long, default_value = "clustron-dev")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Write ca.pem and ca.key into DIR (refused if either exists).
    Init {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing CA in DIR. Every certificate the old CA
        /// signed stops being trusted: nodes and clients need new ones.
        #[arg(long)]
        force: bool,
    },
    /// Issue NAME.pem / NAME.key for a node.
    Node {
        /// Node name.
        name: String,
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// IP addresses to put in the certificate.
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        /// DNS names to put in the certificate.
        #[arg(long)]
        dns: Vec<String>,
    },
    /// Issue NAME.pem / NAME.key for a client.
    Client {
        /// Client name.
        name: String,
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// admin, readwrite or readonly.
        #[arg(long, default_value = "readonly")]
        role: ClientRole,
    },
}

/// `run` flags; each also reads `CLUSTRON_<NAME>` and overrides `--config`.
#[derive(clap::Args)]
struct RunArgs {
    /// A TOML file with the same keys (name, listen, seeds, ...).
    #[arg(long, env = "CLUSTRON_CONFIG")]
    config: Option<PathBuf>,
    /// Node name (must match the certificate).
    #[arg(long, env = "CLUSTRON_NAME")]
    name: Option<String>,
    /// UDP address for peers and clients.
    #[arg(long, env = "CLUSTRON_LISTEN")]
    listen: Option<SocketAddr>,
    /// Members to join through, comma-separated.
    #[arg(long, env = "CLUSTRON_SEEDS", value_delimiter = ',')]
    seeds: Option<Vec<SocketAddr>>,
    /// Voter names, comma-separated.
    #[arg(long, env = "CLUSTRON_VOTERS", value_delimiter = ',')]
    voters: Option<Vec<String>>,
    /// Election priority (higher wins).
    #[arg(long, env = "CLUSTRON_PRIORITY")]
    priority: Option<u32>,
    /// Where durable state lives.
    #[arg(long, env = "CLUSTRON_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Cluster CA certificate.
    #[arg(long, env = "CLUSTRON_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Node certificate.
    #[arg(long, env = "CLUSTRON_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// Node private key.
    #[arg(long, env = "CLUSTRON_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// HTTP admin address.
    #[arg(long, env = "CLUSTRON_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// text or json.
    #[arg(long, env = "CLUSTRON_LOG_FORMAT")]
    log_format: Option<String>,
    /// Seconds a key-value watch that is behind may go without its reader
    /// taking anything before it is cancelled (1 to 3600; default 30).
    #[arg(long, env = "CLUSTRON_WATCH_STALL_TIMEOUT_SECS")]
    watch_stall_timeout_secs: Option<u64>,
    /// Revisions of key-value history kept before compaction (0: never;
    /// default 10,000).
    #[arg(long, env = "CLUSTRON_RETAIN_REVISIONS")]
    retain_revisions: Option<u64>,
    /// Bytes of past key-value versions kept before compaction, whatever
    /// `--retain-revisions` says (0: no byte bound; default 64 MiB).
    #[arg(long, env = "CLUSTRON_RETAIN_BYTES")]
    retain_bytes: Option<u64>,
    /// Largest value a key may hold, in bytes.
    #[arg(long, env = "CLUSTRON_MAX_VALUE_BYTES")]
    max_value_bytes: Option<usize>,
    /// Snapshot the store every this many log entries and forget the log
    /// before it (default 10,000; 0: never), once the log since the last
    /// snapshot is also half that snapshot's size.
    #[arg(long, env = "CLUSTRON_SNAPSHOT_ENTRIES")]
    snapshot_entries: Option<u64>,
    /// Serve the cache over the Redis protocol (RESP2) on this TCP address,
    /// with TLS and client certificates from the cluster CA.
    #[arg(long, env = "CLUSTRON_RESP_LISTEN")]
    resp_listen: Option<SocketAddr>,
    /// Serve RESP in plaintext, every client read-write (allowed only on a
    /// loopback address).
    #[arg(long, env = "CLUSTRON_RESP_INSECURE")]
    resp_insecure: bool,
    /// The cache namespace the RESP port serves (default `default`).
    #[arg(long, env = "CLUSTRON_RESP_NAMESPACE")]
    resp_namespace: Option<String>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Certs { command } => certs(command),
        Cmd::Run(args) => run(*args),
        Cmd::Dev { nodes, dir } => dev(nodes, &dir),
    }
}

fn certs(command: CertsCmd) -> Result<()> {
    match command {
        CertsCmd::Init { out, force } => {
            // A new CA in place of an existing one silently breaks every
            // certificate the old one signed: only on request.
            if !force {
                for file in ["ca.key", "ca.pem"] {
                    let path = out.join(file);
                    anyhow::ensure!(
                        !path.exists(),
                        "{} already exists: a new CA would invalidate every certificate the \
                         existing one signed; keep it, choose another --out, or pass --force to \
                         replace it",
                        path.display()
                    );
                }
            }
            CertificateAuthority::generate("Clustron CA")?.save(&out)?;
            println!("wrote {0}/ca.pem and {0}/ca.key", out.display());
        }
        CertsCmd::Node {
            name,
            ca,
            out,
            ip,
            dns,
        } => {
            let ca = CertificateAuthority::load(&ca)?;
            let mut request = CertRequest::node(&name)?;
            for ip in ip {
                request = request.ip(ip);
            }
            for dns in dns {
                request = request.dns(dns);
            }
            ca.issue(&request)?.save(&out, &name)?;
            println!("wrote {0}/{name}.pem and {0}/{name}.key", out.display());
        }
        CertsCmd::Client {
            name,
            ca,
            out,
            role,
        } => {
            let ca = CertificateAuthority::load(&ca)?;
            ca.issue(&CertRequest::client(&name, role)?)?
                .save(&out, &name)?;
            println!("wrote {0}/{name}.pem and {0}/{name}.key", out.display());
        }
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        name: args.name,
        listen: args.listen,
        seeds: args.seeds,
        voters: args.voters,
        priority: args.priority,
        data_dir: args.data_dir,
        ca_file: args.ca_file,
        cert_file: args.cert_file,
        key_file: args.key_file,
        admin_listen: args.admin_listen,
        log_format: args.log_format,
        watch_stall_timeout_secs: args.watch_stall_timeout_secs,
        retain_revisions: args.retain_revisions,
        retain_bytes: args.retain_bytes,
        max_value_bytes: args.max_value_bytes,
        snapshot_entries: args.snapshot_entries,
        resp_listen: args.resp_listen,
        // A flag can only turn it on; the file's `false` is the default.
        resp_insecure: args.resp_insecure.then_some(true),
        resp_namespace: args.resp_namespace,
    };
    let config = NodeConfig::resolve(flags, file)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let node = clustron_dkv::node::start(&config).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: handing over leadership and leaving");
        node.stop().await;
        anyhow::Ok(())
    })
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn dev(nodes: usize, dir: &Path) -> Result<()> {
    anyhow::ensure!(
        (1..=32).contains(&nodes),
        "--nodes must be 1..=32, not {nodes}"
    );
    let ca = if dir.join("ca.pem").exists() {
        CertificateAuthority::load(dir)?
    } else {
        let ca = CertificateAuthority::generate("Clustron dev CA")?;
        ca.save(dir)?;
        ca
    };
    for i in 1..=nodes {
        let name = format!("n{i}");
        if !dir.join(format!("{name}.pem")).exists() {
            ca.issue(&CertRequest::node(&name)?.ip("127.0.0.1".parse()?))?
                .save(dir, &name)?;
        }
    }
    if !dir.join("admin.pem").exists() {
        ca.issue(&CertRequest::client("admin", ClientRole::Admin)?)?
            .save(dir, "admin")?;
    }
    let voters: Vec<String> = (1..=nodes.min(3)).map(|i| format!("n{i}")).collect();
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut seed: Option<SocketAddr> = None;
    let mut children_addrs = Vec::new();
    let mut resp_ports = Vec::new();
    for i in 1..=nodes {
        let name = format!("n{i}");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
        let resp = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
        let mut command = std::process::Command::new(&exe);
        command
            .arg("run")
            .args(["--name", &name])
            .args(["--listen", &listen.to_string()])
            .args(["--voters", &voters.join(",")])
            .args(["--priority", &(100 * (nodes + 1 - i)).to_string()])
            .arg("--data-dir")
            .arg(dir.join("data").join(&name))
            .arg("--ca-file")
            .arg(dir.join("ca.pem"))
            .arg("--cert-file")
            .arg(dir.join(format!("{name}.pem")))
            .arg("--key-file")
            .arg(dir.join(format!("{name}.key")))
            .args(["--admin-listen", &admin.to_string()])
            .args(["--resp-listen", &resp.to_string()]);
        if let Some(seed) = seed {
            command.args(["--seeds", &seed.to_string()]);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        println!("{name}: {listen} (admin http://{admin}/metrics, Redis protocol {resp})");
        seed.get_or_insert(listen);
        children_addrs.push(listen);
        resp_ports.push(resp.port());
        children.push(child);
    }
    let endpoints: Vec<String> = children_addrs.iter().map(|a| a.to_string()).collect();
    println!();
    println!("look at it with:");
    println!(
        "  cargo run -q -p clustron-client --bin clustron -- --endpoints {} --ca-file {} --cert-file {} --key-file {} members",
        endpoints.join(","),
        dir.join("ca.pem").display(),
        dir.join("admin.pem").display(),
        dir.join("admin.key").display()
    );
    println!("or set the environment once and use the key-value store:");
    println!(
        "  export CLUSTRON_ENDPOINTS={} CLUSTRON_CA_FILE={} CLUSTRON_CERT_FILE={} CLUSTRON_KEY_FILE={}",
        endpoints.join(","),
        dir.join("ca.pem").display(),
        dir.join("admin.pem").display(),
        dir.join("admin.key").display()
    );
    println!("  cargo run -q -p clustron-client --bin clustron -- kv put greeting hello");
    println!("  cargo run -q -p clustron-client --bin clustron -- cache put greeting hello");
    println!("the cache over the Redis protocol (any node serves any key):");
    for port in &resp_ports {
        println!(
            "  redis-cli --tls --cacert {} --cert {} --key {} -p {port}",
            dir.join("ca.pem").display(),
            dir.join("admin.pem").display(),
            dir.join("admin.key").display()
        );
    }
    println!(
        "certificates and data in {}; Ctrl-C stops the cluster",
        dir.display()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        let _ = tx.send(());
    });
    let _ = rx.recv();
    for child in &children {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for mut child in children {
        let _ = child.wait();
    }
    println!("stopped");
    Ok(())
}
