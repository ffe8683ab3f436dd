//! `clustron cache ...`: cache namespaces and entries from the command line.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Subcommand;
use clustron_client::cache::namespace::Eviction;
use clustron_client::cache::{EventKind, NamespaceConfig, TtlState};
use clustron_client::Client;
use serde_json::json;

/// `clustron cache` subcommands.
#[derive(Subcommand)]
pub enum CacheCmd {
    /// Create a namespace (admin role).
    Create {
        /// Its name (1 to 64 of A-Z a-z 0-9 _ - .).
        name: String,
        /// Most entries one node holds (owned and backed up).
        #[arg(long, default_value_t = 1_000_000)]
        max_entries: u64,
        /// Most bytes one node holds: a number with an optional unit
        /// (k, M, G, KiB, MiB, GiB).
        #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
        max_memory: u64,
        /// What goes first when full: lru or lfu.
        #[arg(long, default_value = "lru", value_parser = parse_eviction)]
        eviction: Eviction,
        /// Default time to live of new entries (e.g. 30s, 5m, 1h, 250ms).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Entries not read or written for this long expire.
        #[arg(long, value_parser = parse_duration)]
        max_idle: Option<Duration>,
        /// Backups per partition (0 to 2).
        #[arg(long, default_value_t = 1)]
        backups: u8,
        /// Answer writes before the backups have them (faster; a crashed
        /// owner loses its last writes).
        #[arg(long = "async")]
        async_backups: bool,
    },
    /// List the namespaces and their settings.
    List {
        /// JSON array of objects.
        #[arg(long)]
        json: bool,
    },
    /// Drop a namespace and its entries (admin role).
    Drop {
        /// Its name.
        name: String,
    },
    /// Print KEY's value (exit status 1 if absent).
    Get {
        /// The key.
        key: String,
        /// The namespace.
        #[arg(long, short, default_value = "default")]
        namespace: String,
    },
    /// Set KEY to VALUE; prints its version.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Time to live (e.g. 30s, 5m).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// The namespace.
        #[arg(long, short, default_value = "default")]
        namespace: String,
    },
    /// Delete KEY; prints whether it was there.
    Del {
        /// The key.
        key: String,
        /// The namespace.
        #[arg(long, short, default_value = "default")]
        namespace: String,
    },
    /// Add BY (default 1) to the integer at KEY; prints the result.
    Incr {
        /// The key.
        key: String,
        /// The increment.
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
        /// The namespace.
        #[arg(long, short, default_value = "default")]
        namespace: String,
    },
    /// Print entry events (put, update, remove, evict, expire) as they
    /// happen, one line each (give every node in --endpoints: each sends
    /// the events of the partitions it owns).
    Watch {
        /// The namespace.
        #[arg(long, short, default_value = "default")]
        namespace: String,
    },
    /// Print KEY's remaining time to live.
    Ttl {
        /// The key.
        key: String,
        /// The namespace.
        #[arg(long, short, default_value = "default")]
        namespace: String,
    },
}

/// Runs one `clustron cache` command.
pub async fn run(client: &Client, command: CacheCmd) -> Result<()> {
    match command {
        CacheCmd::Create {
            name,
            max_entries,
            max_memory,
            eviction,
            ttl,
            max_idle,
            backups,
            async_backups,
        } => {
            let config = NamespaceConfig {
                name: name.clone(),
                max_entries,
                max_memory,
                eviction,
                ttl_ms: ttl.map(millis),
                max_idle_ms: max_idle.map(millis),
                backups,
                async_backups,
                ..NamespaceConfig::default()
            };
            let config = config.validate()?;
            client.cache_create(config).await?;
            println!("created {name}");
        }
        CacheCmd::List { json } => {
            let list = client.cache_list().await?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|c| {
                        json!({
                            "name": c.name, "max_entries": c.max_entries,
                            "max_memory": c.max_memory,
                            "eviction": eviction_name(c.eviction),
                            "ttl_ms": c.ttl_ms, "max_idle_ms": c.max_idle_ms,
                            "backups": c.backups, "async": c.async_backups,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<20} {:>12} {:>14} {:<8} {:>10} {:>10} {:>7} {:<5}",
                    "NAME",
                    "MAX_ENTRIES",
                    "MAX_MEMORY",
                    "EVICTION",
                    "TTL_MS",
                    "IDLE_MS",
                    "BACKUPS",
                    "SYNC"
                );
                for c in list {
                    let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
                    println!(
                        "{:<20} {:>12} {:>14} {:<8} {:>10} {:>10} {:>7} {:<5}",
                        c.name,
                        c.max_entries,
                        c.max_memory,
                        eviction_name(c.eviction),
                        ms(c.ttl_ms),
                        ms(c.max_idle_ms),
                        c.backups,
                        if c.async_backups { "async" } else { "sync" }
                    );
                }
            }
        }
        CacheCmd::Drop { name } => {
            client.cache_drop(&name).await?;
            println!("dropped {name}");
        }
        CacheCmd::Get { key, namespace } => {
            match client.cache_get(&namespace, key.as_bytes()).await? {
                Some(value) => println!("{}", String::from_utf8_lossy(&value.value)),
                None => std::process::exit(1),
            }
        }
        CacheCmd::Put {
            key,
            value,
            ttl,
            namespace,
        } => {
            let version = client
                .cache_put(&namespace, key.as_bytes(), value.as_bytes(), ttl)
                .await?;
            println!("OK version {version}");
        }
        CacheCmd::Del { key, namespace } => {
            let found = client.cache_delete(&namespace, key.as_bytes()).await?;
            println!("{}", if found { "deleted" } else { "absent" });
        }
        CacheCmd::Incr { key, by, namespace } => {
            println!(
                "{}",
                client.cache_incr(&namespace, key.as_bytes(), by).await?
            );
        }
        CacheCmd::Watch { namespace } => {
            use std::io::Write as _;
            let mut events = client.cache_events(&namespace).await?;
            while let Some(batch) = events.next().await {
                let mut out = std::io::stdout().lock();
                for event in batch? {
                    let kind = match event.kind {
                        EventKind::Put => "put",
                        EventKind::Update => "update",
                        EventKind::Remove => "remove",
                        EventKind::Evict => "evict",
                        EventKind::Expire => "expire",
                    };
                    writeln!(
                        out,
                        "{kind} {} version {}",
                        String::from_utf8_lossy(&event.key),
                        event.version
                    )?;
                }
                out.flush()?;
            }
        }
        CacheCmd::Ttl { key, namespace } => {
            match client.cache_ttl(&namespace, key.as_bytes()).await? {
                TtlState::Absent => println!("absent"),
                TtlState::Persistent => println!("no expiry"),
                TtlState::Millis(ms) => println!("{ms} ms"),
            }
        }
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

fn eviction_name(eviction: Eviction) -> &'static str {
    match eviction {
        Eviction::Lru => "lru",
        Eviction::Lfu => "lfu",
    }
}

fn parse_eviction(text: &str) -> Result<Eviction> {
    match text.to_ascii_lowercase().as_str() {
        "lru" => Ok(Eviction::Lru),
        "lfu" => Ok(Eviction::Lfu),
        _ => bail!("expected lru or lfu"),
    }
}

/// `250ms`, `30s`, `5m`, `2h`, `1d`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let Ok(number) = number.parse::<u64>() else {
        bail!("expected a number with an optional unit (ms, s, m, h, d), as 30s");
    };
    let ms = match unit {
        "ms" => Some(number),
        "" | "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "d" => number.checked_mul(86_400_000),
        _ => bail!("unknown unit {unit:?}: use ms, s, m, h or d"),
    };
    match ms {
        Some(0) => bail!("a duration must be more than 0"),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => bail!("{text} is too long"),
    }
}

/// A byte count: a number with an optional unit (k, M, G: powers of 1000;
/// KiB, MiB, GiB: powers of 1024).
fn parse_bytes(text: &str) -> Result<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let Ok(number) = number.parse::<u64>() else {
        bail!("expected a number of bytes with an optional unit, as 256MiB");
    };
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => bail!("unknown unit {unit:?}: use k, M, G, KiB, MiB or GiB"),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| anyhow::anyhow!("{text} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_with_their_units_and_bad_ones_are_refused() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "0s", "s", "5w", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_bytes("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("2k").unwrap(), 2000);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        for bad in ["", "MiB", "1PiB", "99999999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_eviction("LFU").unwrap(), Eviction::Lfu);
        assert!(parse_eviction("fifo").is_err());
    }
}
