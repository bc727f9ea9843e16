//! Bincode encoding of Raft entries, metadata and RPC bodies. Decoding
//! errors become openraft storage errors (on disk) or HTTP 400s (on the wire)
//! at the call sites.

use serde::de::DeserializeOwned;
use serde::Serialize;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    goat_storage::state_store::encode(value)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(value, _)| value)
}
