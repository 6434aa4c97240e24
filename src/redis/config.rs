//! The Redis backend's settings, parsed from a backend URL:
//! `redis://[user:pass@]host:port[/db][?ttl=MS&refresh=MS&connectTimeout=MS&commandTimeout=MS]`
//! (`rediss://` for TLS, verified against the system's roots, or against `ca=/path/ca.pem`
//! for a private CA). The password never appears in messages or `Debug` output.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{LockError, Result};

pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Below this a lease cannot survive one slow round trip plus the safety margin.
const MIN_TTL: Duration = Duration::from_millis(200);

#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
  /// `host:port`, for messages.
  pub addr: String,
  pub db: i64,
  pub username: Option<String>,
  password: Option<String>,
  pub tls: bool,
  /// A PEM file of the CA that signed the server's certificate, instead of the system's roots.
  pub tls_ca: Option<PathBuf>,
  /// The lease: how long Redis keeps a lock whose holder stopped refreshing it.
  pub ttl: Duration,
  /// How often the holder refreshes (compare-and-PEXPIRE); less than `ttl - margin`.
  pub refresh: Duration,
  pub connect_timeout: Duration,
  pub command_timeout: Duration,
  /// The URL handed to the redis crate: credentials kept, our own parameters removed.
  client_url: String,
}

impl fmt::Debug for RedisConfig {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.debug_struct("RedisConfig")
      .field("addr", &self.addr)
      .field("db", &self.db)
      .field("username", &self.username)
      .field("password", &self.password.as_ref().map(|_| "***"))
      .field("tls", &self.tls)
      .field("tls_ca", &self.tls_ca)
      .field("ttl", &self.ttl)
      .field("refresh", &self.refresh)
      .field("connect_timeout", &self.connect_timeout)
      .field("command_timeout", &self.command_timeout)
      .finish()
  }
}

impl RedisConfig {
  pub fn parse(url: &str) -> Result<RedisConfig> {
    let shown = redact(url);
    let bad = |why: &str| {
      LockError::invalid_value(format!(
        "The lock backend URL {shown} is not valid: {why}. Expected \
         redis://[user:pass@]host:port[/db][?ttl=MS&refresh=MS&connectTimeout=MS&commandTimeout=MS] \
         (rediss:// for TLS, ca=PATH for a private CA)."
      ))
    };
    let mut parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    let tls = match parsed.scheme() {
      "redis" => false,
      "rediss" => true,
      other => {
        return Err(bad(&format!(
          "the scheme is {other}://, not redis:// or rediss://"
        )))
      }
    };
    if parsed.fragment().is_some() {
      return Err(bad(
        "it has a #fragment; certificate checks cannot be turned off (use ca=PATH for a private CA)",
      ));
    }
    let host = match parsed.host() {
      Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
      Some(url::Host::Ipv4(ip)) => ip.to_string(),
      Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
      _ => return Err(bad("it names no host")),
    };
    let port = parsed.port().unwrap_or(6379);
    let db = match parsed.path().trim_matches('/') {
      "" => 0,
      path => path
        .parse::<i64>()
        .ok()
        .filter(|db| *db >= 0)
        .ok_or_else(|| bad(&format!("the database \"{path}\" is not a number")))?,
    };
    let mut ttl = DEFAULT_TTL;
    let mut refresh = DEFAULT_REFRESH;
    let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
    let mut command_timeout = DEFAULT_COMMAND_TIMEOUT;
    let mut tls_ca = None;
    for (name, value) in parsed.query_pairs() {
      let slot = match name.as_ref() {
        "ca" if tls && !value.is_empty() => {
          tls_ca = Some(PathBuf::from(value.as_ref()));
          continue;
        }
        "ca" => return Err(bad("ca= needs a rediss:// URL and a file name")),
        "ttl" => &mut ttl,
        "refresh" => &mut refresh,
        "connectTimeout" => &mut connect_timeout,
        "commandTimeout" => &mut command_timeout,
        "protocol" => continue,
        // The client reads no other parameter of a redis:// URL: one we do not know would be
        // ignored in silence (a misspelt ttl leaves the default in force).
        _ => return Err(bad(&format!("unknown parameter \"{name}\""))),
      };
      let ms = value
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
          bad(&format!(
            "{name}={value} is not a positive number of milliseconds"
          ))
        })?;
      *slot = Duration::from_millis(ms);
    }
    check_lease(ttl, refresh).map_err(|why| bad(&why))?;
    // The connection speaks RESP3 so that pub/sub wake-ups arrive on the same auto-reconnecting
    // connection as the commands (and are re-subscribed after a reconnect).
    parsed
      .query_pairs_mut()
      .clear()
      .append_pair("protocol", "resp3");
    let username = Some(parsed.username().to_string()).filter(|u| !u.is_empty());
    let password = parsed.password().map(str::to_string);
    Ok(RedisConfig {
      addr: format!("{host}:{port}"),
      db,
      username,
      password,
      tls,
      tls_ca,
      ttl,
      refresh,
      connect_timeout,
      command_timeout,
      client_url: parsed.to_string(),
    })
  }

  /// How long before the lease's end the holder already counts the lock as lost: covers the
  /// rate difference between our monotonic clock and Redis's clock, and a late reply.
  pub fn margin(&self) -> Duration {
    safety_margin(self.ttl)
  }

  pub(crate) fn client_url(&self) -> &str {
    &self.client_url
  }
}

fn check_lease(ttl: Duration, refresh: Duration) -> std::result::Result<(), String> {
  if ttl < MIN_TTL {
    return Err(format!("ttl must be at least {} ms", MIN_TTL.as_millis()));
  }
  if refresh.is_zero() || refresh >= ttl - safety_margin(ttl) {
    return Err(format!(
      "refresh ({} ms) must be above 0 and shorter than ttl minus its safety margin ({} ms)",
      refresh.as_millis(),
      (ttl - safety_margin(ttl)).as_millis()
    ));
  }
  Ok(())
}

/// A tenth of the lease, at least 50 ms: 3 s of the default 30 s.
pub fn safety_margin(ttl: Duration) -> Duration {
  (ttl / 10).max(Duration::from_millis(50))
}

/// The URL as it may be shown: the password replaced by `***`.
pub fn redact(url: &str) -> String {
  match url::Url::parse(url) {
    Ok(mut parsed) if parsed.password().is_some() => {
      let _ = parsed.set_password(Some("***"));
      parsed.to_string()
    }
    Ok(_) => url.to_string(),
    // Not a URL: hide everything before the last "@" (after any "://"), where a password would be.
    Err(_) => {
      let start = url.find("://").map_or(0, |i| i + 3);
      match url.rfind('@') {
        Some(at) if at >= start => format!("{}***{}", &url[..start], &url[at..]),
        _ => url.to_string(),
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn url_parts_and_defaults() {
    let c = RedisConfig::parse("redis://127.0.0.1:6380/2").unwrap();
    assert_eq!(c.addr, "127.0.0.1:6380");
    assert_eq!(c.db, 2);
    assert!(!c.tls);
    assert_eq!(c.ttl, DEFAULT_TTL);
    assert_eq!(c.refresh, DEFAULT_REFRESH);
    assert_eq!(c.margin(), Duration::from_secs(3));
    assert!(c.client_url().ends_with("?protocol=resp3"));
  }

  #[test]
  fn ttl_and_refresh_in_ms() {
    let c = RedisConfig::parse("rediss://u:secret@h.example:7000?ttl=3000&refresh=500&ca=/ca.pem")
      .unwrap();
    assert!(c.tls);
    assert_eq!(c.tls_ca, Some(PathBuf::from("/ca.pem")));
    assert!(!c.client_url().contains("ca"));
    assert_eq!(c.ttl, Duration::from_millis(3000));
    assert_eq!(c.refresh, Duration::from_millis(500));
    assert_eq!(c.username.as_deref(), Some("u"));
    assert!(!format!("{c:?}").contains("secret"));
    assert!(!c.client_url().contains("ttl="));
  }

  #[test]
  fn an_unknown_parameter_is_refused_not_ignored() {
    // A misspelt ttl would otherwise leave the 30 s default in force; etcd's `timeout` is not
    // Redis's (connectTimeout, commandTimeout).
    for (url, name) in [
      ("redis://u:secret@h:1?tll=3000", "tll"),
      ("redis://h:1?ttl=3000&refresh=500&timeout=500", "timeout"),
    ] {
      let e = RedisConfig::parse(url).unwrap_err();
      assert_eq!(e.code, "ERR_INVALID_ARG_VALUE", "{url}");
      assert!(
        e.message.contains(&format!("unknown parameter \"{name}\"")),
        "{}",
        e.message
      );
      assert!(!e.message.contains("secret"), "{}", e.message);
    }
  }

  #[test]
  fn bad_urls_name_the_url_but_not_the_password() {
    for url in [
      "http://h:1",
      "redis://u:secret@h:1/x",
      "redis://u:secret@h:1?ttl=abc",
      "redis://u:secret@h:1?ttl=1000&refresh=1000",
      "redis://u:secret@h:1?ca=/ca.pem",
      "rediss://u:secret@h:1#insecure",
      "redis://u:secret@:1",
      "not a url u:secret@",
    ] {
      let e = RedisConfig::parse(url).unwrap_err();
      assert_eq!(e.code, "ERR_INVALID_ARG_VALUE", "{url}");
      assert!(!e.message.contains("secret"), "{}", e.message);
      assert!(
        e.message.contains("redis://") || e.message.contains("http://"),
        "{}",
        e.message
      );
    }
  }
}
