//! Argon2id password hashing, run off the async worker threads with bounded concurrency.

use super::AuthError;
use argon2::password_hash::{
    Error as PhcError, PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// Argon2id cost parameters, plus how many hash jobs may run at once.
///
/// Missing fields in a config file take their [`Default`] value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashParams {
    /// Memory per hash, in KiB (argon2 `m_cost`). Default 19456 (19 MiB).
    pub memory_kib: u32,
    /// Number of passes over the memory (argon2 `t_cost`). Default 2.
    pub iterations: u32,
    /// Lanes (argon2 `p_cost`); the hash is still computed on one thread. Default 1.
    pub parallelism: u32,
    /// Most hash or verify jobs running at the same time; further ones wait their turn.
    /// Default: the number of CPUs. 0 is treated as 1.
    pub max_concurrent: usize,
}

impl Default for HashParams {
    /// The OWASP recommendation for argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        HashParams {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Hashes and verifies passwords with argon2id (PHC strings).
///
/// Cheap to clone: clones share the concurrency limit. The async methods run the work on
/// tokio's blocking pool, at most [`HashParams::max_concurrent`] jobs at a time, so a burst of
/// logins cannot starve the async threads nor exhaust memory.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: HashParams,
    argon2: Argon2<'static>,
    /// In an `Arc` so that a permit can move into the blocking job and outlive the caller.
    permits: Arc<Semaphore>,
    /// Hash of a random password, checked for unknown users so they cost as much as a wrong
    /// password. Computed on first need (or by [`PasswordHasher::warm_up`]).
    dummy: OnceLock<String>,
    #[cfg(test)]
    gauge: Gauge,
    /// Argon2 verifications actually run, so tests can check that an unknown user costs one.
    #[cfg(test)]
    checks: std::sync::atomic::AtomicUsize,
}

impl PasswordHasher {
    /// A hasher with `params`; fails if argon2 rejects them (for example too little memory
    /// for the parallelism).
    pub fn new(params: HashParams) -> Result<Self, AuthError> {
        let argon_params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(|e| AuthError::Hash(format!("invalid argon2 parameters: {e}")))?;
        let permits = params.max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Ok(PasswordHasher {
            inner: Arc::new(Inner {
                params,
                argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params),
                permits: Arc::new(Semaphore::new(permits)),
                dummy: OnceLock::new(),
                #[cfg(test)]
                gauge: Gauge::default(),
                #[cfg(test)]
                checks: Default::default(),
            }),
        })
    }

    /// How many argon2 verifications have run (tests only).
    #[cfg(test)]
    pub(crate) fn argon2_checks(&self) -> usize {
        self.inner.checks.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The parameters new hashes are made with.
    pub fn params(&self) -> &HashParams {
        &self.inner.params
    }

    /// Hashes `password` with a fresh random salt; returns the PHC string to store.
    pub async fn hash(&self, password: &str) -> Result<String, AuthError> {
        let password = password.to_owned();
        self.run(move |inner| inner.hash_now(password.as_bytes()))
            .await
    }

    /// Checks `password` against the stored PHC string `phc`.
    ///
    /// `None` (unknown user) checks against a dummy hash and returns `Ok(false)`, taking as
    /// long as a wrong password. A stored hash that cannot be parsed is an
    /// [`AuthError::Hash`].
    pub async fn verify(&self, phc: Option<&str>, password: &str) -> Result<bool, AuthError> {
        let phc = phc.map(str::to_owned);
        let password = password.to_owned();
        self.run(move |inner| inner.verify_now(phc.as_deref(), password.as_bytes()))
            .await
    }

    /// Computes the dummy hash now, so the first unknown-user login does not pay for it (which
    /// would make it slower than a wrong password). Optional; call at server start.
    pub async fn warm_up(&self) -> Result<(), AuthError> {
        self.run(|inner| inner.dummy().map(drop)).await
    }

    /// [`hash`](Self::hash) on the current thread, for synchronous callers such as the CLI.
    ///
    /// Does not take part in the concurrency limit; do not call it on an async worker thread.
    pub fn hash_blocking(&self, password: &str) -> Result<String, AuthError> {
        self.inner.hash_now(password.as_bytes())
    }

    /// [`verify`](Self::verify) on the current thread, for synchronous callers such as the CLI.
    ///
    /// Does not take part in the concurrency limit; do not call it on an async worker thread.
    pub fn verify_blocking(&self, phc: Option<&str>, password: &str) -> Result<bool, AuthError> {
        self.inner.verify_now(phc, password.as_bytes())
    }

    /// Runs other password work (SCRAM key derivation, possibly with a `*_blocking` call) on
    /// the blocking pool under the same concurrency limit, so it too stays off the async
    /// threads and counts against the bound.
    pub(crate) async fn run_limited<T, F>(&self, job: F) -> Result<T, AuthError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, AuthError> + Send + 'static,
    {
        self.run(move |_| job()).await
    }

    /// Runs `job` on the blocking pool once a permit is free.
    async fn run<T, F>(&self, job: F) -> Result<T, AuthError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, AuthError> + Send + 'static,
    {
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| AuthError::Hash("hasher semaphore closed".into()))?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // Held until the CPU work ends, even if the caller stopped waiting, so the limit
            // bounds the work actually running.
            let _permit = permit;
            #[cfg(test)]
            let _active = inner.gauge.enter();
            job(&inner)
        })
        .await
        .map_err(|e| AuthError::Hash(format!("hashing task failed: {e}")))?
    }
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.inner.params)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn hash_now(&self, password: &[u8]) -> Result<String, AuthError> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2
            .hash_password(password, &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| AuthError::Hash(e.to_string()))
    }

    fn verify_now(&self, phc: Option<&str>, password: &[u8]) -> Result<bool, AuthError> {
        let Some(phc) = phc else {
            // Same work as a real check; the outcome is irrelevant since the user is unknown.
            let _ = self.verify_now(Some(self.dummy()?), password);
            return Ok(false);
        };
        let parsed = PasswordHash::new(phc)
            .map_err(|e| AuthError::Hash(format!("stored password hash is invalid: {e}")))?;
        // Without these the verifier just says "wrong password"; a broken record must be
        // reported as an error instead.
        if parsed.salt.is_none() || parsed.hash.is_none() {
            return Err(AuthError::Hash(
                "stored password hash has no salt or no output".into(),
            ));
        }
        // Verification uses the parameters recorded in the hash, so older hashes keep working
        // after a parameter change.
        #[cfg(test)]
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match self.argon2.verify_password(password, &parsed) {
            Ok(()) => Ok(true),
            Err(PhcError::Password) => Ok(false),
            Err(e) => Err(AuthError::Hash(e.to_string())),
        }
    }

    fn dummy(&self) -> Result<&str, AuthError> {
        if let Some(dummy) = self.dummy.get() {
            return Ok(dummy);
        }
        let mut random = [0u8; 32];
        OsRng.fill_bytes(&mut random);
        let hash = self.hash_now(hex::encode(random).as_bytes())?;
        // Concurrent first calls may each compute one; any of them serves.
        Ok(self.dummy.get_or_init(|| hash))
    }
}

/// Counts jobs running at once, so tests can check the concurrency bound directly.
#[cfg(test)]
#[derive(Default)]
struct Gauge {
    active: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl Gauge {
    fn enter(&self) -> GaugeGuard<'_> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.active.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        GaugeGuard(self)
    }
}

#[cfg(test)]
struct GaugeGuard<'a>(&'a Gauge);

#[cfg(test)]
impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;

    fn small(max_concurrent: usize) -> PasswordHasher {
        PasswordHasher::new(HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            max_concurrent,
        })
        .unwrap()
    }

    #[test]
    fn default_params_are_owasp() {
        let p = HashParams::default();
        assert_eq!((p.memory_kib, p.iterations, p.parallelism), (19456, 2, 1));
        assert!(p.max_concurrent >= 1);
    }

    #[test]
    fn invalid_params_are_rejected() {
        let params = HashParams {
            memory_kib: 1,
            ..HashParams::default()
        };
        assert!(matches!(
            PasswordHasher::new(params),
            Err(AuthError::Hash(_))
        ));
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let h = small(2);
        let phc = h.hash("correct horse").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(h.verify(Some(&phc), "correct horse").await.unwrap());
        assert!(!h.verify(Some(&phc), "battery staple").await.unwrap());
        // A fresh salt each time.
        assert_ne!(phc, h.hash("correct horse").await.unwrap());
    }

    #[tokio::test]
    async fn unknown_user_is_false() {
        let h = small(1);
        assert!(!h.verify(None, "anything").await.unwrap());
        assert!(!h.verify(None, "").await.unwrap());
        h.warm_up().await.unwrap();
        assert!(!h.verify_blocking(None, "anything").unwrap());
    }

    #[tokio::test]
    async fn an_unknown_user_costs_one_real_check_like_a_wrong_password() {
        let h = small(1);
        let stored = h.hash("right").await.unwrap();
        let before = h.argon2_checks();
        assert!(!h.verify(Some(&stored), "wrong").await.unwrap());
        assert_eq!(h.argon2_checks(), before + 1, "a wrong password: one check");
        assert!(!h.verify(None, "wrong").await.unwrap());
        assert_eq!(
            h.argon2_checks(),
            before + 2,
            "an unknown user: one check too"
        );
        assert!(!h.verify_blocking(None, "wrong").unwrap());
        assert_eq!(h.argon2_checks(), before + 3);
    }

    #[test]
    fn params_are_the_ones_given() {
        let h = small(3);
        let want = HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 3,
        };
        assert_eq!(h.params(), &want);
        // A clone reports the same, and Debug shows them (and nothing else).
        assert_eq!(h.clone().params(), &want);
        assert_eq!(
            format!("{h:?}"),
            "PasswordHasher { params: HashParams { memory_kib: 64, iterations: 1, \
             parallelism: 1, max_concurrent: 3 }, .. }"
        );
    }

    #[tokio::test]
    async fn warm_up_computes_the_dummy_hash_once_for_all_unknown_users() {
        let h = small(1);
        assert!(
            h.inner.dummy.get().is_none(),
            "not computed before it is needed"
        );
        h.warm_up().await.unwrap();
        let dummy = h.inner.dummy.get().cloned().expect("warm_up computed it");
        assert!(dummy.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{dummy}");
        // Unknown users check against that same hash; none recomputes it.
        assert!(!h.verify(None, "x").await.unwrap());
        h.warm_up().await.unwrap();
        assert_eq!(h.inner.dummy.get(), Some(&dummy));
    }

    #[tokio::test]
    async fn a_stored_hash_without_its_output_is_an_error_not_a_wrong_password() {
        let h = small(1);
        let phc = h.hash("pw").await.unwrap();
        // Cut the hash output off, keeping the salt: a damaged record.
        let salt_only = &phc[..phc.rfind('$').unwrap()];
        for password in ["pw", "other"] {
            let err = h.verify(Some(salt_only), password).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                "password hashing: stored password hash has no salt or no output"
            );
        }
    }

    #[tokio::test]
    async fn garbage_hash_is_an_error() {
        let h = small(1);
        for bad in ["", "not a hash", "$argon2id$v=19$m=64"] {
            assert!(matches!(
                h.verify(Some(bad), "pw").await,
                Err(AuthError::Hash(_))
            ));
        }
    }

    #[test]
    fn blocking_and_async_agree() {
        let h = small(1);
        let phc = h.hash_blocking("pw").unwrap();
        assert!(h.verify_blocking(Some(&phc), "pw").unwrap());
        assert!(!h.verify_blocking(Some(&phc), "pW").unwrap());
        let rt = tokio::runtime::Runtime::new().unwrap();
        assert!(rt.block_on(h.verify(Some(&phc), "pw")).unwrap());
    }

    #[test]
    fn hashes_made_with_other_params_still_verify() {
        let phc = small(1).hash_blocking("pw").unwrap();
        let other = PasswordHasher::new(HashParams {
            memory_kib: 128,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 1,
        })
        .unwrap();
        assert!(other.verify_blocking(Some(&phc), "pw").unwrap());
    }

    async fn peak_with(max_concurrent: usize) -> usize {
        // Larger memory so jobs last long enough to overlap if the bound were missing.
        let h = PasswordHasher::new(HashParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            max_concurrent,
        })
        .unwrap();
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move {
                    let phc = h.hash(&format!("pw{i}")).await.unwrap();
                    assert!(h.verify(Some(&phc), &format!("pw{i}")).await.unwrap());
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(h.inner.gauge.active.load(SeqCst), 0);
        assert_eq!(h.inner.permits.available_permits(), max_concurrent);
        h.inner.gauge.peak.load(SeqCst)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn semaphore_bounds_concurrency() {
        assert_eq!(peak_with(1).await, 1);
        let peak = peak_with(2).await;
        assert!((1..=2).contains(&peak), "peak {peak}");
    }
}
