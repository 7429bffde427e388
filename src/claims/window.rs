//! A live migration's window, run by its destination: it waits for the deadline, or for the
//! agent's watch of its own claims to say the source let go (then a read confirms it and the
//! window closes: the destination is the sole holder). At the deadline a read decides: with
//! both still attached, the destination disconnects itself and leaves the source the sole
//! holder, with an Event.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::reconcile::Attachments;
use super::VolumeClaims;

/// How long a read that failed (or a detach) waits before it is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Opens `volume_id`'s window for `window` (unless one is open), as a task of its own.
pub fn open(
    claims: Arc<dyn VolumeClaims>,
    devices: Arc<dyn Attachments>,
    volume_id: String,
    window: Duration,
) {
    if !claims.open_window(&volume_id) {
        return;
    }
    tokio::spawn(async move {
        run(claims.as_ref(), devices.as_ref(), &volume_id, window).await;
        claims.close_window(&volume_id);
    });
}

async fn run(claims: &dyn VolumeClaims, devices: &dyn Attachments, id: &str, window: Duration) {
    let deadline = Instant::now() + window;
    let me = claims.node().to_string();
    let destination = |c: &super::Claim| c.migration.as_ref().is_some_and(|m| m.node() == me);
    let mut changes = claims.subscribe();
    loop {
        // Until the deadline, or until this host's view of the claim says it is not the
        // destination any more (a hint: the read below decides).
        while Instant::now() < deadline {
            let hinted = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => false,
                c = changes.recv() => match c {
                    Ok(v) => v == id && !claims.held(id).is_some_and(|c| destination(&c)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => false,
                },
            };
            if hinted {
                break;
            }
        }
        let claim = match claims.read(id).await {
            Ok(c) => c,
            // Not acted on blind: the source may have let go (we would be the sole holder). The
            // fence covers a host cut off from the API server.
            Err(e) => {
                tracing::warn!(VOLUME = id, "migration window: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if !claim.as_ref().is_some_and(destination) {
            // Collapsed (we hold it alone now) or no longer ours: nothing left to time.
            let ours = claim.filter(|c| c.node() == me);
            claims.observed(id, ours);
            return;
        }
        if Instant::now() < deadline {
            continue;
        }
        // Both still attached at the deadline: this host goes.
        if devices.attached().iter().any(|a| a == id) {
            if let Err(e) = devices.detach(id).await {
                tracing::error!(VOLUME = id, "migration window ended: {e}; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        match claims.expire_migration(id).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(VOLUME = id, "migration window ended: {e}; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
