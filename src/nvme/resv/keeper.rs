//! The routine check: every [`CHECK_INTERVAL`], and at once when a claim or a volume changes,
//! each attached volume whose claim this host holds in its current holding gets its own part
//! of the reservation restored (a target that restarted or had its namespace disabled forgets
//! every reservation). A claim that is not this host's in this holding is never acted on: a
//! host that lost a volume must not register again, or it could write again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::policy::Role;
use super::service::Reservations;
use crate::claims::{Claim, VolumeClaims};
use crate::fence::{Fence, FenceGuard};
use crate::nvme::volumes::{VolumeState, Volumes};

/// How often a volume's reservation is read back: the longest a target that forgot it leaves
/// it unreserved, at one Report per volume.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What `claim` makes this host (`guard`'s holder) at the target, if the claim was written in
/// this holding (a claim of an earlier epoch is only re-stamped, or found lost, by the
/// claims' re-check: until then it proves nothing).
pub fn role_of(claim: &Claim, guard: &FenceGuard) -> Option<Role> {
    let me = format!("{}/{}", guard.node(), guard.incarnation());
    if claim.holder == me && claim.epoch == guard.epoch() {
        return Some(if claim.migration.is_some() {
            Role::Shared
        } else {
            Role::Sole
        });
    }
    claim
        .migration
        .as_ref()
        .filter(|m| m.holder == me && m.epoch == guard.epoch())
        .map(|_| Role::Shared)
}

/// Runs the routine check until `shutdown`.
pub async fn run(
    resv: Arc<Reservations>,
    volumes: Volumes,
    claims: Option<Arc<dyn VolumeClaims>>,
    fence: Fence,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut claim_changes = claims.as_ref().map(|c| c.subscribe());
    let mut volume_changes = volumes.subscribe();
    let mut roles: BTreeMap<String, Role> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = volume_changes.recv() => {}
            _ = async {
                match &mut claim_changes {
                    Some(rx) => { let _ = rx.recv().await; }
                    None => std::future::pending().await,
                }
            } => {}
        }
        check_all(&resv, &volumes, claims.as_deref(), &fence, &mut roles).await;
    }
}

async fn check_all(
    resv: &Arc<Reservations>,
    volumes: &Volumes,
    claims: Option<&dyn VolumeClaims>,
    fence: &Fence,
    roles: &mut BTreeMap<String, Role>,
) {
    let Ok(guard) = fence.guard() else {
        return;
    };
    let attached = volumes.list();
    roles.retain(|id, _| attached.iter().any(|v| &v.volume_id == id));
    for v in attached {
        if !matches!(v.state, VolumeState::Live | VolumeState::Degraded)
            || resv.is_busy(&v.volume_id)
        {
            continue;
        }
        let role = match claims {
            None => Some(Role::Sole),
            Some(c) => c.held(&v.volume_id).and_then(|cl| role_of(&cl, &guard)),
        };
        let Some(role) = role else {
            roles.remove(&v.volume_id);
            continue;
        };
        let before = roles.insert(v.volume_id.clone(), role);
        // A migration that collapsed onto this host: the other holder's key goes, once a
        // consistent read of the claim says so (the local view is a hint).
        let mut takeover = before == Some(Role::Shared) && role == Role::Sole;
        if takeover {
            if let Some(c) = claims {
                match c.read(&v.volume_id).await {
                    Ok(Some(cl)) if role_of(&cl, &guard) == Some(Role::Sole) => {}
                    Ok(_) => takeover = false,
                    Err(e) => {
                        tracing::warn!(VOLUME = v.volume_id.as_str(), "reservation check: {e}");
                        roles.insert(v.volume_id.clone(), Role::Shared);
                        continue;
                    }
                }
            }
        }
        let shown = resv.view(&v.volume_id).map(|x| x.problem);
        match resv.check(&guard, &v, role, takeover).await {
            Ok(_) => {}
            Err(e) => {
                // Said once per change, not every check.
                if shown.as_deref() != Some(e.to_string().as_str()) {
                    tracing::error!(VOLUME = v.volume_id.as_str(), "{e}");
                }
                if takeover {
                    roles.insert(v.volume_id.clone(), Role::Shared);
                }
            }
        }
    }
}
