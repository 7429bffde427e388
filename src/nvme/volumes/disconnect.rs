//! Disconnect: delete the controllers no other volume uses, wait until they are gone, forget
//! the record. Needs no guard: this is how a host fences itself.

use super::*;

impl Volumes {
    /// Disconnects a volume: deletes its controllers (those no other volume uses), waits until
    /// they and the block device are gone, forgets the record. Disconnecting what is not
    /// connected succeeds. Needs no guard: this is how a host fences itself.
    pub async fn disconnect(&self, id: &str, timeout: Option<Duration>) -> Result<(), NvmeError> {
        let started = Instant::now();
        let result = self.disconnect_inner(id, timeout, false).await;
        self.observe("disconnect", started, &result);
        result
    }

    pub(super) async fn disconnect_inner(
        &self,
        id: &str,
        timeout: Option<Duration>,
        wait_for_lock: bool,
    ) -> Result<(), NvmeError> {
        validate_volume_id(id)?;
        let lock = Self::lock_for(&self.inner.volume_locks, id);
        let _held = if wait_for_lock {
            lock.lock().await
        } else {
            lock.try_lock().map_err(|_| {
                NvmeError::Busy(format!(
                    "volume {id}: another connect or disconnect of it is running"
                ))
            })?
        };
        let Some(mut record) = self
            .inner
            .volumes
            .lock()
            .unwrap()
            .get(id)
            .map(|(r, _)| r.clone())
        else {
            return Ok(());
        };
        let mut events = self.inner.events.subscribe();
        // Every connection this volume uses, locked in one order (two disconnects never wait on
        // each other crosswise) until its controller is deleted or let go of.
        let mut keys: Vec<String> = record
            .controllers
            .iter()
            .map(|o| owned_key(&record, o))
            .collect();
        keys.sort();
        keys.dedup();
        let mut _connections = Vec::with_capacity(keys.len());
        for k in &keys {
            _connections.push(Self::lock_for(&self.inner.key_locks, k).lock_owned().await);
        }
        record.phase = Phase::Disconnecting;
        let topo = self.rescan();
        let others = self.owned_names(Some(id));
        let device = select(
            &topo,
            &record.target,
            &record
                .controllers
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>(),
        )
        .map(|n| n.block.clone());
        let mine: Vec<String> = record
            .controllers
            .iter()
            .filter(|o| !others.contains(&o.name))
            .filter(|o| {
                topo.controllers
                    .get(&o.name)
                    .is_some_and(|c| is_same(c, o, &record.target.nqn))
            })
            .map(|o| o.name.clone())
            .collect();
        // Let go of the controllers another volume still uses, on disk too: that volume's
        // disconnect, next under the connection's lock, then finds itself the last user.
        record.controllers.retain(|o| !others.contains(&o.name));
        self.store(record.clone(), &topo)?;
        for name in &mine {
            self.delete_blocking(name).await?;
        }
        // The kernel's delete is synchronous; the block device's removal is not always.
        let deadline =
            tokio::time::Instant::now() + timeout.unwrap_or(self.inner.defaults.connect_timeout);
        // The device goes away only if nothing else reaches it: another volume's controller, or
        // one made outside volfence that shares the namespace's head.
        let sole_user = device.as_ref().is_some_and(|b| {
            topo.namespaces
                .iter()
                .filter(|n| &n.block == b)
                .all(|n| n.controllers.iter().all(|c| mine.contains(c)))
        });
        loop {
            let topo = self.rescan();
            let ctrls_gone = mine.iter().all(|n| !topo.controllers.contains_key(n));
            let dev_gone = !sole_user
                || device.as_ref().is_none_or(|b| {
                    !topo.namespaces.iter().any(|n| &n.block == b)
                        && !self.inner.host.path(paths::DEV).join(b).exists()
                });
            if ctrls_gone && dev_gone {
                break;
            }
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(NvmeError::Timeout(format!("volume {id}: controllers {} still present after delete", mine.join(", "))));
                }
            }
        }
        self.forget(id)?;
        tracing::info!(
            VOLUME = id,
            "volume {id}: disconnected (deleted {})",
            if mine.is_empty() {
                "nothing".to_string()
            } else {
                mine.join(", ")
            }
        );
        Ok(())
    }

    /// Disconnects every volume (the `on_lease_loss = "disconnect"` action).
    pub async fn disconnect_all(&self) {
        let ids: Vec<String> = self.inner.volumes.lock().unwrap().keys().cloned().collect();
        for id in ids {
            // Waits for a running connect: its guard was cancelled, so it is unwinding.
            if let Err(e) = self.disconnect_inner(&id, None, true).await {
                tracing::error!(
                    VOLUME = id.as_str(),
                    "lease lost: disconnecting volume {id} failed: {e}"
                );
            }
        }
    }
}
