//! Placeholder: being written.
/// Placeholder.
pub struct HashParams;
/// Placeholder.
pub struct PasswordHasher;
