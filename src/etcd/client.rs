//! The gRPC side of the etcd engine: one lazily connected channel per member, an operation
//! runner that fails over between members until the operation's deadline, and the few etcd
//! calls the lock recipe needs (Txn, Range, lease grant/keepalive/revoke/time-to-live, watch).
//! Everything here is async and runs on the engine's own runtime (see `mod.rs`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::config::EtcdConfig;
use super::generated::etcdserverpb::{
  compare, kv_client::KvClient, lease_client::LeaseClient, range_request, request_op, response_op,
  watch_client::WatchClient, watch_create_request, watch_request, Compare, LeaseGrantRequest,
  LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, RangeRequest, RangeResponse,
  RequestOp, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest, WatchResponse,
};
use super::generated::mvccpb::KeyValue;
use crate::error::{LockError, Result};

/// After every member failed once, wait this long before the next round.
const ROUND_BACKOFF: Duration = Duration::from_millis(100);

struct Member {
  name: String,
  channel: Channel,
}

pub(crate) struct Client {
  pub(crate) config: EtcdConfig,
  members: Vec<Member>,
  /// The member that answered last: tried first.
  current: AtomicUsize,
  /// Set when a whole round of members failed, cleared by the next answer: lets a waiter whose
  /// deadline passes say "etcd is unreachable" rather than "the lock is busy".
  outage: Mutex<Option<LockError>>,
}

/// A lease and the holder's own deadline for it (start of the last successful grant or
/// keepalive request + ttl − margin, on the monotonic clock).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
  pub(crate) id: i64,
  pub(crate) deadline: Instant,
}

impl Client {
  /// Builds the channels; connects nothing yet. Must run inside the engine's runtime
  /// (tonic spawns each channel's worker task).
  pub(crate) fn new(config: EtcdConfig) -> Result<Client> {
    let tls = if config.tls {
      let mut tls = ClientTlsConfig::new().with_native_roots();
      if let Some(path) = &config.ca_file {
        let pem =
          std::fs::read(path).map_err(|e| LockError::io(&e, "Cannot read the CA file", path))?;
        tls = tls.ca_certificate(Certificate::from_pem(pem));
      }
      Some(tls)
    } else {
      None
    };
    let mut members = Vec::new();
    for name in &config.endpoints {
      let scheme = if tls.is_some() { "https" } else { "http" };
      let bad = |e: tonic::transport::Error| {
        LockError::invalid_value(format!(
          "Invalid etcd endpoint {name} in {}: {e}.",
          config.display_endpoints()
        ))
      };
      let mut endpoint = Endpoint::from_shared(format!("{scheme}://{name}"))
        .map_err(bad)?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        // A member that vanishes without a FIN (cut cable, frozen VM) is noticed by HTTP/2 pings.
        .http2_keep_alive_interval(config.request_timeout)
        .keep_alive_timeout(config.request_timeout)
        .keep_alive_while_idle(true);
      if let Some(tls) = &tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
      }
      members.push(Member {
        name: name.clone(),
        channel: endpoint.connect_lazy(),
      });
    }
    Ok(Client {
      config,
      members,
      current: AtomicUsize::new(0),
      outage: Mutex::new(None),
    })
  }

  /// Runs `op` against the members, starting with the last one that answered, until one
  /// answers or `deadline` passes (→ `ELOCKBACKEND` naming every member and its last error).
  /// Only transport-level failures and etcd's "no leader / timed out" (all `Unavailable`) move
  /// on to the next member; an answer that refuses the request is returned at once. Every
  /// `op` used here is safe to repeat: the queue Txn keeps its place, the others are reads,
  /// keepalives or deletions.
  pub(crate) async fn call<T, F, Fut>(&self, what: &str, deadline: Instant, mut op: F) -> Result<T>
  where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = std::result::Result<T, Status>>,
  {
    let n = self.members.len();
    let mut errors: Vec<Option<String>> = vec![None; n];
    let mut failures = 0usize;
    loop {
      let now = Instant::now();
      if now >= deadline {
        return Err(self.unreachable(what, &errors));
      }
      let i = self.current.load(Ordering::Relaxed) % n;
      let budget = (deadline - now).min(self.config.request_timeout);
      match tokio::time::timeout(budget, op(self.members[i].channel.clone())).await {
        Ok(Ok(value)) => {
          *self.outage.lock().unwrap_or_else(|p| p.into_inner()) = None;
          return Ok(value);
        }
        Ok(Err(status)) if !retriable(&status) => {
          return Err(LockError::new(
            "ELOCKBACKEND",
            format!(
              "etcd at {} refused to {what}: {} ({:?}).",
              self.members[i].name,
              status.message(),
              status.code()
            ),
          ))
        }
        Ok(Err(status)) => errors[i] = Some(describe(&status)),
        Err(_) => errors[i] = Some(format!("no answer within {} ms", budget.as_millis())),
      }
      let _ = self
        .current
        .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
      failures += 1;
      if failures.is_multiple_of(n) {
        *self.outage.lock().unwrap_or_else(|p| p.into_inner()) =
          Some(self.unreachable(what, &errors));
        let pause = ROUND_BACKOFF.min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
      }
    }
  }

  /// The error of the last round in which no member answered, unless one answered since.
  pub(crate) fn outage(&self) -> Option<LockError> {
    self
      .outage
      .lock()
      .unwrap_or_else(|p| p.into_inner())
      .clone()
  }

  /// Moves on to the next member (after a broken watch stream, which `call` does not see).
  pub(crate) fn rotate(&self) {
    let n = self.members.len();
    let i = self.current.load(Ordering::Relaxed);
    let _ = self
      .current
      .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
  }

  fn unreachable(&self, what: &str, errors: &[Option<String>]) -> LockError {
    let tried: Vec<String> = self
      .members
      .iter()
      .zip(errors)
      .map(|(m, e)| match e {
        Some(e) => format!("{} ({e})", m.name),
        None => format!("{} (not tried)", m.name),
      })
      .collect();
    LockError::new(
      "ELOCKBACKEND",
      format!(
        "No etcd member answered while trying to {what} at {}: {}. Check that etcd is running and reachable, or point FLOWFORGE_LOCK_BACKEND at live members.",
        self.config.display_endpoints(),
        tried.join("; ")
      ),
    )
  }

  /// A deadline for one operation: the configured timeout, or sooner if the caller's is.
  pub(crate) fn op_deadline(&self, caller: Option<Instant>) -> Instant {
    let own = Instant::now() + self.config.timeout;
    caller.map_or(own, |c| c.min(own))
  }

  fn lease_deadline(&self, sent_at: Instant, server_ttl_s: i64) -> Instant {
    let server = Duration::from_secs(server_ttl_s.max(0) as u64);
    sent_at
      + self
        .config
        .ttl
        .min(server)
        .saturating_sub(self.config.margin)
  }

  pub(crate) async fn grant_lease(&self, deadline: Instant) -> Result<Lease> {
    let ttl_s = self.config.ttl.as_millis().div_ceil(1000) as i64;
    let sent_at = Instant::now();
    let resp = self
      .call("grant a lease", deadline, |ch| async move {
        let req = LeaseGrantRequest { ttl: ttl_s, id: 0 };
        Ok(LeaseClient::new(ch).lease_grant(req).await?.into_inner())
      })
      .await?;
    if !resp.error.is_empty() {
      return Err(LockError::new(
        "ELOCKBACKEND",
        format!("etcd refused a lease: {}.", resp.error),
      ));
    }
    Ok(Lease {
      id: resp.id,
      deadline: self.lease_deadline(sent_at, resp.ttl),
    })
  }

  /// One keepalive. `Ok(Some(deadline))` while the lease lives, `Ok(None)` once it is gone.
  pub(crate) async fn keep_alive(&self, lease: i64, deadline: Instant) -> Result<Option<Instant>> {
    let sent_at = Instant::now();
    let ttl = self
      .call("renew a lease", deadline, |ch| async move {
        // A keepalive is a bidirectional stream; one request, one answer, then both ends close.
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.send(LeaseKeepAliveRequest { id: lease }).await;
        let mut answers = LeaseClient::new(ch)
          .lease_keep_alive(ReceiverStream::new(rx))
          .await?
          .into_inner();
        let answer = answers.message().await?;
        drop(tx);
        answer
          .map(|a| a.ttl)
          .ok_or_else(|| Status::unavailable("the keepalive stream closed without an answer"))
      })
      .await?;
    Ok((ttl > 0).then(|| self.lease_deadline(sent_at, ttl)))
  }

  /// Revokes a lease (which deletes its keys); a lease already gone is not an error.
  pub(crate) async fn revoke(&self, lease: i64, deadline: Instant) -> Result<()> {
    self
      .call("revoke a lease", deadline, |ch| async move {
        match LeaseClient::new(ch)
          .lease_revoke(LeaseRevokeRequest { id: lease })
          .await
        {
          Ok(_) => Ok(()),
          Err(s) if s.code() == Code::NotFound => Ok(()),
          Err(s) => Err(s),
        }
      })
      .await
  }

  /// The lease's remaining TTL as etcd counts it (None if expired or unknown).
  pub(crate) async fn time_to_live(
    &self,
    lease: i64,
    deadline: Instant,
  ) -> Result<Option<Duration>> {
    let ttl = self
      .call("read a lease's TTL", deadline, |ch| async move {
        let req = LeaseTimeToLiveRequest {
          id: lease,
          keys: false,
        };
        Ok(
          LeaseClient::new(ch)
            .lease_time_to_live(req)
            .await?
            .into_inner()
            .ttl,
        )
      })
      .await?;
    Ok((ttl >= 0).then(|| Duration::from_secs(ttl as u64)))
  }

  pub(crate) async fn txn(
    &self,
    what: &str,
    deadline: Instant,
    txn: TxnRequest,
  ) -> Result<TxnResponse> {
    self
      .call(what, deadline, |ch| {
        let txn = txn.clone();
        async move { Ok(KvClient::new(ch).txn(txn).await?.into_inner()) }
      })
      .await
  }

  pub(crate) async fn range(
    &self,
    what: &str,
    deadline: Instant,
    req: RangeRequest,
  ) -> Result<RangeResponse> {
    self
      .call(what, deadline, |ch| {
        let req = req.clone();
        async move { Ok(KvClient::new(ch).range(req).await?.into_inner()) }
      })
      .await
  }

  /// Opens a watch on one key for DELETE events from `from_revision`, on the member that
  /// answered last. Returns the stream and the sender that keeps it open.
  pub(crate) async fn watch_deletes(
    &self,
    key: &[u8],
    from_revision: i64,
    deadline: Instant,
  ) -> Result<(mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>)> {
    self
      .call("watch the lock queue", deadline, |ch| {
        let create = WatchRequest {
          request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
              key: key.to_vec(),
              start_revision: from_revision,
              filters: vec![watch_create_request::FilterType::Noput as i32],
              ..Default::default()
            },
          )),
        };
        async move {
          let (tx, rx) = mpsc::channel(1);
          let _ = tx.send(create).await;
          let mut request = tonic::Request::new(ReceiverStream::new(rx));
          // etcd's own clients send this: a member cut off from the leader then cancels the
          // watch instead of leaving it silent.
          request.metadata_mut().insert(
            "hasleader",
            tonic::metadata::MetadataValue::from_static("true"),
          );
          let stream = WatchClient::new(ch).watch(request).await?.into_inner();
          Ok((tx, stream))
        }
      })
      .await
  }
}

fn retriable(status: &Status) -> bool {
  matches!(
    status.code(),
    Code::Unavailable
      | Code::DeadlineExceeded
      | Code::Unknown
      | Code::Cancelled
      | Code::Internal
      | Code::ResourceExhausted
      | Code::Aborted
  )
}

/// A short reason for an error message: the transport's root cause rather than tonic's wrapper.
fn describe(status: &Status) -> String {
  use std::error::Error as _;
  let mut source: Option<&dyn std::error::Error> = status.source();
  let mut root = None;
  while let Some(s) = source {
    root = Some(s.to_string());
    source = s.source();
  }
  match root {
    Some(root) if status.message().is_empty() || status.message() == "transport error" => root,
    Some(root) => format!("{}: {root}", status.message()),
    None => status.message().to_string(),
  }
}

// --- request builders -----------------------------------------------------------------------

/// The end of the range holding every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
  let mut end = prefix.to_vec();
  while let Some(last) = end.pop() {
    if last < 0xff {
      end.push(last + 1);
      return end;
    }
  }
  vec![0]
}

pub(crate) fn compare_create(key: &[u8], range_end: Vec<u8>, revision: i64) -> Compare {
  Compare {
    result: compare::CompareResult::Equal as i32,
    target: compare::CompareTarget::Create as i32,
    key: key.to_vec(),
    range_end,
    target_union: Some(compare::TargetUnion::CreateRevision(revision)),
  }
}

pub(crate) fn compare_lease(key: &[u8], lease: i64) -> Compare {
  Compare {
    result: compare::CompareResult::Equal as i32,
    target: compare::CompareTarget::Lease as i32,
    key: key.to_vec(),
    range_end: Vec::new(),
    target_union: Some(compare::TargetUnion::Lease(lease)),
  }
}

/// The keys under `dir`, oldest creation first (the queue in order).
pub(crate) fn queue_range(dir: &[u8], limit: i64) -> RangeRequest {
  RangeRequest {
    key: dir.to_vec(),
    range_end: prefix_end(dir),
    limit,
    sort_order: range_request::SortOrder::Ascend as i32,
    sort_target: range_request::SortTarget::Create as i32,
    ..Default::default()
  }
}

/// The newest key under `dir` created before `revision`: the waiter just ahead.
pub(crate) fn predecessor_range(dir: &[u8], revision: i64) -> RangeRequest {
  RangeRequest {
    key: dir.to_vec(),
    range_end: prefix_end(dir),
    limit: 1,
    sort_order: range_request::SortOrder::Descend as i32,
    sort_target: range_request::SortTarget::Create as i32,
    max_create_revision: revision - 1,
    keys_only: true,
    ..Default::default()
  }
}

pub(crate) fn key_range(key: &[u8]) -> RangeRequest {
  RangeRequest {
    key: key.to_vec(),
    ..Default::default()
  }
}

pub(crate) fn op_range(req: RangeRequest) -> RequestOp {
  RequestOp {
    request: Some(request_op::Request::RequestRange(req)),
  }
}

pub(crate) fn op(request: request_op::Request) -> RequestOp {
  RequestOp {
    request: Some(request),
  }
}

/// The keys of the `i`-th answer of a Txn, if it was a Range.
pub(crate) fn txn_kvs(resp: &TxnResponse, i: usize) -> &[KeyValue] {
  match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
    Some(response_op::Response::ResponseRange(r)) => &r.kvs,
    _ => &[],
  }
}
