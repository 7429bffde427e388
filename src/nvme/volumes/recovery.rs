//! Startup: the view rebuilt from the records and the kernel, before any connect.

use super::*;

impl Volumes {
    /// Rebuilds the view from the records and the kernel. Runs before READY=1; needs no guard
    /// because it only adopts and finishes disconnects, never connects.
    pub async fn recover(&self) -> Result<(), NvmeError> {
        let boot_id = self.inner.host.boot_id()?;
        let mut records = Vec::new();
        let loaded = self.inner.records.load::<Record>(|stem, r| {
            if r.volume_id == stem {
                Ok(())
            } else {
                Err(format!("names volume {:?}, not its file name", r.volume_id))
            }
        });
        for r in loaded.into_iter().map(|l| l.record) {
            if r.boot_id != boot_id {
                tracing::warn!(
                    VOLUME = r.volume_id.as_str(),
                    "volume {}: recorded in boot {}, this is boot {boot_id}; the reboot ended its connection ({}), and this boot hands those controller names out again: forgetting it",
                    r.volume_id,
                    r.boot_id,
                    r.controllers_text()
                );
                self.forget(&r.volume_id)?;
                continue;
            }
            self.inner
                .on_disk
                .lock()
                .unwrap()
                .insert(r.volume_id.clone(), r.clone());
            records.push(r)
        }
        let topo = self.rescan();
        // First pass: everything recorded by name is owned.
        let mut claimed: HashSet<String> =
            records.iter().flat_map(Record::controller_names).collect();
        let mut disconnecting = Vec::new();
        for mut r in records {
            let before = r.controllers.clone();
            r.controllers.retain(|o| {
                topo.controllers
                    .get(&o.name)
                    .is_some_and(|c| is_same(c, o, &r.target.nqn))
            });
            for gone in before.iter().filter(|o| !r.controllers.contains(o)) {
                tracing::warn!(
                    VOLUME = r.volume_id.as_str(),
                    "volume {}: controller {} is gone",
                    r.volume_id,
                    gone.name
                );
            }
            if r.phase == Phase::Connecting {
                // The kernel may have made a controller whose reply the previous agent never
                // read: adopt an unclaimed controller for each path still missing one.
                for path in &r.target.paths {
                    if r.controllers.iter().any(|o| &o.path == path) {
                        continue;
                    }
                    let key = ControllerKey {
                        nqn: r.target.nqn.clone(),
                        path: path.clone(),
                        hostnqn: r.hostnqn.clone(),
                    };
                    if let Some(c) = topo.controllers.values().find(|c| {
                        c.state.is_alive() && !claimed.contains(&c.name) && matches_key(c, &key)
                    }) {
                        tracing::info!(
                            VOLUME = r.volume_id.as_str(),
                            "volume {}: adopting {} left by an interrupted connect",
                            r.volume_id,
                            c.name
                        );
                        claimed.insert(c.name.clone());
                        r.controllers.push(OwnedCtrl {
                            name: c.name.clone(),
                            cntlid: c.cntlid.unwrap_or(0),
                            path: path.clone(),
                            ino: c.ino,
                        });
                    }
                }
                if r.controllers.is_empty() {
                    tracing::info!(VOLUME = r.volume_id.as_str(), "volume {}: its connect was interrupted before the kernel made a controller; forgetting it", r.volume_id);
                    self.forget(&r.volume_id)?;
                    continue;
                }
                r.phase = Phase::Connected;
            }
            if r.phase == Phase::Disconnecting {
                disconnecting.push(r.volume_id.clone());
            }
            let info = self.store(r, &topo)?;
            tracing::info!(
                VOLUME = info.volume_id.as_str(),
                "volume {}: {} ({})",
                info.volume_id,
                info.state.as_str(),
                if info.device.is_empty() {
                    "no device"
                } else {
                    info.device.as_str()
                }
            );
        }
        for id in disconnecting {
            tracing::info!(
                VOLUME = id.as_str(),
                "volume {id}: finishing an interrupted disconnect"
            );
            self.disconnect(&id, None).await?;
        }
        for c in self.foreign_controllers() {
            tracing::warn!(
                "controller {} to {} at {}:{} was not made by volfence: left alone",
                c.name,
                c.subsysnqn,
                c.address.traddr,
                c.address.trsvcid
            );
        }
        Ok(())
    }
}
