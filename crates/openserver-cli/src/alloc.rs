//! The process's allocator: jemalloc, set up to give memory back to the system.
//!
//! A server's memory rises and falls with its sessions. glibc's allocator keeps what closed
//! sessions freed in its per-thread arenas; jemalloc returns freed pages after a decay time,
//! here from a background thread, and each runtime worker hands its thread cache back as it
//! goes idle ([`on_worker_park`]), so a server whose clients have left shrinks back close to
//! its idle size (docs/BENCHMARKS.md has the figures). Setting `_RJEM_MALLOC_CONF` (jemalloc's
//! `MALLOC_CONF`) replaces the decay settings with the operator's own.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use tikv_jemalloc_ctl::thread::{deallocatedp, ThreadLocal};
use tikv_jemalloc_ctl::{Access, AsName};

/// jemalloc rather than the system allocator; see the module docs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes a worker thread may free between two hand-backs of its cache (see
/// [`on_worker_park`]): rare enough to cost nothing under load, and far less than a crowd of
/// sessions leaving frees.
const HAND_BACK_AFTER_FREED: u64 = 1 << 20;

thread_local! {
    /// jemalloc's count of the bytes this thread has freed.
    static FREED: Cell<Option<ThreadLocal<u64>>> = const { Cell::new(None) };
    /// That count at this thread's last hand-back.
    static FREED_AT_HAND_BACK: Cell<u64> = const { Cell::new(0) };
}

/// Whether [`on_worker_park`] hands caches back (thread caches are on).
static CACHE_HAND_BACK: AtomicBool = AtomicBool::new(false);

/// How long freed pages stay with the allocator for reuse before they go back to the system:
/// long enough that a busy server rarely gives back what it needs again a moment later.
const DIRTY_DECAY_MS: isize = 1000;

/// Applies the settings above, unless `_RJEM_MALLOC_CONF` chose others. A failure costs only
/// memory, so it is reported and the server goes on.
pub(crate) fn configure() {
    // Thread caches off (an operator's choice) stay off: the idle hand-back would enable them.
    CACHE_HAND_BACK.store(
        tikv_jemalloc_ctl::opt::tcache::read().unwrap_or(false),
        Ordering::Relaxed,
    );
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

/// Called by each runtime worker thread as it goes idle. jemalloc keeps a cache of freed
/// objects per thread and trims it only as that thread allocates again, so a worker that
/// goes idle after a crowd of sessions has closed would hold megabytes of them for good (most
/// of what stayed after the clients left, docs/BENCHMARKS.md). A worker that has freed at
/// least [`HAND_BACK_AFTER_FREED`] bytes since its last hand-back returns its cache to the
/// shared arenas, whose empty pages then go back to the system after the decay time.
pub(crate) fn on_worker_park() {
    if !CACHE_HAND_BACK.load(Ordering::Relaxed) {
        return;
    }
    let freed = FREED.with(|cell| {
        cell.get().or_else(|| {
            let counter = deallocatedp::read().ok()?;
            cell.set(Some(counter));
            Some(counter)
        })
    });
    let Some(freed) = freed.map(ThreadLocal::get) else {
        return;
    };
    if freed.wrapping_sub(FREED_AT_HAND_BACK.get()) < HAND_BACK_AFTER_FREED {
        return;
    }
    FREED_AT_HAND_BACK.set(freed);
    // Switching the cache off flushes it to the arenas; switching it on starts an empty one.
    let enabled = b"thread.tcache.enabled\0".name();
    let _ = enabled.write(false);
    let _ = enabled.write(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that freed a megabyte hands its cache back when it parks, and caches again.
    #[test]
    fn a_worker_that_freed_a_lot_hands_its_cache_back_and_keeps_caching() {
        configure();
        assert!(CACHE_HAND_BACK.load(Ordering::Relaxed));
        std::thread::spawn(|| {
            on_worker_park();
            let first = FREED_AT_HAND_BACK.get();
            // Less than the threshold freed: nothing to hand back.
            drop(vec![1u8; 1024]);
            on_worker_park();
            assert_eq!(FREED_AT_HAND_BACK.get(), first);
            let blocks: Vec<Vec<u8>> = (0..2048).map(|_| vec![1u8; 1024]).collect();
            drop(blocks);
            on_worker_park();
            assert!(FREED_AT_HAND_BACK.get() >= first + HAND_BACK_AFTER_FREED);
            let enabled = b"thread.tcache.enabled\0".name();
            let on: bool = enabled.read().unwrap();
            assert!(on);
        })
        .join()
        .unwrap();
    }
}
