//! The process's allocator: jemalloc, set up to give memory back to the system.
//!
//! A server's memory rises and falls with its sessions. glibc's allocator keeps what closed
//! sessions freed in its per-thread arenas; jemalloc returns freed pages after a decay time,
//! here from a background thread, so a server whose clients have left shrinks back to its idle
//! size (docs/BENCHMARKS.md has the figures). Setting `_RJEM_MALLOC_CONF` (jemalloc's
//! `MALLOC_CONF`) replaces these settings with the operator's own.

/// jemalloc rather than the system allocator; see the module docs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long freed pages stay with the allocator for reuse before they go back to the system:
/// long enough that a busy server rarely gives back what it needs again a moment later.
const DIRTY_DECAY_MS: isize = 1000;

/// Applies the settings above, unless `_RJEM_MALLOC_CONF` chose others. A failure costs only
/// memory, so it is reported and the server goes on.
pub(crate) fn configure() {
    use tikv_jemalloc_ctl::{Access, AsName};
    if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
        return;
    }
    // Pages skip the "muzzy" stage (MADV_FREE), which the kernel reclaims only under memory
    // pressure and which still counts as resident until then.
    let mut settings = vec![
        ("arenas.dirty_decay_ms\0".to_string(), DIRTY_DECAY_MS),
        ("arenas.muzzy_decay_ms\0".to_string(), 0),
    ];
    // The defaults above apply to arenas created from now on; these are the existing ones.
    let arenas = tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0);
    for arena in 0..arenas {
        settings.push((format!("arena.{arena}.dirty_decay_ms\0"), DIRTY_DECAY_MS));
        settings.push((format!("arena.{arena}.muzzy_decay_ms\0"), 0));
    }
    for (at, (key, value)) in settings.iter().enumerate() {
        // Arenas past the first exist only once a thread has used them: those may refuse.
        if let Err(e) = key.as_str().name().write(*value) {
            if at < 3 {
                eprintln!(
                    "warning: jemalloc setting {} failed: {e}",
                    key.trim_end_matches('\0')
                );
            }
        }
    }
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("warning: jemalloc background purging is off: {e}");
    }
}
