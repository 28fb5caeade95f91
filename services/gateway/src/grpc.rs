//! `ferry.gateway.v1.Gateway` over gRPC, for server-side clients: the same
//! logic as HTTP, converted at the edge.

use ferry_proto::gateway::v1 as pb;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::core::{CheckParams, Gateway};
use crate::error::GatewayError;
use crate::model::{CheckAnswer, VersionList};

fn meta_str(metadata: &MetadataMap, name: &str) -> Option<String> {
    metadata.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
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
                })
                .collect(),
            deleted: a.deleted.iter().map(|d| pb::DeletedFile { kind: d.kind.clone(), path: d.path.clone() }).collect(),
            delta: a.delta,
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

#[tonic::async_trait]
impl pb::gateway_server::Gateway for Gateway {
    async fn check(&self, request: Request<pb::CheckRequest>) -> Result<Response<pb::CheckResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let params = CheckParams {
            authorization: meta_str(&metadata, "authorization"),
            device: non_empty(req.device).or_else(|| meta_str(&metadata, "x-ferry-device")),
            tenant: Some(req.tenant),
            app: Some(req.app),
            version: Some(req.version),
            platform: non_empty(req.platform),
            want: non_empty(req.want),
            have: non_empty(req.have),
        };
        match Gateway::check(self, &params).await {
            Ok(answer) => {
                self.metrics().request("grpc", "check", "ok");
                Ok(Response::new(answer.into()))
            }
            Err(e) => Err(status(self, "check", e)),
        }
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let authorization = meta_str(&metadata, "authorization");
        let device = meta_str(&metadata, "x-ferry-device");
        match self.versions(authorization.as_deref(), device.as_deref(), &Some(req.tenant), &Some(req.app)).await {
            Ok(list) => {
                self.metrics().request("grpc", "versions", "ok");
                Ok(Response::new(list.into()))
            }
            Err(e) => Err(status(self, "versions", e)),
        }
    }
}
