//! A live migration's window, run by its destination: while both hosts hold the volume, the
//! destination watches the claim (a read every few seconds, only while the window is open);
//! when the source lets go the destination is the sole holder and the window closes; at the
//! deadline with both still attached, the destination disconnects itself and leaves the source
//! the sole holder, with an Event.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::reconcile::Attachments;
use super::VolumeClaims;

/// How often an open window reads its claim.
const POLL: Duration = Duration::from_secs(2);

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
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(if left.is_zero() { POLL } else { POLL.min(left) }).await;
        let claim = match claims.read(id).await {
            Ok(c) => c,
            // Not acted on blind: the source may have let go (we would be the sole holder). The
            // fence covers a host cut off from the API server.
            Err(e) => {
                tracing::warn!(VOLUME = id, "migration window: {e}");
                continue;
            }
        };
        let destination = claim
            .as_ref()
            .is_some_and(|c| c.migration.as_ref().is_some_and(|m| m.node() == me));
        if !destination {
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
                continue;
            }
        }
        match claims.expire_migration(id).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(VOLUME = id, "migration window ended: {e}; retrying"),
        }
    }
}
