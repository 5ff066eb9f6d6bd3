//! Placeholder: being written.
/// Placeholder.
pub struct SqliteUserStore;
