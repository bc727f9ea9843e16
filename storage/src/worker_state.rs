//! A worker's local state on disk (filled in by the worker issue).
