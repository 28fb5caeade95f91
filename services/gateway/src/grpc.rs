//! `ferry.gateway.v1.Gateway` over gRPC, for server-side clients: the same
//! logic as HTTP, converted at the edge.

use ferry_proto::gateway::v1 as pb;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::core::{Caller, CheckParams, Gateway};
use crate::error::GatewayError;
use crate::model::{CheckAnswer, VersionList};
use crate::watch::WatchItem;

fn meta_str(metadata: &MetadataMap, name: &str) -> Option<String> {
    metadata.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Who makes a call (the key in `authorization`, the device in
/// `x-ferry-device`, the connection's peer address), its message, and the
/// span to serve it in (a child of the caller's trace when its metadata
/// carries `traceparent`).
fn caller<T>(request: Request<T>, call: &'static str) -> (Caller, T, tracing::Span) {
    let source = request.extensions().get::<ferry_net::ConnInfo>().and_then(|info| info.remote_addr).map(|a| a.ip());
    let (metadata, _, message) = request.into_parts();
    // As over HTTP: a span per call only when spans are exported.
    let span = if ferry_telemetry::exporting() {
        let span = tracing::info_span!("grpc", call);
        ferry_telemetry::adopt_parent(&span, |name| meta_str(&metadata, name));
        span
    } else {
        tracing::Span::none()
    };
    let caller = Caller {
        authorization: meta_str(&metadata, "authorization"),
        device: meta_str(&metadata, "x-ferry-device"),
        source,
    };
    (caller, message, span)
}

/// The caller, with the device the message names (if it names one)
/// instead of the header's.
fn with_device(caller: Caller, device: String) -> Caller {
    Caller { device: non_empty(device).or(caller.device), ..caller }
}

fn non_empty(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

fn status(gateway: &Gateway, call: &'static str, e: GatewayError) -> Status {
    gateway.metrics().request("grpc", call, e.code);
    let mut status = ferry_proto::to_status(&e);
    if let Some(seconds) = e.retry_after {
        status.metadata_mut().insert("retry-after", seconds.into());
    }
    status
}

impl From<CheckAnswer> for pb::CheckResponse {
    fn from(a: CheckAnswer) -> Self {
        pb::CheckResponse {
            action: a.action.as_str().to_owned(),
            current: a.current,
            target: a.target,
            manifest_id: a.manifest_id,
            tenant: a.tenant,
            app: a.app,
            artifacts: a
                .artifacts
                .iter()
                .map(|f| pb::ArtifactFile {
                    kind: f.kind.clone(),
                    path: f.path.clone(),
                    size: f.size,
                    blake3: f.blake3.clone(),
                    url: f.url.clone(),
                    expires_at: f.expires_at.clone(),
                    patch: f.patch.as_ref().map(|p| pb::PatchOffer {
                        algorithm: p.algorithm.clone(),
                        base_blake3: p.base_blake3.clone(),
                        size: p.size,
                        blake3: p.blake3.clone(),
                        url: p.url.clone(),
                        expires_at: p.expires_at.clone(),
                    }),
                    compressed: f.compressed.as_ref().map(|c| pb::CompressedOffer {
                        encoding: c.encoding.clone(),
                        size: c.size,
                        blake3: c.blake3.clone(),
                        url: c.url.clone(),
                        expires_at: c.expires_at.clone(),
                    }),
                })
                .collect(),
            deleted: a.deleted.iter().map(|d| pb::DeletedFile { kind: d.kind.clone(), path: d.path.clone() }).collect(),
            delta: a.delta,
            required: a.required,
            last_failure: a.last_failure.map(|f| pb::LastFailure {
                version: f.version,
                result: f.result,
                error_code: f.error_code.unwrap_or_default(),
                error_message: f.error_message.unwrap_or_default(),
                at: f.at,
            }),
        }
    }
}

impl From<VersionList> for pb::ListVersionsResponse {
    fn from(v: VersionList) -> Self {
        pb::ListVersionsResponse {
            deployed: v.deployed.unwrap_or_default(),
            versions: v
                .versions
                .into_iter()
                .map(|v| pb::VersionInfo {
                    version: v.version,
                    manifest_id: v.manifest_id,
                    published_at: v.published_at,
                    deployed: v.deployed,
                })
                .collect(),
        }
    }
}

impl From<crate::model::DeployNotice> for pb::Deployment {
    fn from(n: crate::model::DeployNotice) -> Self {
        pb::Deployment {
            tenant: n.tenant,
            app: n.app,
            version: n.version,
            manifest_id: n.manifest_id,
            compatible: n.compatible.unwrap_or_default(),
            action: n.action.map(|a| a.as_str().to_owned()).unwrap_or_default(),
            required: n.required.unwrap_or(false),
        }
    }
}

type WatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::gateway_server::Gateway for Gateway {
    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let (caller, req, _span) = caller(request, "watch");
        let caller = with_device(caller, req.device);
        let watcher = Gateway::watch(
            self,
            &caller,
            &Some(req.tenant),
            &Some(req.app),
            &non_empty(req.version),
            non_empty(req.last_event_id),
        )
        .await
        .map_err(|e| status(self, "watch", e))?;
        self.metrics().request("grpc", "watch", "ok");
        let events = futures::stream::unfold(watcher, |mut watcher| async move {
            let event = match watcher.next().await? {
                WatchItem::Deployed { id, notice } => pb::WatchEvent { id, deployed: Some(notice.into()) },
                WatchItem::Heartbeat => pb::WatchEvent::default(),
            };
            Some((Ok(event), watcher))
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let (caller, req, span) = caller(request, "check");
        let params = CheckParams {
            caller: with_device(caller, req.device),
            tenant: Some(req.tenant),
            app: Some(req.app),
            version: Some(req.version),
            platform: non_empty(req.platform),
            want: non_empty(req.want),
            have: non_empty(req.have),
        };
        let started = std::time::Instant::now();
        let result = Gateway::check(self, &params).instrument(span).await;
        self.metrics().took("grpc", "check", started);
        match result {
            Ok(answer) => {
                self.metrics().request("grpc", "check", "ok");
                Ok(Response::new(answer.into()))
            }
            Err(e) => Err(status(self, "check", e)),
        }
    }

    async fn submit_report(
        &self,
        request: Request<pb::SubmitReportRequest>,
    ) -> Result<Response<pb::SubmitReportResponse>, Status> {
        let (caller, req, span) = caller(request, "reports");
        let input = ferry_reports::ReportInput {
            report_id: non_empty(req.report_id),
            device_id: non_empty(req.device_id),
            tenant: Some(req.tenant),
            app: Some(req.app),
            from_version: non_empty(req.from_version),
            to_version: non_empty(req.to_version),
            result: non_empty(req.result),
            error_code: non_empty(req.error_code),
            error_message: non_empty(req.error_message),
            duration_ms: req.duration_ms,
            platform: non_empty(req.platform),
        };
        let started = std::time::Instant::now();
        let result = self.report(&caller, &input).instrument(span).await;
        self.metrics().took("grpc", "reports", started);
        match result {
            Ok(accepted) => {
                self.metrics().request("grpc", "reports", "ok");
                Ok(Response::new(pb::SubmitReportResponse {
                    report_id: accepted.report_id,
                    duplicate: accepted.duplicate,
                }))
            }
            Err(e) => Err(status(self, "reports", e)),
        }
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let (caller, req, span) = caller(request, "versions");
        let started = std::time::Instant::now();
        let result = self.versions(&caller, &Some(req.tenant), &Some(req.app)).instrument(span).await;
        self.metrics().took("grpc", "versions", started);
        match result {
            Ok(list) => {
                self.metrics().request("grpc", "versions", "ok");
                Ok(Response::new(list.into()))
            }
            Err(e) => Err(status(self, "versions", e)),
        }
    }
}
