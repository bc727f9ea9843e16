//! Wall-clock time for stamping commands. Only the manager that builds a
//! command reads the clock; the state machine only reads the stamp.

use goat_storage::model::Timestamp;

pub fn now_ms() -> Timestamp {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
