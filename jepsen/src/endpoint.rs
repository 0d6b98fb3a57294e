//! The processes a link joins, named the same whatever carries the link (proxy or namespace).

/// A process on the network: `node-N` or an executor id.
pub type Endpoint = String;

/// The endpoint of coordinator `node_id`.
pub fn node_endpoint(node_id: u64) -> Endpoint {
    format!("node-{node_id}")
}
