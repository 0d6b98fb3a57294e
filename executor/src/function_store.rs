//! `FunctionStoreService`: an executor writes a user function's component into the checkpoint
//! store, where every executor fetches it by hash. The coordinators forward uploads here, since
//! only executors reach the store.

use std::sync::Arc;

use raftstream_api::spec::function_location;
use raftstream_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::checkpoint::{CheckpointStorage, CheckpointStore};

/// The service of one executor.
pub struct FunctionStoreServiceImpl {
    pub executor_id: String,
    pub store: Arc<CheckpointStorage>,
}

#[tonic::async_trait]
impl pb::function_store_service_server::FunctionStoreService for FunctionStoreServiceImpl {
    async fn store_function(
        &self,
        request: Request<tonic::Streaming<pb::FunctionChunk>>,
    ) -> Result<Response<pb::UploadFunctionResponse>, Status> {
        let mut stream = request.into_inner();
        let function = raftstream_api::function_upload::receive_function(&mut stream).await?;
        let bytes = function.bytes;
        let (found, checked) = crate::blocking::off_the_workers(|| {
            (
                raftstream_functions::sha256_hex(&bytes),
                raftstream_functions::check_component_bytes("the upload", &bytes),
            )
        });
        if found != function.sha256 {
            return Err(Status::invalid_argument(format!(
                "the upload's bytes hash to sha256 {found}, not the announced {}: damaged in transit",
                function.sha256
            )));
        }
        checked.map_err(|error| Status::invalid_argument(error.to_string()))?;
        let size_bytes = bytes.len() as u64;
        self.store
            .put(&function_location(&found), bytes)
            .await
            .map_err(|error| Status::unavailable(format!("writing the function into the checkpoint store: {error}")))?;
        Ok(Response::new(pb::UploadFunctionResponse {
            sha256: found,
            size_bytes,
            stored_by: self.executor_id.clone(),
        }))
    }
}
