//! The Lua scripts of the Redis lock engine (the `.lua` files beside this one, each with the
//! shared prelude in front), the keys of one lock, and the way a script is sent: EVALSHA, loaded
//! again after a server restart forgot it; on a blocking connection from the caller's thread, or
//! on the managed connection with its CLIENT ID checked in the same round trip (the re-registration
//! after a reconnect).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{Cmd, Pipeline, RedisResult, ServerErrorKind, Value};

macro_rules! lua {
  ($file:literal) => {
    concat!(include_str!("prelude.lua"), include_str!($file))
  };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
  Acquire,
  Refresh,
  Release,
  Takeover,
  Leave,
  Inspect,
}

const ALL: [Script; 6] = [
  Script::Acquire,
  Script::Refresh,
  Script::Release,
  Script::Takeover,
  Script::Leave,
  Script::Inspect,
];

static COMPILED: LazyLock<Vec<redis::Script>> =
  LazyLock::new(|| ALL.iter().map(|s| redis::Script::new(s.source())).collect());

impl Script {
  pub(super) fn source(self) -> &'static str {
    match self {
      Script::Acquire => lua!("acquire.lua"),
      Script::Refresh => lua!("refresh.lua"),
      Script::Release => lua!("release.lua"),
      Script::Takeover => lua!("takeover.lua"),
      Script::Leave => lua!("leave.lua"),
      Script::Inspect => lua!("inspect.lua"),
    }
  }

  fn hash(self) -> &'static str {
    COMPILED[self as usize].get_hash()
  }

  /// The argument that carries the caller's CLIENT ID, for the scripts that record it.
  pub(super) fn client_slot(self) -> Option<usize> {
    match self {
      Script::Acquire => Some(1),
      Script::Refresh => Some(2),
      _ => None,
    }
  }
}

/// The Redis keys of one lock. They share the caller's hash tag (`{…}` in the key; the whole key
/// is wrapped in one when it has none), so they live in one slot and one script may touch them all.
#[derive(Debug, Clone)]
pub struct Keys {
  pub lock: String,
  fence: String,
  q: String,
  qx: String,
  qc: String,
  qh: String,
  seq: String,
  pub channel: String,
}

impl Keys {
  pub fn new(key: &str) -> Keys {
    let base = if has_hash_tag(key) {
      key.to_string()
    } else {
      format!("{{{key}}}")
    };
    Keys {
      fence: format!("{base}:fence"),
      q: format!("{base}:q"),
      qx: format!("{base}:qx"),
      qc: format!("{base}:qc"),
      qh: format!("{base}:qh"),
      seq: format!("{base}:seq"),
      channel: format!("{base}:wake"),
      lock: base,
    }
  }

  /// Every key, in the order of `prelude.lua` (all scripts but refresh take them all).
  pub fn all(&self) -> [String; 7] {
    [
      self.lock.clone(),
      self.fence.clone(),
      self.q.clone(),
      self.qx.clone(),
      self.qc.clone(),
      self.qh.clone(),
      self.seq.clone(),
    ]
  }
}

/// Redis Cluster's rule: the part between the first `{` and the next `}`, if not empty.
fn has_hash_tag(key: &str) -> bool {
  key
    .find('{')
    .and_then(|open| key[open + 1..].find('}'))
    .is_some_and(|len| len > 0)
}

/// `prefix` as a SCAN pattern that matches it literally.
pub fn glob_escape(prefix: &str) -> String {
  let mut out = String::with_capacity(prefix.len());
  for c in prefix.chars() {
    if matches!(c, '*' | '?' | '[' | ']' | '\\') {
      out.push('\\');
    }
    out.push(c);
  }
  out
}

pub fn evalsha(script: Script, keys: &[String], args: &[&str]) -> Cmd {
  let mut cmd = redis::cmd("EVALSHA");
  cmd.arg(script.hash()).arg(keys.len()).arg(keys).arg(args);
  cmd
}

fn forgotten(values: &[Value]) -> bool {
  values
    .iter()
    .any(|v| matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript)))
}

fn load_all() -> Pipeline {
  let mut load = redis::pipe();
  for script in ALL {
    load.cmd("SCRIPT").arg("LOAD").arg(script.source()).ignore();
  }
  load
}

/// Sends `pipe` (built with `ignore_errors`); when the server has forgotten our scripts (it
/// restarted), loads them all and sends it once more.
pub async fn query(conn: &mut ConnectionManager, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
  let values: Vec<Value> = pipe.query_async(conn).await?;
  if !forgotten(&values) {
    return Ok(values);
  }
  load_all().exec_async(conn).await?;
  pipe.query_async(conn).await
}

/// Runs `script` on a blocking connection, its arguments as given (the caller has put in the
/// CLIENT ID it registers, `client`, which the reply carries back).
pub fn run_blocking(
  conn: &mut redis::Connection,
  script: Script,
  keys: &[String],
  args: &[String],
  client: u64,
) -> RedisResult<Reply> {
  let refs: Vec<&str> = args.iter().map(String::as_str).collect();
  let mut pipe = redis::pipe();
  pipe
    .add_command(evalsha(script, keys, &refs))
    .ignore_errors();
  let mut values: Vec<Value> = pipe.query(conn)?;
  if forgotten(&values) {
    load_all().exec(conn)?;
    values = pipe.query(conn)?;
  }
  Ok(Reply {
    values: script_reply(values.into_iter().next())?,
    client,
  })
}

/// A script's reply, and the CLIENT ID it was run under (0 when not asked for).
#[derive(Debug)]
pub struct Reply {
  values: Vec<Value>,
  pub client: u64,
}

impl Reply {
  pub fn len(&self) -> usize {
    self.values.len()
  }

  pub fn int(&self, i: usize) -> i64 {
    match self.values.get(i) {
      Some(Value::Int(n)) => *n,
      _ => self.text(i).parse().unwrap_or(0),
    }
  }

  pub fn text(&self, i: usize) -> String {
    match self.values.get(i) {
      Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
      Some(Value::SimpleString(s)) => s.clone(),
      Some(Value::Int(n)) => n.to_string(),
      _ => String::new(),
    }
  }
}

/// Runs the refresh script on the managed connection, registering that connection as the
/// holder (after a reconnect). `client` is the cached CLIENT ID of the managed connection: it is
/// put into the arguments and `CLIENT ID` is asked in the same pipeline, so we learn which
/// connection the script really ran on. If that differs (the connection was re-established
/// since), the cache is corrected and the script run again — it is idempotent for the same caller.
pub async fn reregister(
  conn: &mut ConnectionManager,
  keys: &[String],
  mut args: Vec<String>,
  client: &AtomicU64,
) -> RedisResult<Reply> {
  let slot = Script::Refresh.client_slot().unwrap_or(2);
  // A connection that changes under every try gives up after a few; the caller sees the last.
  let mut attempt = 0;
  loop {
    attempt += 1;
    let mut id = client.load(Ordering::Relaxed);
    if id == 0 {
      id = redis::cmd("CLIENT").arg("ID").query_async(conn).await?;
      client.store(id, Ordering::Relaxed);
    }
    args[slot] = id.to_string();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut pipe = redis::pipe();
    pipe
      .cmd("CLIENT")
      .arg("ID")
      .add_command(evalsha(Script::Refresh, keys, &refs))
      .ignore_errors();
    let mut values = query(conn, &pipe).await?.into_iter();
    let ran_on = match values.next() {
      Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
      _ => 0,
    };
    let reply = script_reply(values.next())?;
    if ran_on == id || attempt == 3 {
      return Ok(Reply {
        values: reply,
        client: id,
      });
    }
    client.store(ran_on, Ordering::Relaxed);
  }
}

fn script_reply(value: Option<Value>) -> RedisResult<Vec<Value>> {
  match value {
    Some(Value::Array(values)) => Ok(values),
    Some(Value::ServerError(e)) => Err(e.into()),
    Some(Value::Nil) | None => Ok(Vec::new()),
    Some(other) => Ok(vec![other]),
  }
}
