//! Histories of client operations against the task API, and a
//! linearizability checker for them.
//!
//! A drill or a test records every operation it makes ([`Recorder`]): what
//! it asked (`create`, `read`, `list`, `stop`), when it asked and when the
//! answer came (microseconds from the start of the recording), and the
//! outcome: `ok` (with what a read or list saw), `failed` (the operation
//! definitely did not happen: a 4xx, or the connection was refused before
//! anything was sent) or `unknown` (a timeout, a 5xx, a broken connection:
//! it may or may not have happened, at any time after it was asked).
//!
//! [`check`] decides whether the history is linearizable against a model of
//! the task API, in the style of Wing & Gong with Lowe's memoization (the
//! search Porcupine and Knossos run): find one order of the operations that
//! respects real time (an operation answered before another was asked comes
//! first) and in which every answer is what the model answers. Tasks are
//! independent keys, so the history is split per task id and each part is
//! searched alone (P-compositionality); a `list` is split into one read per
//! task it could have seen (listed: present, otherwise: absent). That split
//! checks every key's view of each list but not that one list saw all keys
//! at one instant; a violation found is always a real one.
//!
//! Everything here is pure: no I/O, no clock but the recorder's.

mod check;
mod op;
mod record;

pub use check::{check, Verdict, Violation};
pub use op::{from_json_lines, to_json_lines, Call, Operation, Outcome, Seen};
pub use record::{seen_of, seen_of_task, Pending, Recorder};
