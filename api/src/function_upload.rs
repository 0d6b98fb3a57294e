//! A user function's component travels in chunks (a Python component is ~18 MB, above gRPC's
//! message limit): from the CLI to any coordinator, which forwards them to an executor that
//! writes them into the checkpoint store. Both ends share these helpers.

use raftstream_proto::v1 as pb;
use tonic::Status;

use crate::spec::MAX_FUNCTION_BYTES;

/// Bytes per chunk.
pub const FUNCTION_CHUNK_BYTES: usize = 1 << 20;

/// A component received whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFunction {
    /// As the sender claims it: the executor checks it against the bytes.
    pub sha256: String,
    pub bytes: Vec<u8>,
}

/// The chunks of `bytes`, whose SHA-256 is `sha256`; the first carries the hash and size.
pub fn function_chunks(sha256: &str, bytes: &[u8]) -> Vec<pb::FunctionChunk> {
    let mut chunks: Vec<pb::FunctionChunk> = bytes
        .chunks(FUNCTION_CHUNK_BYTES)
        .map(|data| pb::FunctionChunk {
            data: data.to_vec(),
            ..Default::default()
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(pb::FunctionChunk::default());
    }
    chunks[0].sha256 = sha256.to_owned();
    chunks[0].size_bytes = bytes.len() as u64;
    chunks
}

/// Reads a stream of chunks into one component, refusing a missing or malformed hash, a size
/// above [`MAX_FUNCTION_BYTES`] and a stream that ends short of the announced size or past it.
pub async fn receive_function(stream: &mut tonic::Streaming<pb::FunctionChunk>) -> Result<ReceivedFunction, Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("an upload without chunks"))?;
    let sha256 = first.sha256;
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
        return Err(Status::invalid_argument(format!(
            "the first chunk must carry the component's SHA-256 as 64 lowercase hex digits, found {sha256:?}"
        )));
    }
    let size = first.size_bytes;
    if size == 0 || size > MAX_FUNCTION_BYTES {
        return Err(Status::invalid_argument(format!(
            "a function of {size} bytes: it must be between 1 and {MAX_FUNCTION_BYTES} bytes"
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    bytes.extend_from_slice(&first.data);
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(&chunk.data);
        if bytes.len() as u64 > size {
            return Err(Status::invalid_argument(format!(
                "more bytes than the announced {size}"
            )));
        }
    }
    if bytes.len() as u64 != size {
        return Err(Status::invalid_argument(format!(
            "the upload ended after {} of the announced {size} bytes",
            bytes.len()
        )));
    }
    Ok(ReceivedFunction { sha256, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_carry_the_hash_and_size_once_and_every_byte_in_order() {
        let bytes: Vec<u8> = (0..(FUNCTION_CHUNK_BYTES * 2 + 5)).map(|i| i as u8).collect();
        let chunks = function_chunks("ab", &bytes);
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            (chunks[0].sha256.as_str(), chunks[0].size_bytes),
            ("ab", bytes.len() as u64)
        );
        assert!(chunks[1..]
            .iter()
            .all(|chunk| chunk.sha256.is_empty() && chunk.size_bytes == 0));
        let joined: Vec<u8> = chunks.iter().flat_map(|chunk| chunk.data.clone()).collect();
        assert_eq!(joined, bytes);
    }
}
