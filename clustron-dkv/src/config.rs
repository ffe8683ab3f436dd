//! Node configuration: a TOML file, `CLUSTRON_*` environment variables and
//! command-line flags, in rising precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::server::DEFAULT_RETAIN_REVISIONS;

/// Everything `clustron-dkv run` needs, as read from a TOML file. Every key
/// is optional here; [`NodeConfig::resolve`] checks that the required ones
/// are set once flags and environment are applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Node name; must match the certificate's.
    pub name: Option<String>,
    /// UDP address for peers and clients.
    pub listen: Option<SocketAddr>,
    /// Members to join through.
    pub seeds: Option<Vec<SocketAddr>>,
    /// Names of the voters.
    pub voters: Option<Vec<String>>,
    /// Election priority.
    pub priority: Option<u32>,
    /// Where durable state lives.
    pub data_dir: Option<PathBuf>,
    /// The cluster CA certificate.
    pub ca_file: Option<PathBuf>,
    /// This node's certificate.
    pub cert_file: Option<PathBuf>,
    /// This node's private key.
    pub key_file: Option<PathBuf>,
    /// HTTP admin address (`/healthz`, `/readyz`, `/metrics`).
    pub admin_listen: Option<SocketAddr>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// Seconds a key-value watch that is behind may go without its reader
    /// taking anything before the node cancels it (1 to 3600; default 30).
    pub watch_stall_timeout_secs: Option<u64>,
    /// Revisions of key-value history kept before the leader compacts
    /// (0: never compact).
    pub retain_revisions: Option<u64>,
    /// Bytes of past key-value versions kept before the leader compacts,
    /// whatever `retain_revisions` says (0: no byte bound; default 64 MiB).
    pub retain_bytes: Option<u64>,
    /// Largest value a key may hold, in bytes (1 to 524,288).
    pub max_value_bytes: Option<usize>,
    /// Snapshot the store every this many log entries and forget the log
    /// before it (0: never).
    pub snapshot_entries: Option<u64>,
    /// TCP address of the Redis-protocol (RESP) port, if any.
    pub resp_listen: Option<SocketAddr>,
    /// Serve RESP in plaintext (loopback addresses only) instead of TLS.
    pub resp_insecure: Option<bool>,
    /// The cache namespace the RESP port serves (default `default`).
    pub resp_namespace: Option<String>,
}

impl FileConfig {
    /// Reads and parses `path`; the error names the file and the bad key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            why: e.to_string(),
        })
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A complete, checked node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name (must match the certificate).
    pub name: String,
    /// UDP address for peers and clients.
    pub listen: SocketAddr,
    /// Members to join through (empty: form a cluster).
    pub seeds: Vec<SocketAddr>,
    /// Names of the voters.
    pub voters: Vec<String>,
    /// Election priority.
    pub priority: u32,
    /// Where durable state lives.
    pub data_dir: PathBuf,
    /// CA certificate.
    pub ca_file: PathBuf,
    /// Node certificate.
    pub cert_file: PathBuf,
    /// Node private key.
    pub key_file: PathBuf,
    /// HTTP admin address, if any.
    pub admin_listen: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// How long a watch that is behind may go without its reader taking
    /// anything before it is cancelled.
    pub watch_stall_timeout: std::time::Duration,
    /// Key-value history kept (revisions; 0: never compact).
    pub retain_revisions: u64,
    /// Key-value history kept (bytes of past versions; 0: no bound).
    pub retain_bytes: u64,
    /// Log entries between snapshots (0: never snapshot).
    pub snapshot_entries: u64,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// The Redis-protocol port's address, if any.
    pub resp_listen: Option<SocketAddr>,
    /// Plaintext RESP (refused at start unless `resp_listen` is loopback).
    pub resp_insecure: bool,
    /// The cache namespace RESP serves.
    pub resp_namespace: String,
}

/// The most a value may be: one log entry (512 KiB) less room for the key
/// and the command's encoding.
pub const MAX_VALUE_LIMIT: usize = 512 * 1024;

/// A refused configuration, naming the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {why}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The file is not valid TOML for a node, e.g. an unknown key.
    #[error("invalid config {path}: {why}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        why: String,
    },
    /// A required key is missing everywhere.
    #[error("missing `{0}`: set it with --{flag}, CLUSTRON_{env} or `{0} = ...` in the config file", flag = .0.replace('_', "-"), env = .0.to_uppercase())]
    Missing(&'static str),
    /// A value is out of range or malformed.
    #[error("invalid `{key}` = {value:?}: {why}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        why: String,
    },
}

impl NodeConfig {
    /// Merges `flags` (flags and environment, already merged by clap) over
    /// `file`, and checks the result.
    pub fn resolve(flags: FileConfig, file: FileConfig) -> Result<Self, ConfigError> {
        let name = flags
            .name
            .or(file.name)
            .ok_or(ConfigError::Missing("name"))?;
        if clustron_transport::PeerName::new(&name).is_err() {
            return Err(ConfigError::Invalid {
                key: "name",
                value: name,
                why: "1-64 characters from A-Z a-z 0-9 . _ -".into(),
            });
        }
        let log_format = match flags.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "log_format",
                    value: other.into(),
                    why: "expected `text` or `json`".into(),
                })
            }
        };
        let watch_stall_timeout_secs = flags
            .watch_stall_timeout_secs
            .or(file.watch_stall_timeout_secs)
            .unwrap_or(30);
        if !(1..=3600).contains(&watch_stall_timeout_secs) {
            return Err(ConfigError::Invalid {
                key: "watch_stall_timeout_secs",
                value: watch_stall_timeout_secs.to_string(),
                why: "expected 1 to 3600 seconds".into(),
            });
        }
        let max_value_bytes = flags
            .max_value_bytes
            .or(file.max_value_bytes)
            .unwrap_or(MAX_VALUE_LIMIT - 8 * 1024);
        if !(1..=MAX_VALUE_LIMIT).contains(&max_value_bytes) {
            return Err(ConfigError::Invalid {
                key: "max_value_bytes",
                value: max_value_bytes.to_string(),
                why: format!("expected 1 to {MAX_VALUE_LIMIT}"),
            });
        }
        let voters = flags.voters.or(file.voters).unwrap_or_default();
        if let Some(bad) = voters
            .iter()
            .find(|v| clustron_transport::PeerName::new(v).is_err())
        {
            return Err(ConfigError::Invalid {
                key: "voters",
                value: bad.clone(),
                why: "not a valid node name".into(),
            });
        }
        let resp_namespace = flags
            .resp_namespace
            .or(file.resp_namespace)
            .unwrap_or_else(|| "default".to_owned());
        let named = crate::cache::NamespaceConfig {
            name: resp_namespace.clone(),
            ..Default::default()
        };
        if named.validate().is_err() {
            return Err(ConfigError::Invalid {
                key: "resp_namespace",
                value: resp_namespace,
                why: "1 to 64 characters out of A-Z a-z 0-9 _ - .".into(),
            });
        }
        Ok(Self {
            resp_listen: flags.resp_listen.or(file.resp_listen),
            resp_insecure: flags.resp_insecure.or(file.resp_insecure).unwrap_or(false),
            resp_namespace,
            listen: flags
                .listen
                .or(file.listen)
                .ok_or(ConfigError::Missing("listen"))?,
            seeds: flags.seeds.or(file.seeds).unwrap_or_default(),
            voters,
            priority: flags.priority.or(file.priority).unwrap_or(0),
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .ok_or(ConfigError::Missing("data_dir"))?,
            ca_file: flags
                .ca_file
                .or(file.ca_file)
                .ok_or(ConfigError::Missing("ca_file"))?,
            cert_file: flags
                .cert_file
                .or(file.cert_file)
                .ok_or(ConfigError::Missing("cert_file"))?,
            key_file: flags
                .key_file
                .or(file.key_file)
                .ok_or(ConfigError::Missing("key_file"))?,
            admin_listen: flags.admin_listen.or(file.admin_listen),
            log_format,
            watch_stall_timeout: std::time::Duration::from_secs(watch_stall_timeout_secs),
            retain_revisions: flags
                .retain_revisions
                .or(file.retain_revisions)
                .unwrap_or(DEFAULT_RETAIN_REVISIONS),
            retain_bytes: flags.retain_bytes.or(file.retain_bytes).unwrap_or(64 << 20),
            snapshot_entries: flags
                .snapshot_entries
                .or(file.snapshot_entries)
                .unwrap_or(10_000),
            max_value_bytes,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> FileConfig {
        FileConfig {
            name: Some("n1".into()),
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            data_dir: Some("/tmp/x".into()),
            ca_file: Some("ca.pem".into()),
            cert_file: Some("n1.pem".into()),
            key_file: Some("n1.key".into()),
            ..FileConfig::default()
        }
    }

    #[test]
    fn flags_override_the_file() {
        let flags = FileConfig {
            priority: Some(9),
            ..FileConfig::default()
        };
        let file = FileConfig {
            priority: Some(1),
            ..full()
        };
        assert_eq!(NodeConfig::resolve(flags, file).unwrap().priority, 9);
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused_by_name() {
        let err = toml::from_str::<FileConfig>("name = \"n1\"\nlisten_port = 3\n").unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn missing_and_bad_values_are_named() {
        let err = NodeConfig::resolve(FileConfig::default(), FileConfig::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing `name`: set it with --name, CLUSTRON_NAME or `name = ...` in the config file"
        );
        let bad = FileConfig {
            log_format: Some("xml".into()),
            ..full()
        };
        let err = NodeConfig::resolve(FileConfig::default(), bad).unwrap_err();
        assert!(err.to_string().contains("log_format"), "{err}");
        let bad = FileConfig {
            name: Some("no spaces".into()),
            ..full()
        };
        assert!(NodeConfig::resolve(FileConfig::default(), bad).is_err());
        let bad = FileConfig {
            watch_stall_timeout_secs: Some(0),
            ..full()
        };
        let err = NodeConfig::resolve(FileConfig::default(), bad).unwrap_err();
        assert!(
            err.to_string().contains("watch_stall_timeout_secs"),
            "{err}"
        );
        let bad = FileConfig {
            max_value_bytes: Some(10 << 20),
            ..full()
        };
        let err = NodeConfig::resolve(FileConfig::default(), bad).unwrap_err();
        assert!(err.to_string().contains("max_value_bytes"), "{err}");
    }

    #[test]
    fn resp_settings_read_from_the_file_and_flags_override_them() {
        let file: FileConfig = toml::from_str(
            "resp_listen = \"127.0.0.1:6379\"\nresp_insecure = true\nresp_namespace = \"sessions\"\n",
        )
        .unwrap();
        let file = FileConfig {
            resp_listen: file.resp_listen,
            resp_insecure: file.resp_insecure,
            resp_namespace: file.resp_namespace,
            ..full()
        };
        let config = NodeConfig::resolve(FileConfig::default(), file.clone()).unwrap();
        assert_eq!(config.resp_listen, Some("127.0.0.1:6379".parse().unwrap()));
        assert!(config.resp_insecure);
        assert_eq!(config.resp_namespace, "sessions");
        let flags = FileConfig {
            resp_insecure: Some(false),
            ..FileConfig::default()
        };
        let config = NodeConfig::resolve(flags, file).unwrap();
        assert!(!config.resp_insecure);
        let defaults = NodeConfig::resolve(FileConfig::default(), full()).unwrap();
        assert_eq!(
            (defaults.resp_listen, defaults.resp_namespace.as_str()),
            (None, "default")
        );
        let bad = FileConfig {
            resp_namespace: Some("no spaces".into()),
            ..full()
        };
        let err = NodeConfig::resolve(FileConfig::default(), bad).unwrap_err();
        assert!(err.to_string().contains("resp_namespace"), "{err}");
    }

    #[test]
    fn key_value_settings_have_defaults_and_read_from_the_file() {
        let config = NodeConfig::resolve(FileConfig::default(), full()).unwrap();
        assert_eq!(config.retain_revisions, DEFAULT_RETAIN_REVISIONS);
        assert!(config.max_value_bytes < MAX_VALUE_LIMIT);
        let file: FileConfig =
            toml::from_str("retain_revisions = 0\nmax_value_bytes = 1024\n").unwrap();
        let file = FileConfig {
            retain_revisions: file.retain_revisions,
            max_value_bytes: file.max_value_bytes,
            ..full()
        };
        let config = NodeConfig::resolve(FileConfig::default(), file).unwrap();
        assert_eq!((config.retain_revisions, config.max_value_bytes), (0, 1024));
    }
}
