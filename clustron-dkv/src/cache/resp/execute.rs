//! Running a request: authorise it, turn it into [`CacheOp`]s, run them on
//! the [`CacheBackend`], and shape the answer as Redis would.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use clustron_transport::PeerKind;

use super::backend::CacheBackend;
use super::codec::{Args, Reply};
use super::command::{
    spec_of, ClientCommand, Command, CommandError, CommandQuery, Expiry, Set, SetCondition, Spec,
    SPECS,
};
use crate::access::{level_of, Level};
use crate::cache::{CacheError, CacheOp, CacheReply, PutCondition, TtlState};

/// The version the front end announces in `HELLO` and `INFO`: the Redis
/// release whose behaviour the supported commands follow.
pub const REDIS_VERSION: &str = "7.0.0";

/// Operations of one multi-key command in flight at once; more keys are
/// run in successive groups of this size.
const MULTI_KEY_CONCURRENCY: usize = 256;

/// One connection's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Connection id (`CLIENT ID`), unique per listener.
    pub id: u64,
    /// Who is connected, from the client certificate.
    pub kind: PeerKind,
    /// The name set by `CLIENT SETNAME` or `HELLO ... SETNAME`.
    pub name: Option<Vec<u8>>,
    /// Set by `QUIT`: the connection closes after this reply.
    pub quit: bool,
}

impl Session {
    /// A new connection's state.
    pub fn new(id: u64, kind: PeerKind) -> Session {
        Session {
            id,
            kind,
            name: None,
            quit: false,
        }
    }

    fn may_write(&self) -> bool {
        level_of(self.kind) >= Level::Write
    }

    fn role(&self) -> &'static str {
        match self.kind {
            PeerKind::Node => "node",
            PeerKind::Client(role) => role.as_str(),
        }
    }
}

/// Runs one request and answers it. `now_unix_ms` is the wall clock, for
/// `EXAT` and `PXAT`.
///
/// A command that writes is refused with `-NOPERM` before anything reaches
/// the backend when the session's role may not write.
pub async fn execute<B: CacheBackend>(
    backend: &B,
    session: &mut Session,
    args: Args,
    now_unix_ms: u64,
) -> Reply {
    let name = args.first().and_then(|name| spec_of(name)).map(|s| s.name);
    let command = match Command::parse(args) {
        Ok(command) => command,
        Err(error) => return Reply::Error(error.to_string()),
    };
    if command.is_write() && !session.may_write() {
        return Reply::Error(format!(
            "NOPERM this certificate's role ({}) may not run the '{}' command",
            session.role(),
            name.unwrap_or("?")
        ));
    }
    let guarded = Guarded {
        backend,
        may_write: session.may_write(),
    };
    match run(&guarded, session, command, now_unix_ms).await {
        Ok(reply) => reply,
        Err(error) => error.into_reply(),
    }
}

/// The backend behind a second check of the role: whatever the command
/// layer decides, a write operation from a read-only session never
/// reaches the backend.
struct Guarded<'a, B> {
    backend: &'a B,
    may_write: bool,
}

impl<B: CacheBackend> Guarded<'_, B> {
    async fn op(&self, op: CacheOp) -> Result<CacheReply, Failure> {
        if op.is_write() && !self.may_write {
            return Err(Failure::Cache(CacheError::ReadOnly));
        }
        Ok(self.backend.execute(op).await?)
    }

    /// Runs one operation per key, concurrently, answers in key order; the
    /// first failure (in key order) fails the whole command.
    async fn each(&self, ops: Vec<CacheOp>) -> Result<Vec<CacheReply>, Failure> {
        let mut replies = Vec::with_capacity(ops.len().min(MULTI_KEY_CONCURRENCY));
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let group: Vec<_> = ops
                .by_ref()
                .take(MULTI_KEY_CONCURRENCY)
                .map(|op| self.op(op))
                .collect();
            for reply in join_all(group).await {
                replies.push(reply?);
            }
        }
        Ok(replies)
    }
}

/// Why a command failed after parsing.
enum Failure {
    Cache(CacheError),
    Command(CommandError),
    /// The backend answered with a reply of the wrong kind: a bug there.
    Unexpected(CacheReply),
}

impl From<CacheError> for Failure {
    fn from(error: CacheError) -> Self {
        Failure::Cache(error)
    }
}

impl From<CommandError> for Failure {
    fn from(error: CommandError) -> Self {
        Failure::Command(error)
    }
}

impl Failure {
    fn into_reply(self) -> Reply {
        match self {
            Failure::Cache(error) => cache_error_reply(&error),
            Failure::Command(error) => Reply::Error(error.to_string()),
            Failure::Unexpected(reply) => {
                Reply::err(format!("internal error: unexpected cache reply {reply:?}"))
            }
        }
    }
}

/// A cache error as a Redis error line: `TRYAGAIN` for what a retry may
/// fix (the key's partition is moving or has no owner yet), `NOPERM` for
/// a refused write, `ERR` for the rest.
pub fn cache_error_reply(error: &CacheError) -> Reply {
    let code = match error {
        CacheError::WrongOwner { .. } | CacheError::Unavailable(_) | CacheError::NotReady(_) => {
            "TRYAGAIN"
        }
        CacheError::ReadOnly => "NOPERM",
        CacheError::NotInteger
        | CacheError::Overflow
        | CacheError::NoNamespace(_)
        | CacheError::TooLarge { .. }
        | CacheError::Refused(_)
        | CacheError::Unknown(_) => "ERR",
    };
    Reply::Error(format!("{code} {error}"))
}

async fn run<B: CacheBackend>(
    cache: &Guarded<'_, B>,
    session: &mut Session,
    command: Command,
    now_unix_ms: u64,
) -> Result<Reply, Failure> {
    let reply = match command {
        Command::Ping(None) => Reply::Simple("PONG".into()),
        Command::Ping(Some(message)) | Command::Echo(message) => Reply::Bulk(message),
        Command::Get(key) => match cache.op(CacheOp::Get { key }).await? {
            CacheReply::Value(value) => value.map_or(Reply::NullBulk, |v| Reply::Bulk(v.value)),
            other => return Err(Failure::Unexpected(other)),
        },
        Command::Set(set) => return set_command(cache, set, now_unix_ms).await,
        Command::SetNx { key, value } => {
            let op = put(key, value, None, PutCondition::IfAbsent, false, false);
            Reply::Integer(i64::from(stored(cache.op(op).await?)?.0))
        }
        Command::Del(mut keys) => {
            // Each key once: two deletes of one key in flight together
            // would race, and Redis counts it once.
            keys.sort();
            keys.dedup();
            let ops = keys
                .into_iter()
                .map(|key| CacheOp::Delete { key })
                .collect();
            count(cache.each(ops).await?)?
        }
        Command::Exists(keys) => {
            let ops = keys
                .into_iter()
                .map(|key| CacheOp::Exists { key })
                .collect();
            count(cache.each(ops).await?)?
        }
        Command::Expire { name, key, ttl_ms } => {
            let op = match u64::try_from(ttl_ms) {
                // Redis deletes a key given a time in the past.
                Ok(0) | Err(_) => CacheOp::Delete { key },
                Ok(ms) => {
                    check_deadline(now_unix_ms, ms, name)?;
                    CacheOp::Expire {
                        key,
                        ttl_ms: Some(ms),
                    }
                }
            };
            boolean(cache.op(op).await?)?
        }
        Command::Persist(key) => boolean(cache.op(CacheOp::Expire { key, ttl_ms: None }).await?)?,
        Command::Ttl { key, millis } => match cache.op(CacheOp::Ttl { key }).await? {
            CacheReply::Ttl(TtlState::Absent) => Reply::Integer(-2),
            CacheReply::Ttl(TtlState::Persistent) => Reply::Integer(-1),
            CacheReply::Ttl(TtlState::Millis(ms)) => {
                // TTL rounds to the nearest second, as Redis does.
                let shown = if millis {
                    ms
                } else {
                    ms.saturating_add(500) / 1000
                };
                Reply::Integer(i64::try_from(shown).unwrap_or(i64::MAX))
            }
            other => return Err(Failure::Unexpected(other)),
        },
        Command::IncrBy { key, by } => match cache.op(CacheOp::Incr { key, by }).await? {
            CacheReply::Integer(n) => Reply::Integer(n),
            other => return Err(Failure::Unexpected(other)),
        },
        Command::MGet(keys) => {
            let ops = keys.into_iter().map(|key| CacheOp::Get { key }).collect();
            let mut values = Vec::new();
            for reply in cache.each(ops).await? {
                values.push(match reply {
                    CacheReply::Value(value) => {
                        value.map_or(Reply::NullBulk, |v| Reply::Bulk(v.value))
                    }
                    other => return Err(Failure::Unexpected(other)),
                });
            }
            Reply::Array(values)
        }
        Command::MSet(pairs) => {
            // The last value of a key given twice wins, as in Redis; two
            // puts of one key in flight together would race.
            let mut last = std::collections::HashMap::new();
            for (index, (key, _)) in pairs.iter().enumerate() {
                last.insert(key.clone(), index);
            }
            let ops = pairs
                .into_iter()
                .enumerate()
                .filter(|(index, (key, _))| last.get(key) == Some(index))
                .map(|(_, (key, value))| put(key, value, None, PutCondition::Always, false, false))
                .collect();
            for reply in cache.each(ops).await? {
                stored(reply)?;
            }
            Reply::ok()
        }
        Command::Append { key, value } => length(cache.op(CacheOp::Append { key, value }).await?)?,
        Command::Strlen(key) => length(cache.op(CacheOp::Strlen { key }).await?)?,
        Command::DbSize => {
            let size = cache.backend.size().await?;
            Reply::Integer(i64::try_from(size).unwrap_or(i64::MAX))
        }
        Command::FlushDb => {
            if !cache.may_write {
                return Err(Failure::Cache(CacheError::ReadOnly));
            }
            cache.backend.flush().await?;
            Reply::ok()
        }
        Command::Info => Reply::Bulk(info(cache.backend).into_bytes()),
        Command::Command(query) => command_query(query),
        Command::Client(client) => match client {
            ClientCommand::SetName(name) => {
                session.name = (!name.is_empty()).then_some(name);
                Reply::ok()
            }
            ClientCommand::GetName => session.name.clone().map_or(Reply::NullBulk, Reply::Bulk),
            ClientCommand::Id => Reply::Integer(i64::try_from(session.id).unwrap_or(i64::MAX)),
            ClientCommand::SetInfo => Reply::ok(),
            ClientCommand::Help => help(&[
                "CLIENT <subcommand> [<arg> ...]. Subcommands are:",
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "SETINFO <attribute> <value>",
                "    Accepted and ignored.",
                "HELP",
                "    Print this help.",
            ]),
        },
        Command::Select => Reply::ok(),
        Command::Hello { setname } => {
            if let Some(name) = setname {
                session.name = Some(name);
            }
            let id = i64::try_from(session.id).unwrap_or(i64::MAX);
            Reply::Array(vec![
                Reply::bulk("server"),
                Reply::bulk("redis"),
                Reply::bulk("version"),
                Reply::bulk(REDIS_VERSION),
                Reply::bulk("proto"),
                Reply::Integer(2),
                Reply::bulk("id"),
                Reply::Integer(id),
                Reply::bulk("mode"),
                Reply::bulk("standalone"),
                Reply::bulk("role"),
                Reply::bulk("master"),
                Reply::bulk("modules"),
                Reply::Array(vec![]),
            ])
        }
        Command::Auth => Reply::Error(CommandError::NoPassword.to_string()),
        Command::Quit => {
            session.quit = true;
            Reply::ok()
        }
        Command::ConfigGet(patterns) => config_get(&patterns),
    };
    Ok(reply)
}

async fn set_command<B: CacheBackend>(
    cache: &Guarded<'_, B>,
    set: Set,
    now_unix_ms: u64,
) -> Result<Reply, Failure> {
    let ttl_ms = match set.expiry {
        None => None,
        Some(Expiry::In(ms)) => {
            check_deadline(now_unix_ms, ms, set.name)?;
            Some(ms)
        }
        // A time already past keeps the key for the least time the store
        // knows, 1 ms: Redis too answers OK and the key is gone at once.
        Some(Expiry::At(at_ms)) => Some(at_ms.saturating_sub(now_unix_ms).max(1)),
    };
    let condition = match set.condition {
        SetCondition::Always => PutCondition::Always,
        SetCondition::IfAbsent => PutCondition::IfAbsent,
        SetCondition::IfPresent => PutCondition::IfPresent,
    };
    let op = put(set.key, set.value, ttl_ms, condition, set.keep_ttl, set.get);
    let (stored, old) = stored(cache.op(op).await?)?;
    Ok(match (set.get, stored) {
        (true, _) => old.map_or(Reply::NullBulk, Reply::Bulk),
        (false, true) => Reply::ok(),
        (false, false) => Reply::NullBulk,
    })
}

/// Redis refuses an expiry whose absolute time overflows a signed 64-bit
/// count of milliseconds.
fn check_deadline(now_unix_ms: u64, ttl_ms: u64, name: &'static str) -> Result<(), CommandError> {
    match now_unix_ms.checked_add(ttl_ms) {
        Some(at) if i64::try_from(at).is_ok() => Ok(()),
        _ => Err(CommandError::InvalidExpire(name)),
    }
}

fn put(
    key: Vec<u8>,
    value: Vec<u8>,
    ttl_ms: Option<u64>,
    condition: PutCondition,
    keep_ttl: bool,
    return_old: bool,
) -> CacheOp {
    CacheOp::Put {
        key,
        value,
        ttl_ms,
        condition,
        keep_ttl,
        return_old,
    }
}

fn stored(reply: CacheReply) -> Result<(bool, Option<Vec<u8>>), Failure> {
    match reply {
        CacheReply::Stored { stored, old, .. } => Ok((stored, old)),
        other => Err(Failure::Unexpected(other)),
    }
}

fn boolean(reply: CacheReply) -> Result<Reply, Failure> {
    match reply {
        CacheReply::Bool(b) => Ok(Reply::Integer(i64::from(b))),
        other => Err(Failure::Unexpected(other)),
    }
}

fn count(replies: Vec<CacheReply>) -> Result<Reply, Failure> {
    let mut n = 0;
    for reply in replies {
        match reply {
            CacheReply::Bool(b) => n += i64::from(b),
            other => return Err(Failure::Unexpected(other)),
        }
    }
    Ok(Reply::Integer(n))
}

fn length(reply: CacheReply) -> Result<Reply, Failure> {
    match reply {
        CacheReply::Len(n) => Ok(Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX))),
        other => Err(Failure::Unexpected(other)),
    }
}

fn help(lines: &[&str]) -> Reply {
    Reply::Array(lines.iter().map(|l| Reply::Simple((*l).into())).collect())
}

/// `INFO`: our `# Server` section, then the backend's.
fn info<B: CacheBackend>(backend: &B) -> String {
    format!(
        "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\n\
         server_name:clustron\r\nclustron_version:{}\r\n\r\n{}",
        env!("CARGO_PKG_VERSION"),
        backend.info()
    )
}

/// A command's summary in the RESP2 form of `COMMAND INFO`: name, arity,
/// flags, first key, last key, step.
fn command_info(spec: &Spec) -> Reply {
    let flag = if spec.write { "write" } else { "readonly" };
    Reply::Array(vec![
        Reply::bulk(spec.name),
        Reply::Integer(i64::from(spec.arity)),
        Reply::Array(vec![Reply::Simple(flag.into())]),
        Reply::Integer(i64::from(spec.keys.0)),
        Reply::Integer(i64::from(spec.keys.1)),
        Reply::Integer(i64::from(spec.keys.2)),
    ])
}

fn command_query(query: CommandQuery) -> Reply {
    match query {
        CommandQuery::All => Reply::Array(SPECS.iter().map(command_info).collect()),
        CommandQuery::Count => Reply::Integer(SPECS.len() as i64),
        CommandQuery::List => Reply::Array(SPECS.iter().map(|s| Reply::bulk(s.name)).collect()),
        CommandQuery::Info(names) => Reply::Array(
            names
                .iter()
                .map(|name| spec_of(name).map_or(Reply::NullBulk, command_info))
                .collect(),
        ),
        CommandQuery::Docs => Reply::Array(vec![]),
        CommandQuery::Help => help(&[
            "COMMAND <subcommand> [<arg> ...]. Subcommands are:",
            "(no subcommand)",
            "    Return details about all commands.",
            "COUNT",
            "    Return the total number of commands.",
            "INFO <command-name> [<command-name> ...]",
            "    Return details about the given commands.",
            "LIST",
            "    Return the names of all commands.",
            "DOCS",
            "    Answered with an empty list.",
        ]),
    }
}

/// `CONFIG GET`: what benchmark tools ask (`save`, `appendonly`), with the
/// values that describe a cache: no snapshots, no append-only file.
fn config_get(patterns: &[Vec<u8>]) -> Reply {
    const KNOWN: &[(&str, &str)] = &[("save", ""), ("appendonly", "no"), ("databases", "1")];
    let mut pairs = Vec::new();
    for (name, value) in KNOWN {
        let wanted = patterns
            .iter()
            .any(|p| p.as_slice() == b"*" || p.eq_ignore_ascii_case(name.as_bytes()));
        if wanted {
            pairs.push(Reply::bulk(*name));
            pairs.push(Reply::bulk(*value));
        }
    }
    Reply::Array(pairs)
}

/// Polls every future until all are done; outputs in input order.
pub(super) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        match pending {
            true => Poll::Pending,
            false => Poll::Ready(()),
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
