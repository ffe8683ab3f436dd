//! Commands: the supported subset of Redis, parsed from a request's
//! arguments with Redis's arity checks and error texts.
//!
//! [`Command::parse`] checks the name, the argument count and the options;
//! it never touches the cache. [`SPECS`] is the command table (arity, whether
//! it writes, where its keys are), also answered to `COMMAND`.

use std::fmt;

use super::codec::Args;

/// What the command table says about one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis arity: `n` exactly n arguments (the name included), `-n` at
    /// least n.
    pub arity: i32,
    /// Whether it may change the cache (refused to a read-only role).
    pub write: bool,
    /// First key argument, last (negative: from the end), step; zeros
    /// when it takes no key.
    pub keys: (i32, i32, i32),
}

const fn spec(name: &'static str, arity: i32, write: bool, keys: (i32, i32, i32)) -> Spec {
    Spec {
        name,
        arity,
        write,
        keys,
    }
}

const NO_KEYS: (i32, i32, i32) = (0, 0, 0);
const ONE_KEY: (i32, i32, i32) = (1, 1, 1);
const ALL_KEYS: (i32, i32, i32) = (1, -1, 1);

/// Every supported command, in `COMMAND LIST` order.
pub const SPECS: &[Spec] = &[
    spec("append", 3, true, ONE_KEY),
    spec("auth", -2, false, NO_KEYS),
    spec("client", -2, false, NO_KEYS),
    spec("command", -1, false, NO_KEYS),
    spec("config", -2, false, NO_KEYS),
    spec("dbsize", 1, false, NO_KEYS),
    spec("decr", 2, true, ONE_KEY),
    spec("decrby", 3, true, ONE_KEY),
    spec("del", -2, true, ALL_KEYS),
    spec("echo", 2, false, NO_KEYS),
    spec("exists", -2, false, ALL_KEYS),
    spec("expire", -3, true, ONE_KEY),
    spec("flushdb", -1, true, NO_KEYS),
    spec("get", 2, false, ONE_KEY),
    spec("getset", 3, true, ONE_KEY),
    spec("hello", -1, false, NO_KEYS),
    spec("incr", 2, true, ONE_KEY),
    spec("incrby", 3, true, ONE_KEY),
    spec("info", -1, false, NO_KEYS),
    spec("mget", -2, false, ALL_KEYS),
    spec("mset", -3, true, (1, -1, 2)),
    spec("persist", 2, true, ONE_KEY),
    spec("pexpire", -3, true, ONE_KEY),
    spec("ping", -1, false, NO_KEYS),
    spec("psetex", 4, true, ONE_KEY),
    spec("pttl", 2, false, ONE_KEY),
    spec("quit", -1, false, NO_KEYS),
    spec("select", 2, false, NO_KEYS),
    spec("set", -3, true, ONE_KEY),
    spec("setex", 4, true, ONE_KEY),
    spec("setnx", 3, true, ONE_KEY),
    spec("strlen", 2, false, ONE_KEY),
    spec("ttl", 2, false, ONE_KEY),
];

/// The table entry of `name`, in any case.
pub fn spec_of(name: &[u8]) -> Option<&'static Spec> {
    SPECS
        .iter()
        .find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

/// A key or a value.
pub type Bytes = Vec<u8>;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `PING [message]`.
    Ping(Option<Bytes>),
    /// `ECHO message`.
    Echo(Bytes),
    /// `GET key`.
    Get(Bytes),
    /// `SET`, and `SETEX`, `PSETEX`, `GETSET`, which are forms of it.
    Set(Set),
    /// `SETNX key value`: answers 1 or 0 rather than `OK` or nil.
    SetNx {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// `DEL key...`.
    Del(Vec<Bytes>),
    /// `EXISTS key...`.
    Exists(Vec<Bytes>),
    /// `EXPIRE` and `PEXPIRE`: a time of zero or less deletes the key.
    Expire {
        /// `expire` or `pexpire`, for error texts.
        name: &'static str,
        /// The key.
        key: Bytes,
        /// Milliseconds from now.
        ttl_ms: i64,
    },
    /// `TTL` (`millis` false) and `PTTL`.
    Ttl {
        /// The key.
        key: Bytes,
        /// Answer in milliseconds (`PTTL`) rather than rounded seconds.
        millis: bool,
    },
    /// `PERSIST key`.
    Persist(Bytes),
    /// `INCR`, `INCRBY`, `DECR`, `DECRBY`.
    IncrBy {
        /// The key.
        key: Bytes,
        /// The increment (negative to decrement).
        by: i64,
    },
    /// `MGET key...`.
    MGet(Vec<Bytes>),
    /// `MSET key value [key value...]`.
    MSet(Vec<(Bytes, Bytes)>),
    /// `APPEND key value`.
    Append {
        /// The key.
        key: Bytes,
        /// What to append.
        value: Bytes,
    },
    /// `STRLEN key`.
    Strlen(Bytes),
    /// `DBSIZE`.
    DbSize,
    /// `FLUSHDB [ASYNC|SYNC]`.
    FlushDb,
    /// `INFO [section...]`: sections are ignored, everything is answered.
    Info,
    /// `COMMAND` and its subcommands.
    Command(CommandQuery),
    /// `CLIENT` subcommands.
    Client(ClientCommand),
    /// `SELECT 0` (any other index is refused while parsing).
    Select,
    /// `HELLO [2 [SETNAME name]]`.
    Hello {
        /// A new connection name.
        setname: Option<Bytes>,
    },
    /// `AUTH ...`: the certificate authenticates; always refused.
    Auth,
    /// `QUIT`.
    Quit,
    /// `CONFIG GET parameter...`.
    ConfigGet(Vec<Bytes>),
}

/// A write of one key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// The command's name, for error texts (`set`, `setex`, `psetex`,
    /// `getset`).
    pub name: &'static str,
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// When it expires; `None`: never (or as now, with `keep_ttl`).
    pub expiry: Option<Expiry>,
    /// `NX` or `XX`.
    pub condition: SetCondition,
    /// Keep the key's current expiry (`KEEPTTL`).
    pub keep_ttl: bool,
    /// Answer the previous value (`GET`, and `GETSET`) rather than `OK`.
    pub get: bool,
}

/// When a `SET` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    /// Always.
    Always,
    /// `NX`: only if absent.
    IfAbsent,
    /// `XX`: only if present.
    IfPresent,
}

/// A `SET` expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `EX`, `PX`: milliseconds from now (at least 1).
    In(u64),
    /// `EXAT`, `PXAT`: a Unix time in milliseconds (at least 1).
    At(u64),
}

/// `COMMAND` subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandQuery {
    /// `COMMAND`: every command's summary.
    All,
    /// `COMMAND COUNT`.
    Count,
    /// `COMMAND LIST` (filters are ignored).
    List,
    /// `COMMAND INFO name...`.
    Info(Vec<Bytes>),
    /// `COMMAND DOCS [name...]`: answered with an empty list.
    Docs,
    /// `COMMAND HELP`.
    Help,
}

/// `CLIENT` subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    /// `CLIENT SETNAME name`.
    SetName(Bytes),
    /// `CLIENT GETNAME`.
    GetName,
    /// `CLIENT ID`.
    Id,
    /// `CLIENT SETINFO attribute value` (sent by recent client libraries):
    /// accepted and ignored.
    SetInfo,
    /// `CLIENT HELP`.
    Help,
}

/// Why a request is not a command we run. Its text is the whole error
/// line, code first, as Redis writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// No such command (`name` and the quoted first arguments, as given).
    Unknown {
        /// The name as sent.
        name: String,
        /// `'a' 'b' ` — the first arguments, quoted, at most 128 bytes.
        args: String,
    },
    /// No such subcommand of a command we know.
    UnknownSubcommand {
        /// The subcommand as sent.
        sub: String,
        /// The command, upper case.
        command: String,
    },
    /// Wrong argument count; the command's full name (`get`,
    /// `client|setname`).
    Arity(String),
    /// Options that do not go together, or an unknown one.
    Syntax,
    /// An argument that must be a 64-bit integer is not.
    NotInteger,
    /// An expiry of zero or less, or one that overflows (`set`, `setex`...).
    InvalidExpire(&'static str),
    /// `DECRBY` of the smallest integer.
    DecrementOverflow,
    /// An option of `EXPIRE` we do not support (`NX`, `XX`, `GT`, `LT`).
    UnsupportedOption(String),
    /// `SELECT` of something not a number.
    InvalidDbIndex,
    /// `SELECT` of a database other than 0.
    DbIndexOutOfRange,
    /// A `CLIENT SETNAME` with spaces or special characters.
    BadClientName,
    /// `HELLO` with a version that is not a number.
    ProtocolNotInteger,
    /// `HELLO` with a version other than 2.
    NoProto,
    /// `AUTH`, or `HELLO ... AUTH`: the certificate authenticates.
    NoPassword,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown { name, args } => write!(
                f,
                "ERR unknown command '{name}', with args beginning with: {args}"
            ),
            Self::UnknownSubcommand { sub, command } => {
                write!(f, "ERR unknown subcommand '{sub}'. Try {command} HELP.")
            }
            Self::Arity(name) => write!(f, "ERR wrong number of arguments for '{name}' command"),
            Self::Syntax => f.write_str("ERR syntax error"),
            Self::NotInteger => f.write_str("ERR value is not an integer or out of range"),
            Self::InvalidExpire(name) => write!(f, "ERR invalid expire time in '{name}' command"),
            Self::DecrementOverflow => f.write_str("ERR decrement would overflow"),
            Self::UnsupportedOption(option) => write!(f, "ERR Unsupported option {option}"),
            Self::InvalidDbIndex => f.write_str("ERR invalid DB index"),
            Self::DbIndexOutOfRange => f.write_str("ERR DB index is out of range"),
            Self::BadClientName => f.write_str(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            ),
            Self::ProtocolNotInteger => {
                f.write_str("ERR Protocol version is not an integer or out of range")
            }
            Self::NoProto => f.write_str("NOPROTO unsupported protocol version"),
            Self::NoPassword => f.write_str(
                "ERR AUTH <password> called without any password configured for the default \
                 user. Are you sure your configuration is correct? (Clustron authenticates \
                 RESP clients by their TLS certificate)",
            ),
        }
    }
}

impl std::error::Error for CommandError {}

/// Text for an error message: at most `max` bytes, lossy UTF-8.
fn shown(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned()
}

/// A 64-bit integer as Redis reads one: an optional `-`, then digits with
/// no leading zero (`0` itself aside), no sign `+`, no blanks.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    if bytes == b"0" {
        return Some(0);
    }
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    match digits.first() {
        Some(b'1'..=b'9') if digits.iter().all(u8::is_ascii_digit) => {}
        _ => return None,
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn integer(bytes: &[u8]) -> Result<i64, CommandError> {
    parse_integer(bytes).ok_or(CommandError::NotInteger)
}

/// An expiry argument in `unit_ms` milliseconds per unit: positive, and
/// no overflow in milliseconds.
fn expiry_ms(bytes: &[u8], unit_ms: i64, command: &'static str) -> Result<u64, CommandError> {
    let n = integer(bytes)?;
    n.checked_mul(unit_ms)
        .filter(|&ms| ms > 0)
        .map(|ms| ms.unsigned_abs())
        .ok_or(CommandError::InvalidExpire(command))
}

impl Command {
    /// Parses a request. `args` holds at least the name (the decoder never
    /// returns an empty command).
    pub fn parse(args: Args) -> Result<Command, CommandError> {
        let Some(name) = args.first() else {
            return Err(CommandError::Syntax);
        };
        let Some(spec) = spec_of(name) else {
            return Err(unknown(&args));
        };
        let count = args.len() as i64;
        let arity = i64::from(spec.arity);
        if (arity >= 0 && count != arity) || (arity < 0 && count < -arity) {
            return Err(CommandError::Arity(spec.name.to_owned()));
        }
        let mut args = args.into_iter();
        args.next();
        let rest: Vec<Bytes> = args.collect();
        parse_known(spec.name, rest)
    }

    /// Whether it may change the cache.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Set(_)
                | Command::SetNx { .. }
                | Command::Del(_)
                | Command::Expire { .. }
                | Command::Persist(_)
                | Command::IncrBy { .. }
                | Command::MSet(_)
                | Command::Append { .. }
                | Command::FlushDb
        )
    }
}

/// Redis's answer to an unknown command: the name and the first arguments
/// quoted, up to 128 bytes of them.
fn unknown(args: &Args) -> CommandError {
    let mut quoted = String::new();
    for arg in args.iter().skip(1) {
        if quoted.len() >= 128 {
            break;
        }
        let room = 128 - quoted.len();
        quoted.push_str(&format!("'{}' ", shown(arg, room)));
    }
    CommandError::Unknown {
        name: shown(&args[0], 128),
        args: quoted,
    }
}

/// Takes the arguments in order; the arity check made them present.
struct Rest(std::vec::IntoIter<Bytes>);

impl Rest {
    fn next(&mut self) -> Bytes {
        self.0.next().unwrap_or_default()
    }
}

fn parse_known(name: &'static str, args: Vec<Bytes>) -> Result<Command, CommandError> {
    let count = args.len();
    let all = args.clone();
    let mut rest = Rest(args.into_iter());
    let command = match name {
        "ping" => match count {
            0 => Command::Ping(None),
            1 => Command::Ping(Some(rest.next())),
            _ => return Err(CommandError::Arity(name.into())),
        },
        "echo" => Command::Echo(rest.next()),
        "get" => Command::Get(rest.next()),
        "set" => Command::Set(parse_set(rest.next(), rest.next(), &all[2..])?),
        "setex" | "psetex" => {
            let key = rest.next();
            let unit = if name == "setex" { 1000 } else { 1 };
            let ttl = expiry_ms(&rest.next(), unit, name)?;
            Command::Set(Set {
                name,
                key,
                value: rest.next(),
                expiry: Some(Expiry::In(ttl)),
                condition: SetCondition::Always,
                keep_ttl: false,
                get: false,
            })
        }
        "setnx" => Command::SetNx {
            key: rest.next(),
            value: rest.next(),
        },
        "getset" => Command::Set(Set {
            name,
            key: rest.next(),
            value: rest.next(),
            expiry: None,
            condition: SetCondition::Always,
            keep_ttl: false,
            get: true,
        }),
        "del" => Command::Del(all),
        "exists" => Command::Exists(all),
        "expire" | "pexpire" => {
            let key = rest.next();
            let n = integer(&rest.next())?;
            if let Some(option) = all.get(2) {
                return Err(CommandError::UnsupportedOption(shown(option, 128)));
            }
            let unit = if name == "expire" { 1000 } else { 1 };
            let ttl_ms = n
                .checked_mul(unit)
                .ok_or(CommandError::InvalidExpire(name))?;
            Command::Expire { name, key, ttl_ms }
        }
        "ttl" | "pttl" => Command::Ttl {
            key: rest.next(),
            millis: name == "pttl",
        },
        "persist" => Command::Persist(rest.next()),
        "incr" | "decr" => Command::IncrBy {
            key: rest.next(),
            by: if name == "incr" { 1 } else { -1 },
        },
        "incrby" => Command::IncrBy {
            key: rest.next(),
            by: integer(&rest.next())?,
        },
        "decrby" => {
            let key = rest.next();
            let by = integer(&rest.next())?;
            let by = by.checked_neg().ok_or(CommandError::DecrementOverflow)?;
            Command::IncrBy { key, by }
        }
        "mget" => Command::MGet(all),
        "mset" => {
            if count % 2 != 0 {
                return Err(CommandError::Arity(name.into()));
            }
            let mut pairs = Vec::with_capacity(count / 2);
            while pairs.len() < count / 2 {
                pairs.push((rest.next(), rest.next()));
            }
            Command::MSet(pairs)
        }
        "append" => Command::Append {
            key: rest.next(),
            value: rest.next(),
        },
        "strlen" => Command::Strlen(rest.next()),
        "dbsize" => Command::DbSize,
        "flushdb" => match all.as_slice() {
            [] => Command::FlushDb,
            [mode] if mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync") => {
                Command::FlushDb
            }
            _ => return Err(CommandError::Syntax),
        },
        "info" => Command::Info,
        "command" => Command::Command(parse_command_query(&all)?),
        "client" => Command::Client(parse_client(&all)?),
        "select" => {
            let index = parse_integer(&rest.next()).ok_or(CommandError::InvalidDbIndex)?;
            if index != 0 {
                return Err(CommandError::DbIndexOutOfRange);
            }
            Command::Select
        }
        "hello" => parse_hello(&all)?,
        "auth" => Command::Auth,
        "quit" => Command::Quit,
        "config" => {
            let sub = rest.next();
            if !sub.eq_ignore_ascii_case(b"get") {
                return Err(unknown_subcommand(&sub, name));
            }
            if count < 2 {
                return Err(CommandError::Arity("config|get".into()));
            }
            Command::ConfigGet(all[1..].to_vec())
        }
        // Every name in SPECS is handled above.
        _ => return Err(unknown(&vec![name.as_bytes().to_vec()])),
    };
    Ok(command)
}

fn unknown_subcommand(sub: &[u8], command: &str) -> CommandError {
    CommandError::UnknownSubcommand {
        sub: shown(sub, 128),
        command: command.to_ascii_uppercase(),
    }
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]`, in
/// any order; Redis's rules for conflicts.
fn parse_set(key: Bytes, value: Bytes, options: &[Bytes]) -> Result<Set, CommandError> {
    let mut set = Set {
        name: "set",
        key,
        value,
        expiry: None,
        condition: SetCondition::Always,
        keep_ttl: false,
        get: false,
    };
    let mut at = 0;
    while let Some(option) = options.get(at) {
        let option = option.to_ascii_uppercase();
        let next = options.get(at + 1);
        let no_expiry = set.expiry.is_none() && !set.keep_ttl;
        match option.as_slice() {
            b"NX" if set.condition != SetCondition::IfPresent => {
                set.condition = SetCondition::IfAbsent
            }
            b"XX" if set.condition != SetCondition::IfAbsent => {
                set.condition = SetCondition::IfPresent
            }
            b"GET" => set.get = true,
            b"KEEPTTL" if no_expiry => set.keep_ttl = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if no_expiry => {
                let Some(amount) = next else {
                    return Err(CommandError::Syntax);
                };
                let unit = match option.as_slice() {
                    b"EX" | b"EXAT" => 1000,
                    _ => 1,
                };
                let ms = expiry_ms(amount, unit, "set")?;
                set.expiry = Some(match option.as_slice() {
                    b"EX" | b"PX" => Expiry::In(ms),
                    _ => Expiry::At(ms),
                });
                at += 1;
            }
            _ => return Err(CommandError::Syntax),
        }
        at += 1;
    }
    Ok(set)
}

fn parse_command_query(args: &[Bytes]) -> Result<CommandQuery, CommandError> {
    let Some(sub) = args.first() else {
        return Ok(CommandQuery::All);
    };
    let lower = sub.to_ascii_lowercase();
    let (query, arity) = match lower.as_slice() {
        b"count" => (CommandQuery::Count, 2),
        b"list" => (CommandQuery::List, -2),
        b"info" => (CommandQuery::Info(args[1..].to_vec()), -2),
        b"docs" => (CommandQuery::Docs, -2),
        b"help" => (CommandQuery::Help, 2),
        _ => return Err(unknown_subcommand(sub, "command")),
    };
    check_sub_arity("command", &lower, arity, args.len() + 1)?;
    Ok(query)
}

fn parse_client(args: &[Bytes]) -> Result<ClientCommand, CommandError> {
    let sub = &args[0];
    let lower = sub.to_ascii_lowercase();
    let (command, arity) = match lower.as_slice() {
        b"setname" => {
            let name = args.get(1).cloned().unwrap_or_default();
            (ClientCommand::SetName(name), 3)
        }
        b"getname" => (ClientCommand::GetName, 2),
        b"id" => (ClientCommand::Id, 2),
        b"setinfo" => (ClientCommand::SetInfo, 4),
        b"help" => (ClientCommand::Help, 2),
        _ => return Err(unknown_subcommand(sub, "client")),
    };
    check_sub_arity("client", &lower, arity, args.len() + 1)?;
    if let ClientCommand::SetName(name) = &command {
        if !valid_client_name(name) {
            return Err(CommandError::BadClientName);
        }
    }
    Ok(command)
}

/// Redis allows printable ASCII without spaces in a connection name.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|b| (b'!'..=b'~').contains(b))
}

fn check_sub_arity(
    command: &str,
    sub: &[u8],
    arity: i32,
    count: usize,
) -> Result<(), CommandError> {
    let count = count as i64;
    let arity = i64::from(arity);
    if (arity >= 0 && count != arity) || (arity < 0 && count < -arity) {
        return Err(CommandError::Arity(format!(
            "{command}|{}",
            String::from_utf8_lossy(sub)
        )));
    }
    Ok(())
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
fn parse_hello(args: &[Bytes]) -> Result<Command, CommandError> {
    let Some(version) = args.first() else {
        return Ok(Command::Hello { setname: None });
    };
    let version = parse_integer(version).ok_or(CommandError::ProtocolNotInteger)?;
    if version != 2 {
        return Err(CommandError::NoProto);
    }
    let mut setname = None;
    let mut at = 1;
    while let Some(option) = args.get(at) {
        let more = args.len() - at - 1;
        if option.eq_ignore_ascii_case(b"auth") && more >= 2 {
            return Err(CommandError::NoPassword);
        } else if option.eq_ignore_ascii_case(b"setname") && more >= 1 {
            let name = args[at + 1].clone();
            if !valid_client_name(&name) {
                return Err(CommandError::BadClientName);
            }
            setname = Some(name);
            at += 2;
        } else {
            return Err(CommandError::Syntax);
        }
    }
    Ok(Command::Hello { setname })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, CommandError> {
        let args = line
            .split_whitespace()
            .map(|w| w.as_bytes().to_vec())
            .collect();
        Command::parse(args)
    }

    fn error(line: &str) -> String {
        match parse(line) {
            Ok(command) => panic!("{line} parsed as {command:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn set(line: &str) -> Set {
        match parse(line) {
            Ok(Command::Set(set)) => set,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn set_options_combine_in_any_order_and_conflicts_are_syntax_errors() {
        let s = set("set k v nx get px 1500");
        assert_eq!(
            (s.condition, s.get, s.expiry, s.keep_ttl),
            (SetCondition::IfAbsent, true, Some(Expiry::In(1500)), false)
        );
        let s = set("SET k v KeepTTL XX");
        assert_eq!((s.condition, s.keep_ttl), (SetCondition::IfPresent, true));
        assert_eq!(set("set k v ex 2").expiry, Some(Expiry::In(2000)));
        assert_eq!(set("set k v exat 2").expiry, Some(Expiry::At(2000)));
        assert_eq!(set("set k v pxat 2").expiry, Some(Expiry::At(2)));
        for bad in [
            "set k v nx xx",
            "set k v ex 1 px 1",
            "set k v ex 1 keepttl",
            "set k v keepttl ex 1",
            "set k v ex",
            "set k v bogus",
        ] {
            assert_eq!(error(bad), "ERR syntax error", "{bad}");
        }
        assert_eq!(
            error("set k v ex 0"),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            error("set k v ex 9223372036854775807"),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            error("set k v ex ten"),
            "ERR value is not an integer or out of range"
        );
    }

    #[test]
    fn arity_errors_name_the_command_as_redis_does() {
        assert_eq!(
            error("GET"),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            error("get a b"),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            error("mset a 1 b"),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert_eq!(
            error("ping a b"),
            "ERR wrong number of arguments for 'ping' command"
        );
        assert_eq!(
            error("client setname"),
            "ERR wrong number of arguments for 'client|setname' command"
        );
        assert_eq!(
            error("client"),
            "ERR wrong number of arguments for 'client' command"
        );
    }

    #[test]
    fn unknown_commands_and_subcommands_get_redis_error_texts() {
        assert_eq!(
            error("foo a b"),
            "ERR unknown command 'foo', with args beginning with: 'a' 'b' "
        );
        assert_eq!(
            error("FOO"),
            "ERR unknown command 'FOO', with args beginning with: "
        );
        let long = format!("foo {} b", "x".repeat(200));
        assert_eq!(
            error(&long),
            format!(
                "ERR unknown command 'foo', with args beginning with: '{}' ",
                "x".repeat(128)
            )
        );
        assert_eq!(
            error("client kill"),
            "ERR unknown subcommand 'kill'. Try CLIENT HELP."
        );
        assert_eq!(
            error("config set save x"),
            "ERR unknown subcommand 'set'. Try CONFIG HELP."
        );
    }

    #[test]
    fn integers_are_read_as_redis_reads_them() {
        for (text, value) in [
            ("0", Some(0)),
            ("-1", Some(-1)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("01", None),
            ("-0", None),
            ("+1", None),
            (" 1", None),
            ("1.0", None),
            ("", None),
            ("-", None),
        ] {
            assert_eq!(parse_integer(text.as_bytes()), value, "{text:?}");
        }
        assert_eq!(
            error("decrby k -9223372036854775808"),
            "ERR decrement would overflow"
        );
        assert_eq!(
            error("incrby k x"),
            "ERR value is not an integer or out of range"
        );
    }

    #[test]
    fn connection_commands_parse_with_redis_rules() {
        assert_eq!(parse("select 0"), Ok(Command::Select));
        assert_eq!(error("select 1"), "ERR DB index is out of range");
        assert_eq!(error("select x"), "ERR invalid DB index");
        assert_eq!(parse("hello"), Ok(Command::Hello { setname: None }));
        assert_eq!(
            parse("hello 2 setname app"),
            Ok(Command::Hello {
                setname: Some(b"app".to_vec())
            })
        );
        assert_eq!(error("hello 3"), "NOPROTO unsupported protocol version");
        assert_eq!(
            error("hello x"),
            "ERR Protocol version is not an integer or out of range"
        );
        assert!(error("hello 2 auth u p").starts_with("ERR AUTH <password> called"));
        assert_eq!(parse("auth secret"), Ok(Command::Auth));
        assert_eq!(
            parse("client setname app-1"),
            Ok(Command::Client(ClientCommand::SetName(b"app-1".to_vec())))
        );
        assert_eq!(
            Command::parse(vec![
                b"client".to_vec(),
                b"setname".to_vec(),
                b"a b".to_vec()
            ]),
            Err(CommandError::BadClientName)
        );
        assert_eq!(
            parse("config get save appendonly"),
            Ok(Command::ConfigGet(vec![
                b"save".to_vec(),
                b"appendonly".to_vec()
            ]))
        );
        assert_eq!(
            error("config get"),
            "ERR wrong number of arguments for 'config|get' command"
        );
        assert_eq!(
            parse("command docs"),
            Ok(Command::Command(CommandQuery::Docs))
        );
        assert_eq!(error("expire k 10 nx"), "ERR Unsupported option nx");
        assert_eq!(error("flushdb now"), "ERR syntax error");
    }

    #[test]
    fn only_commands_that_change_the_cache_count_as_writes() {
        let writes: Vec<&str> = SPECS.iter().filter(|s| s.write).map(|s| s.name).collect();
        assert_eq!(
            writes,
            [
                "append", "decr", "decrby", "del", "expire", "flushdb", "getset", "incr", "incrby",
                "mset", "persist", "pexpire", "psetex", "set", "setex", "setnx"
            ]
        );
        for (line, write) in [
            ("set k v", true),
            ("getset k v", true),
            ("setex k 1 v", true),
            ("del k", true),
            ("expire k 1", true),
            ("incr k", true),
            ("mset k v", true),
            ("append k v", true),
            ("persist k", true),
            ("flushdb", true),
            ("get k", false),
            ("mget k", false),
            ("exists k", false),
            ("ttl k", false),
            ("strlen k", false),
            ("dbsize", false),
        ] {
            let command = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(command.is_write(), write, "{line}");
            let spec = spec_of(line.split(' ').next().unwrap_or_default().as_bytes());
            assert_eq!(spec.map(|s| s.write), Some(write), "{line}");
        }
    }
}
