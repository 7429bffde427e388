//! Volume health: controller states re-read from sysfs, since the kernel sends no uevent when a
//! controller goes from live to connecting or resetting.

use super::*;

impl Volumes {
    /// Re-reads sysfs and updates every connected volume's state (health). Volumes in the
    /// middle of a connect or disconnect are left to it: it computes their view when it ends.
    /// Reads only their controllers and what those reach, so its cost follows this agent's
    /// volumes, not every namespace on the host, and nothing when none is connected.
    pub fn refresh(&self) {
        let records: Vec<Record> = self
            .inner
            .volumes
            .lock()
            .unwrap()
            .values()
            .filter(|(r, _)| r.phase == Phase::Connected)
            .map(|(r, _)| r.clone())
            .collect();
        if records.is_empty() {
            return;
        }
        let names: Vec<String> = records.iter().flat_map(Record::controller_names).collect();
        let topo = sysfs::scan_controllers(&self.inner.host, &names);
        for r in records {
            self.apply(r, &topo, true);
        }
    }

    /// Follows udev events (cache invalidation, volume states) and re-reads controller states
    /// every [`HEALTH_INTERVAL`], until `shutdown`.
    pub async fn watch(&self, shutdown: tokio_util::sync::CancellationToken) {
        let mut rx = self.inner.events.subscribe();
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                r = rx.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = r { return; }
                    self.invalidate();
                    // A connect or a path change comes as a burst of events: read sysfs once
                    // after it, not once per event (connects in flight do their own reads).
                    let quiet = tokio::time::sleep(EVENT_SETTLE);
                    tokio::pin!(quiet);
                    loop {
                        tokio::select! {
                            _ = &mut quiet => break,
                            r = rx.recv() => match r {
                                Err(broadcast::error::RecvError::Closed) => return,
                                _ => quiet.as_mut().reset(tokio::time::Instant::now() + EVENT_SETTLE),
                            },
                        }
                    }
                }
            }
            self.refresh();
        }
    }
}
