//! The etcd engine's settings and the parser of its URL,
//! `etcd://host:port[,host:port...][?ttl=MS&refresh=MS&timeout=MS]` (`etcds://` for TLS).
//! Every bad part is rejected with `ERR_INVALID_ARG_VALUE` naming it, because a typo in a
//! backend URL must not silently fall back to defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{LockError, Result};

/// etcd's client port when the URL names a host only.
pub const DEFAULT_PORT: u16 = 2379;
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// How long one operation keeps trying the members before it reports `ELOCKBACKEND`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(6);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
  /// `host:port` of every member given; the engine fails over between them in this order.
  pub endpoints: Vec<String>,
  /// `etcds://`: gRPC over TLS, verified against the system's roots (plus `ca`).
  pub tls: bool,
  /// PEM file of an extra certificate authority (`?ca=/path`), for clusters with their own CA.
  pub ca_file: Option<PathBuf>,
  /// Lease TTL. etcd counts whole seconds, so the server's lease is this rounded up; the
  /// holder's own deadline uses this exact value.
  pub ttl: Duration,
  /// How often the holder (and every waiter) renews its lease.
  pub refresh: Duration,
  /// Taken off every deadline: covers clock-rate drift between client and server and the time
  /// between a fencing check and the write it guards.
  pub margin: Duration,
  /// Connecting to one member.
  pub connect_timeout: Duration,
  /// One request to one member before trying the next.
  pub request_timeout: Duration,
  /// One operation across all members and retries, before `ELOCKBACKEND`.
  pub timeout: Duration,
}

/// What a holder keeps off its lease against clock drift and a late answer: a tenth of it.
fn margin_of(ttl: Duration) -> Duration {
  ttl / 10
}

impl EtcdConfig {
  /// Settings for these endpoints with the default timings.
  pub fn new(endpoints: Vec<String>) -> EtcdConfig {
    EtcdConfig::with_ttl(endpoints, DEFAULT_TTL, None)
  }

  /// Settings with a given TTL; the refresh defaults to TTL/3 and the margin to TTL/10. One
  /// member gets at most half a refresh period (and 2 s) to answer, so that a keepalive can
  /// fail over to another member well before the lease runs out.
  pub fn with_ttl(endpoints: Vec<String>, ttl: Duration, refresh: Option<Duration>) -> EtcdConfig {
    let refresh = refresh.unwrap_or(ttl / 3);
    let per_member = (refresh / 2).min(Duration::from_secs(2));
    EtcdConfig {
      endpoints,
      tls: false,
      ca_file: None,
      ttl,
      refresh,
      margin: margin_of(ttl),
      connect_timeout: per_member,
      request_timeout: per_member,
      timeout: DEFAULT_TIMEOUT,
    }
  }

  pub fn parse(url: &str) -> Result<EtcdConfig> {
    let bad = |what: String| {
      LockError::invalid_value(format!(
        "Invalid etcd backend URL \"{url}\": {what}. Expected etcd://host:port[,host:port...][?ttl=MS&refresh=MS] (etcds:// for TLS)."
      ))
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
      (false, rest)
    } else if let Some(rest) = url.strip_prefix("etcds://") {
      (true, rest)
    } else {
      return Err(bad("the scheme must be etcd:// or etcds://".into()));
    };
    let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
    let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
    let mut endpoints = Vec::new();
    for host in hosts.split(',') {
      endpoints.push(parse_endpoint(host).map_err(&bad)?);
    }
    let (mut ttl, mut refresh, mut timeout, mut ca_file) = (None, None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
      let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
      let ms = || -> Result<Duration> {
        match value.parse::<u64>() {
          Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
          _ => Err(bad(format!(
            "{name} must be a positive whole number of milliseconds, not \"{value}\""
          ))),
        }
      };
      match name {
        "ttl" => ttl = Some(ms()?),
        "refresh" => refresh = Some(ms()?),
        "timeout" => timeout = Some(ms()?),
        "ca" if !value.is_empty() => ca_file = Some(PathBuf::from(value)),
        _ => return Err(bad(format!("unknown parameter \"{name}\""))),
      }
    }
    let ttl = ttl.unwrap_or(DEFAULT_TTL);
    if ttl < Duration::from_secs(1) {
      return Err(bad(format!(
        "ttl={} is below etcd's smallest lease (1000 ms)",
        ttl.as_millis()
      )));
    }
    // A holder counts its lease as ttl minus the margin: a refresh any later comes after its own
    // deadline, and every commit between the two fails with ELOCKLOST.
    let lease = ttl - margin_of(ttl);
    if let Some(r) = refresh.filter(|r| *r >= lease) {
      return Err(bad(format!(
        "refresh={} must be shorter than ttl minus its margin ({}; ttl={})",
        r.as_millis(),
        lease.as_millis(),
        ttl.as_millis()
      )));
    }
    if ca_file.is_some() && !tls {
      return Err(bad("ca= needs etcds://".into()));
    }
    let mut config = EtcdConfig::with_ttl(endpoints, ttl, refresh);
    config.tls = tls;
    config.ca_file = ca_file;
    if let Some(timeout) = timeout {
      config.timeout = timeout;
    }
    Ok(config)
  }

  /// The URL naming these endpoints, as shown in error messages.
  pub fn display_endpoints(&self) -> String {
    let scheme = if self.tls { "etcds" } else { "etcd" };
    format!("{scheme}://{}", self.endpoints.join(","))
  }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → `host:port`.
fn parse_endpoint(text: &str) -> std::result::Result<String, String> {
  let text = text.trim();
  if text.is_empty() {
    return Err("an endpoint is empty".into());
  }
  let (host, port) = if let Some(v6) = text.strip_prefix('[') {
    let (addr, after) = v6
      .split_once(']')
      .ok_or_else(|| format!("\"{text}\" lacks its closing ]"))?;
    (format!("[{addr}]"), after.strip_prefix(':'))
  } else {
    match text.rsplit_once(':') {
      Some((h, p)) => (h.to_string(), Some(p)),
      None => (text.to_string(), None),
    }
  };
  if host.is_empty()
    || host.contains(['/', '@', ' '])
    || host.contains(':') && !host.starts_with('[')
  {
    return Err(format!("\"{text}\" is not a host[:port]"));
  }
  let port = match port {
    None => DEFAULT_PORT,
    Some(p) => p
      .parse::<u16>()
      .ok()
      .filter(|p| *p > 0)
      .ok_or_else(|| format!("\"{p}\" in \"{text}\" is not a port"))?,
  };
  Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn urls_give_endpoints_and_timings() {
    let c = EtcdConfig::parse("etcd://a:1,b,[::1]:3?ttl=9000&refresh=1000").unwrap();
    assert_eq!(c.endpoints, ["a:1", "b:2379", "[::1]:3"]);
    assert!(!c.tls);
    assert_eq!(c.ttl, Duration::from_secs(9));
    assert_eq!(c.refresh, Duration::from_secs(1));
    let d = EtcdConfig::parse("etcds://h:2379/").unwrap();
    assert!(d.tls);
    assert_eq!(d.ttl, DEFAULT_TTL);
    assert_eq!(d.refresh, Duration::from_secs(10));
    assert_eq!(d.display_endpoints(), "etcds://h:2379");
  }

  #[test]
  fn bad_urls_say_what_is_wrong() {
    for (url, says) in [
      ("redis://h:1", "scheme"),
      ("etcd://", "empty"),
      ("etcd://a:1,,b:2", "empty"),
      ("etcd://a:x", "not a port"),
      ("etcd://a:0", "not a port"),
      ("etcd://a:1?ttl=0", "positive"),
      ("etcd://a:1?ttl=abc", "positive"),
      ("etcd://a:1?ttl=500", "smallest lease"),
      ("etcd://a:1?ttl=3000&refresh=3000", "shorter than ttl"),
      // Within the margin: the holder's deadline would pass before each renewal.
      (
        "etcd://a:1?ttl=3000&refresh=2800",
        "shorter than ttl minus its margin (2700;",
      ),
      ("etcd://a:1?tll=3000", "unknown parameter \"tll\""),
      ("etcd://a:1?ca=/x", "needs etcds"),
      ("etcd://u@a:1", "host[:port]"),
    ] {
      let err = EtcdConfig::parse(url).unwrap_err();
      assert_eq!(err.code, "ERR_INVALID_ARG_VALUE", "{url}");
      assert!(err.message.contains(says), "{url}: {}", err.message);
      assert!(err.message.contains(url), "{url}: {}", err.message);
    }
  }
}
