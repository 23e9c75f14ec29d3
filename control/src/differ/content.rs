//! containerd's content store, reached through containerd's gRPC API on its unix socket
//! (`containerd.services.content.v1.Content`): Read a blob by digest, Write one under a ref
//! with its expected size, digest and labels.
//!
//! The connection is hyper's HTTP/2 client over a tokio `UnixStream`, one per request, and
//! the generated tonic client runs over it ([`UdsChannel`] is the `tower` service it needs),
//! so tonic's "channel" transport (a load balancer, a buffer, DNS) is not built. Every call
//! carries the containerd namespace of the request it serves (`containerd-namespace`).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codegen::http;
use tonic::Status;

use crate::snapshotter::pb::containerd::services::content::v1 as api;
use crate::snapshotter::pb::containerd::services::leases::v1 as leases;

/// The gRPC metadata key containerd keeps the namespace in.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The gRPC metadata key of the lease a request works in.
pub const LEASE_HEADER: &str = "containerd-lease";
/// How long the lease that keeps a written blob from containerd's garbage collector lasts:
/// the caller's own lease or image takes the blob over long before (containerd does not pass
/// a proxy differ the caller's lease).
pub const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Largest message accepted from containerd (it sends blobs in 1 MiB pieces).
const MAX_MESSAGE: usize = 16 << 20;

/// One HTTP/2 connection to a unix socket, as the `tower` service tonic's client runs on.
#[derive(Clone)]
pub struct UdsChannel {
    send: http2::SendRequest<tonic::body::Body>,
}

impl UdsChannel {
    /// Connect to `path` (the connection is driven by a task on the current tokio runtime).
    pub async fn connect(path: &Path) -> io::Result<UdsChannel> {
        let stream = tokio::net::UnixStream::connect(path).await?;
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("containerd connection: {e}");
            }
        });
        Ok(UdsChannel { send })
    }
}

type ResponseFuture = Pin<
    Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>> + Send>,
>;

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for UdsChannel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> ResponseFuture {
        Box::pin(self.send.send_request(req))
    }
}

/// containerd's content store at `address`, for requests of `namespace`.
#[derive(Clone, Debug)]
pub struct ContentStore {
    pub address: PathBuf,
    pub namespace: Option<String>,
}

fn unavailable(address: &Path, e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!(
        "cannot reach containerd's content store at {}: {e} (strata mount --containerd-address)",
        address.display()
    ))
}

impl ContentStore {
    async fn client(&self) -> Result<api::content_client::ContentClient<UdsChannel>, Status> {
        let ch = UdsChannel::connect(&self.address)
            .await
            .map_err(|e| unavailable(&self.address, e))?;
        let origin = http::Uri::from_static("http://containerd");
        Ok(api::content_client::ContentClient::with_origin(ch, origin)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(ns) = &self.namespace {
            if let Ok(v) = ns.parse() {
                r.metadata_mut().insert(NAMESPACE_HEADER, v);
            }
        }
        r
    }

    fn leased<T>(&self, msg: T, lease: &str) -> tonic::Request<T> {
        let mut r = self.request(msg);
        if let Ok(v) = lease.parse() {
            r.metadata_mut().insert(LEASE_HEADER, v);
        }
        r
    }

    /// A lease `id` that expires after [`LEASE_TTL`] (containerd's `containerd.io/gc.expire`).
    async fn lease(&self, id: &str) -> Result<(), Status> {
        let ch = UdsChannel::connect(&self.address)
            .await
            .map_err(|e| unavailable(&self.address, e))?;
        let mut c = leases::leases_client::LeasesClient::with_origin(
            ch,
            http::Uri::from_static("http://containerd"),
        );
        let expire = std::time::SystemTime::now() + LEASE_TTL;
        let labels = [("containerd.io/gc.expire".to_string(), rfc3339(expire))]
            .into_iter()
            .collect();
        c.create(self.request(leases::CreateRequest {
            id: id.to_string(),
            labels,
        }))
        .await?;
        Ok(())
    }

    /// Put blob `digest` in lease `id` (also when it was already in the store).
    async fn lease_blob(&self, id: &str, digest: &str) -> Result<(), Status> {
        let ch = UdsChannel::connect(&self.address)
            .await
            .map_err(|e| unavailable(&self.address, e))?;
        let mut c = leases::leases_client::LeasesClient::with_origin(
            ch,
            http::Uri::from_static("http://containerd"),
        );
        c.add_resource(self.request(leases::AddResourceRequest {
            id: id.to_string(),
            resource: Some(leases::Resource {
                id: digest.to_string(),
                r#type: "content".into(),
            }),
        }))
        .await?;
        Ok(())
    }

    /// Stream blob `digest` into `tx`, piece by piece; the first error ends the stream (and is
    /// sent as an `io::Error`). Returns when the blob is sent, or the receiver is gone.
    pub async fn read_into(
        &self,
        digest: &str,
        tx: tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
    ) -> Result<(), Status> {
        let mut c = self.client().await?;
        let mut stream = c
            .read(self.request(api::ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if m.data.is_empty() {
                        continue;
                    }
                    if tx.send(Ok(m.data)).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(s) => {
                    let _ = tx
                        .send(Err(io::Error::other(format!(
                            "reading {digest} from containerd: {}",
                            s.message()
                        ))))
                        .await;
                    return Err(s);
                }
            }
        }
    }

    /// Write a blob under `reference`: the pieces come from `pieces` (closed when the blob is
    /// complete) and `commit` gives the size, digest and labels once they are known (`None`:
    /// the producer failed, so abort). A blob that is already in the store is fine. The blob
    /// is held by a lease of its own for [`LEASE_TTL`], so that containerd's garbage collector
    /// does not take it before the caller references it.
    pub async fn write(
        &self,
        reference: &str,
        mut pieces: tokio::sync::mpsc::Receiver<Vec<u8>>,
        commit: tokio::sync::oneshot::Receiver<Option<Commit>>,
    ) -> Result<(), Status> {
        let lease = format!(
            "strata-diff-{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            reference.len()
        );
        self.lease(&lease).await?;
        let mut c = self.client().await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<api::WriteContentRequest>(4);
        let stat = api::WriteContentRequest {
            action: api::WriteAction::Stat as i32,
            r#ref: reference.to_string(),
            ..Default::default()
        };
        tx.send(stat)
            .await
            .map_err(|_| Status::internal("write stream closed"))?;
        let mut responses = c
            .write(self.leased(tokio_stream::wrappers::ReceiverStream::new(rx), &lease))
            .await?
            .into_inner();
        // Responses come one per request: drain them beside the sender.
        let drain = tokio::spawn(async move {
            loop {
                match responses.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(s) => return Err(s),
                }
            }
        });
        let mut offset: i64 = 0;
        let mut sent_all = true;
        while let Some(data) = pieces.recv().await {
            let n = data.len() as i64;
            let req = api::WriteContentRequest {
                action: api::WriteAction::Write as i32,
                r#ref: reference.to_string(),
                offset,
                data,
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                sent_all = false;
                break;
            }
            offset += n;
        }
        let commit = commit.await.ok().flatten();
        let digest = commit.as_ref().map(|c| c.digest.clone());
        let ok = match (sent_all, commit) {
            (true, Some(cm)) => {
                let req = api::WriteContentRequest {
                    action: api::WriteAction::Commit as i32,
                    r#ref: reference.to_string(),
                    total: cm.size as i64,
                    expected: cm.digest,
                    offset,
                    labels: cm.labels.into_iter().collect(),
                    ..Default::default()
                };
                tx.send(req).await.is_ok()
            }
            _ => false,
        };
        drop(tx);
        let drained = drain
            .await
            .map_err(|e| Status::internal(format!("content write task: {e}")))?;
        match drained {
            Ok(()) if ok => self.lease_blob(&lease, &digest.unwrap_or_default()).await,
            Err(s) if s.code() == tonic::Code::AlreadyExists && ok => {
                self.lease_blob(&lease, &digest.unwrap_or_default()).await
            }
            other => {
                // Leave no half-written ingest behind.
                if let Ok(mut c) = self.client().await {
                    let _ = c
                        .abort(self.request(api::AbortRequest {
                            r#ref: reference.to_string(),
                        }))
                        .await;
                }
                match other {
                    Err(s) => Err(s),
                    Ok(()) => Err(Status::aborted(format!(
                        "writing {reference} to containerd's content store did not complete"
                    ))),
                }
            }
        }
    }
}

/// What the content store is told when a written blob is complete.
#[derive(Clone, Debug)]
pub struct Commit {
    pub size: u64,
    pub digest: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `t` as RFC 3339 in UTC (`2026-12-02T01:08:47Z`), as containerd's labels want times.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_796_173_727)),
            "2026-12-02T01:08:47Z"
        );
    }
}
