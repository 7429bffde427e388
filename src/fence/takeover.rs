//! Taking a claim over from a host that fenced itself: the rule that `tests/fence_safety.rs`
//! drives through random partitions, freezes, restarts and reboots, written once.
//!
//! The order is the proof (docs/fencing.md): read the claim, THEN confirm the holder's silence
//! with a consistent read of its lease, then compare-and-swap the claim on the version read.
//! Confirming first would let a decision delayed by a freeze land on a claim the holder took
//! again in a newer holding; the swap on the version read makes such a decision fail instead.

use std::future::Future;

use super::lease::{ApiError, LeaseApi};
use super::observer::Verdict;
use super::{FenceError, FenceGuard};

/// A claim as the API server has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRead {
    /// The host lease name of the holder.
    pub holder: String,
    /// The claim's resourceVersion: the swap is conditional on it.
    pub version: String,
}

/// What the takeover needs from the API server besides the lease cache.
pub trait ClaimApi: LeaseApi {
    /// The claim as the server has it now (a consistent read, never the cache).
    fn read_claim(
        &self,
        claim: &str,
    ) -> impl Future<Output = Result<Option<ClaimRead>, ApiError>> + Send;
    /// Moves the claim to `new_holder` only if it still has `version`; `Conflict` otherwise.
    fn swap_claim(
        &self,
        claim: &str,
        version: &str,
        new_holder: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}

/// How one takeover attempt ended. Only `Taken` moved anything this holding may use.
#[derive(Debug)]
pub enum Takeover {
    /// The claim is ours, and so is the holding that took it: the fresh guard proves both.
    Taken(FenceGuard),
    /// The claim is not the victim's (absent, or someone else's): nothing to take from it.
    NotVictims,
    /// By our observer the victim's lease is not expired: it may still be writing.
    HolderAlive,
    /// The victim's lease changed since our observer saw it (or vanished): it is alive, or
    /// our cache is behind; either way, no takeover on this sighting.
    HolderSpoke,
    /// The claim changed between our read and our swap (409): re-read and re-decide.
    Raced,
    /// Our own holding ended before or while we acted: whatever the claim says, this epoch
    /// must not use it (a later epoch re-stamps).
    Fenced(FenceError),
}

/// One attempt to move `claim` from its holders to `new_holder`. `victims` are their host lease
/// names: the claim's holder first, then any host that shares it (a live migration's
/// destination); every one must be silent.
pub async fn take_over<A: ClaimApi>(
    api: &A,
    guard: &FenceGuard,
    claim: &str,
    victims: &[&str],
    new_holder: &str,
) -> Result<Takeover, ApiError> {
    // A guard of this holding, renewed since it was handed to us.
    if let Err(e) = guard.refresh() {
        return Ok(Takeover::Fenced(e));
    }
    let expired = |v: &&str| matches!(api.verdict(v), Verdict::Expired { .. });
    let Some(holder) = victims.first() else {
        return Ok(Takeover::NotVictims);
    };
    if !victims.iter().all(expired) {
        return Ok(Takeover::HolderAlive);
    }
    let version = match api.read_claim(claim).await? {
        Some(c) if c.holder == *holder => c.version,
        _ => return Ok(Takeover::NotVictims),
    };
    // The silence must still hold after the claim was read.
    for v in victims {
        let Some(seen) = api.cached(v) else {
            return Ok(Takeover::HolderSpoke);
        };
        match api.read(v).await? {
            Some(now) if now.resource_version == seen.resource_version => {}
            _ => return Ok(Takeover::HolderSpoke),
        }
    }
    if !victims.iter().all(expired) {
        return Ok(Takeover::HolderAlive);
    }
    match api.swap_claim(claim, &version, new_holder).await {
        Ok(()) => {}
        Err(ApiError::Conflict) => return Ok(Takeover::Raced),
        Err(e) => return Err(e),
    }
    Ok(match guard.refresh() {
        Ok(fresh) => Takeover::Taken(fresh),
        Err(e) => Takeover::Fenced(e),
    })
}
