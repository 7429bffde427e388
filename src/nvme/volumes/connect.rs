//! Connect: claim the record, write to /dev/nvme-fabrics, wait for the device, roll back on
//! failure.

use super::*;

impl Volumes {
    /// Wakes for by-id links made from now on; `None` while there is no by-id directory.
    pub(super) fn link_waiter(&self) -> Option<LinkWaiter> {
        let mut links = self.inner.links.lock().unwrap();
        if !links.as_ref().is_some_and(LinkWatch::is_alive) {
            *links = LinkWatch::new(&self.inner.host.path(paths::DISK_BY_ID));
        }
        links.as_ref().map(LinkWatch::subscribe)
    }

    /// Connects a volume, or returns it if it is already connected to the same target.
    pub async fn connect(
        &self,
        guard: &FenceGuard,
        req: ConnectRequest,
    ) -> Result<VolumeInfo, NvmeError> {
        let started = Instant::now();
        let result = self.connect_inner(guard, req).await;
        self.observe("connect", started, &result);
        result
    }

    pub(super) fn observe<T>(
        &self,
        op: &'static str,
        started: Instant,
        result: &Result<T, NvmeError>,
    ) {
        if let Some(m) = &self.inner.metrics {
            let failure = result.as_ref().err().map(NvmeError::reason);
            m.observe_nvme(op, started.elapsed(), failure);
        }
    }

    pub(super) async fn connect_inner(
        &self,
        guard: &FenceGuard,
        req: ConnectRequest,
    ) -> Result<VolumeInfo, NvmeError> {
        let mut laps = Laps::new();
        validate_volume_id(&req.volume_id)?;
        let args: Vec<ConnectArgs> = req
            .target
            .paths
            .iter()
            .map(|p| {
                ConnectArgs::new(
                    &req.target,
                    p,
                    &self.inner.identity,
                    &self.inner.defaults,
                    &req.overrides,
                )
            })
            .collect::<Result<_, _>>()?;
        let id = req.volume_id.as_str();
        let lock = Self::lock_for(&self.inner.volume_locks, id);
        let Ok(_held) = lock.try_lock() else {
            return Err(NvmeError::Busy(format!(
                "volume {id}: another connect or disconnect of it is running"
            )));
        };
        guard.check()?;
        // Subscribed before anything happens, so no event can slip between a check and a wait.
        let mut events = self.inner.events.subscribe();
        let mut links = self.link_waiter();
        let existing = self
            .inner
            .volumes
            .lock()
            .unwrap()
            .get(id)
            .map(|(r, _)| r.clone());
        let mut record = match existing {
            Some(r) if r.target != req.target => {
                return Err(NvmeError::Busy(format!(
                    "volume {id} is connected to {} {} at {}; disconnect it first",
                    r.target.nqn,
                    r.target.namespace,
                    r.target
                        .paths
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            Some(r) if r.phase == Phase::Disconnecting => {
                return Err(NvmeError::Busy(format!(
                    "volume {id} is being disconnected"
                )))
            }
            Some(r) => r,
            None => Record {
                volume_id: id.to_string(),
                target: req.target.clone(),
                hostnqn: self.inner.identity.hostnqn.clone(),
                boot_id: self.inner.boot_id.clone(),
                phase: Phase::Connecting,
                controllers: Vec::new(),
                epoch: guard.epoch(),
            },
        };
        let was_connected = record.phase == Phase::Connected;
        let mut progress = ConnectProgress::default();
        laps.lap("prepare");
        let outcome = self
            .ensure_controllers(guard, &mut record, &args, &mut progress, &mut laps)
            .await;
        let outcome = match outcome {
            Ok(()) => {
                let timeout = req
                    .overrides
                    .timeout
                    .unwrap_or(self.inner.defaults.connect_timeout);
                let (r, saved) = tokio::join!(
                    self.wait_for_device(
                        guard,
                        &record,
                        &mut events,
                        links.as_mut(),
                        timeout,
                        progress.first_look()
                    ),
                    progress.pending.settle()
                );
                laps.lap("device");
                saved.map_err(NvmeError::from).and(r)
            }
            // The record must be on disk as written before the rollback rewrites or removes it.
            Err(e) => (progress.pending.settle().await)
                .map_err(NvmeError::from)
                .and(Err(e)),
        };
        match outcome {
            Ok(topo) => {
                record.phase = Phase::Connected;
                record.epoch = guard.epoch();
                // A repeated Connect logs nothing and usually announces nothing; one that made a
                // controller (a dead volume revived) says so.
                let through = (!was_connected || !progress.created.is_empty())
                    .then(|| record.controllers_text());
                let (info, events) = self.store_unannounced(record, &topo)?;
                laps.lap("store");
                let line = through.map(|through| {
                    format!(
                        "volume {id}: connected {} as {} ({}) through {through} in {laps}",
                        info.nqn, info.device, info.stable_path
                    )
                });
                if events.is_empty() && line.is_none() {
                    return Ok(info);
                }
                let (this, id, epoch) = (self.clone(), id.to_string(), guard.epoch());
                // From a task of its own, which runs once this one yields (tokio runs a task
                // spawned from a worker next on that worker): the change event (for the
                // volume's D-Bus object, which `Connect` has already made before replying) and
                // the log line (journald waking up to take it) follow the reply the caller
                // waits for, instead of competing with it. At worst they run alongside.
                tokio::spawn(async move {
                    this.announce(events);
                    if let Some(line) = line {
                        tracing::info!(VOLUME = id.as_str(), EPOCH = epoch, "{line}");
                    }
                });
                Ok(info)
            }
            Err(e) => {
                // Undo what this call made, so a failed connect leaks no controller.
                self.rollback(&mut record, &progress.created, was_connected)
                    .await;
                Err(e)
            }
        }
    }

    pub(super) async fn rollback(
        &self,
        record: &mut Record,
        created: &[String],
        was_connected: bool,
    ) {
        for name in created {
            let Some(o) = record.controllers.iter().find(|o| &o.name == name) else {
                continue;
            };
            let klock = Self::lock_for(&self.inner.key_locks, &owned_key(record, o));
            let _k = klock.lock().await;
            // Under the connection's lock: another volume's connect that shared the controller
            // meanwhile keeps it.
            if self.owned_names(Some(&record.volume_id)).contains(name) {
                continue;
            }
            if let Err(e) = self.delete_blocking(name).await {
                tracing::error!("rolling back {name}: {e}");
            }
        }
        record.controllers.retain(|c| !created.contains(&c.name));
        let topo = self.rescan();
        if was_connected {
            if let Err(e) = self.store(record.clone(), &topo) {
                tracing::error!("{e}");
            }
        } else if let Err(e) = self.forget(&record.volume_id) {
            tracing::error!("{e}");
        }
    }

    pub(super) async fn delete_blocking(&self, name: &str) -> Result<(), NvmeError> {
        let (f, n) = (self.inner.fabrics.clone(), name.to_string());
        let r = tokio::task::spawn_blocking(move || f.delete_controller(&n))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match r {
            Ok(()) => Ok(()),
            // Already gone (the kernel's loss timer, or another delete): what we wanted.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NvmeError::Kernel {
                what: format!("deleting controller {name}"),
                source,
            }),
        }
    }

    /// One owned, alive controller per path: reuse, or make it.
    pub(super) async fn ensure_controllers(
        &self,
        guard: &FenceGuard,
        record: &mut Record,
        args: &[ConnectArgs],
        progress: &mut ConnectProgress,
        laps: &mut Laps,
    ) -> Result<(), NvmeError> {
        let id = record.volume_id.clone();
        // The record exists before the kernel is asked, so a crash cannot leak what it makes; its
        // write overlaps the scan. (Intermediate records are only persisted; their view is
        // computed once the device is up.)
        self.put_record_in_background(record, record.clone(), &mut progress.pending);
        // A repeated Connect (orchestrators repeat them): the volume's own controllers, read
        // alone, usually show every path alive, and then nothing else on the host is read.
        let own_view = (!record.controllers.is_empty()).then(|| {
            let names: Vec<String> = record.controller_names().collect();
            Arc::new(sysfs::scan_controllers(&self.inner.host, &names))
        });
        let reusable = |record: &Record, a: &ConnectArgs, topo: &Topology| {
            record.controllers.iter().any(|o| {
                o.path == a.path
                    && topo
                        .controllers
                        .get(&o.name)
                        .is_some_and(|c| is_same(c, o, &a.nqn) && c.state.is_alive())
            })
        };
        for (i, a) in args.iter().enumerate() {
            let key = a.key();
            let klock = Self::lock_for(&self.inner.key_locks, &key_string(&key));
            let _k = klock.lock().await;
            if let Some(view) = own_view.as_ref().filter(|v| reusable(record, a, v)) {
                progress.scanned = Some(view.clone());
                laps.lap("scan");
                continue;
            }
            let topo = self.rescan();
            progress.scanned = Some(topo.clone());
            laps.lap("scan");
            if reusable(record, a, &topo) {
                continue;
            }
            // Drop stale entries for this path (the kernel deleted them).
            record.controllers.retain(|o| o.path != a.path);
            let owned = self.owned_names(None);
            if let Some(c) = topo
                .controllers
                .values()
                .find(|c| c.state.is_alive() && matches_key(c, &key))
            {
                if !owned.contains(&c.name) {
                    return Err(NvmeError::Busy(format!(
                        "controller {} to {} at {} was not made by volfence (nvme-cli or another tool?): not using or changing it",
                        c.name, a.nqn, a.path
                    )));
                }
                // Another volume's controller to the same subsystem and path: share it, unless
                // that volume's disconnect kept it to delete (it failed midway: its record still
                // names it and no lock is held; the next Disconnect of it finishes the job).
                let owner = self
                    .inner
                    .volumes
                    .lock()
                    .unwrap()
                    .values()
                    .find_map(|(r, _)| {
                        let o = r.controllers.iter().find(|o| o.name == c.name)?;
                        Some((r.volume_id.clone(), r.phase, o.clone()))
                    });
                if let Some((other, Phase::Disconnecting, _)) = &owner {
                    return Err(NvmeError::Busy(format!(
                        "controller {} to {} at {} belongs to volume {other}, whose disconnect has not finished: disconnect {other} again first",
                        c.name, a.nqn, a.path
                    )));
                }
                if let Some((_, _, o)) = owner {
                    record.controllers.push(o);
                    progress.pending.settle().await?;
                    self.put_record(record)?;
                    continue;
                }
            }
            // A head that exists gets no event when this controller's path joins it.
            progress.joined |= head_exists(&topo, &record.target);
            progress.pending.settle().await?;
            laps.lap("record");
            let fresh = guard.refresh()?;
            let (f, line) = (self.inner.fabrics.clone(), a.to_string());
            tracing::debug!(
                VOLUME = id.as_str(),
                "writing to /dev/nvme-fabrics: {}",
                a.redacted()
            );
            // Not raced against the fence: the kernel finishes a connect it was asked for even if
            // the caller stops waiting, and a controller made after a connect gave up would be
            // nobody's, live on a fenced host. The fence is checked once the reply names it, and
            // the rollback deletes it.
            let reply = tokio::task::spawn_blocking(move || f.connect(&fresh, &line))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            let reply = reply.map_err(|source| {
                let what = format!("connecting to {} at {}", a.nqn, a.path);
                match source.raw_os_error() {
                    Some(nix::libc::EALREADY) => NvmeError::Busy(format!(
                        "{what}: the kernel already has this connection (made outside volfence?)"
                    )),
                    // What nvme-tcp answers when DH-HMAC-CHAP fails (seen against nvmet). A TLS
                    // connect can fail with the same errnos for its PSK, which has not been seen
                    // against a real target: it keeps the kernel's answer.
                    Some(nix::libc::ENOKEY) if !a.tls => NvmeError::Auth(format!(
                        "{what}: the target requires authentication{} ({source})",
                        if a.dhchap_secret.is_some() {
                            ""
                        } else {
                            " and no dhchap_secret was given"
                        }
                    )),
                    Some(nix::libc::EKEYREJECTED) if !a.tls => NvmeError::Auth(format!(
                        "{what}: authentication failed{} ({source})",
                        match (&a.dhchap_secret, &a.dhchap_ctrl_secret) {
                            (Some(_), Some(_)) => ": the target rejected dhchap_secret, or the controller did not prove dhchap_ctrl_secret",
                            (Some(_), None) => ": the target rejected dhchap_secret",
                            (None, _) => "",
                        }
                    )),
                    // Seen on 6.12 against nvmet: when the controller fails to prove
                    // dhchap_ctrl_secret, the target can drop the queue before it answers the
                    // host's failure2, and the connect ends after the admin timeout as EIO.
                    Some(nix::libc::EIO) if a.dhchap_ctrl_secret.is_some() && !a.tls => {
                        NvmeError::Kernel {
                            what: format!(
                                "{what} (with dhchap_ctrl_secret this is also how Linux ends a connect whose controller did not prove dhchap_ctrl_secret; the kernel log then says \"controller authentication failed\")"
                            ),
                            source,
                        }
                    }
                    _ => NvmeError::Kernel { what, source },
                }
            })?;
            laps.lap("fabrics");
            let parsed = parse_fabrics_reply(&reply).ok_or_else(|| NvmeError::Kernel {
                what: format!("connecting to {} at {}", a.nqn, a.path),
                source: std::io::Error::other(format!(
                    "unexpected reply from /dev/nvme-fabrics: {reply:?}"
                )),
            })?;
            let name = format!("nvme{}", parsed.instance);
            progress.created.push(name.clone());
            // Recorded before the fence is looked at: the rollback finds its connection by it.
            record.controllers.push(OwnedCtrl {
                ino: sysfs::controller_ino(&self.inner.host, &name),
                name: name.clone(),
                cntlid: parsed.cntlid,
                path: a.path.clone(),
            });
            guard.refresh()?;
            // Once the last controller is recorded, recovery needs nothing more: a crash from
            // here adopts what the record names either way, so the disk says `connected` now
            // and the connect's end has nothing to write. In memory the volume stays connecting
            // (no view, no announcement) until its device is up.
            let disk = if i + 1 == args.len() {
                Record {
                    phase: Phase::Connected,
                    epoch: guard.epoch(),
                    ..record.clone()
                }
            } else {
                record.clone()
            };
            self.put_record_in_background(record, disk, &mut progress.pending);
            laps.lap("record");
            // The connect's end names it at info level; this one line would be a second journal
            // entry while udev works on the device.
            tracing::debug!(
                VOLUME = id.as_str(),
                EPOCH = guard.epoch(),
                "volume {id}: controller {name} (cntlid {}) to {} at {}",
                parsed.cntlid,
                a.nqn,
                a.path
            );
        }
        Ok(())
    }

    /// Waits, on udev events, until the namespace's block device exists and udev has processed
    /// it (a by-id link, or an event for it), starting from `first` (see [`FirstLook`]).
    /// Joining a head that exists is the one wait no event can end: sysfs is re-read (2 ms,
    /// doubling to 50 ms) until this volume's path is in it.
    pub(super) async fn wait_for_device(
        &self,
        guard: &FenceGuard,
        record: &Record,
        events: &mut broadcast::Receiver<Uevent>,
        mut links: Option<&mut LinkWaiter>,
        timeout: Duration,
        first: FirstLook,
    ) -> Result<Arc<Topology>, NvmeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let names: Vec<String> = record.controller_names().collect();
        let mut processed: HashSet<String> = HashSet::new();
        let mut first = Some(first);
        // The look that showed this volume's namespace with its device node: later wakes (udev's
        // links, one by one) only wait for udev, and read nothing in sysfs while it stays so.
        let mut showed: Option<Arc<Topology>> = None;
        // Polling only while joining a head: the one wait no event can end.
        let mut poll = JOIN_POLL_FIRST;
        loop {
            let topo = match first.take() {
                Some(FirstLook::Scanned(t)) => t,
                Some(FirstLook::Wake) => Arc::new(Topology::default()),
                Some(FirstLook::Rescan) => self.rescan(),
                // Woken: this volume's controllers and heads are read, not the whole host; all
                // of sysfs only while they do not show the device, to see a head being joined.
                None => {
                    // What woke this changed sysfs: the host's cache is read again when next
                    // asked, even if the event watcher has not seen the event yet.
                    self.invalidate();
                    match showed
                        .take()
                        .filter(|t| self.device_node_of(t, record, &names))
                    {
                        Some(t) => t,
                        None => {
                            let view = Arc::new(sysfs::scan_controllers(&self.inner.host, &names));
                            if select(&view, &record.target, &names).is_some() {
                                view
                            } else {
                                self.rescan()
                            }
                        }
                    }
                }
            };
            let found = select(&topo, &record.target, &names);
            if let Some(ns) = found {
                if self.has_node(ns) {
                    if processed.contains(&ns.block)
                        || sysfs::stable_link_made(&self.inner.host, ns)
                    {
                        return Ok(topo);
                    }
                    showed = Some(topo.clone());
                }
            }
            let joining = found.is_none() && joining_head(&topo, &record.target, &names);
            let wait = poll;
            let next_look = async move {
                if joining {
                    tokio::time::sleep(wait).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::pin!(next_look);
            if joining {
                poll = (poll * 2).min(JOIN_POLL_MAX);
            }
            // Only a block device appearing (or changing) or an nvme by-id link can complete
            // the wait: other events cost no sysfs read.
            let link = async {
                match links.as_deref_mut() {
                    Some(l) => l.nvme_link().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(link);
            loop {
                let ev = tokio::select! {
                    r = events.recv() => r,
                    _ = &mut link => break,
                    _ = &mut next_look => break,
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(self.timeout_error(record, &self.rescan(), &names, timeout));
                    }
                    e = guard.until_lost() => return Err(e.into()),
                };
                match ev {
                    Ok(ev) if ev.subsystem == "block" && ev.action != "remove" => {
                        processed.insert(ev.sysname);
                        break;
                    }
                    Ok(_) => {}
                    // Missed events: look again.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    // No more events will come: only the deadline or the fence can end this.
                    Err(broadcast::error::RecvError::Closed) => {
                        tokio::select! {
                            _ = &mut next_look => break,
                            _ = tokio::time::sleep_until(deadline) => {
                                return Err(self.timeout_error(record, &self.rescan(), &names, timeout));
                            }
                            e = guard.until_lost() => return Err(e.into()),
                        }
                    }
                }
            }
        }
    }

    /// Whether the namespace `topo` shows for `record` still has its device node.
    pub(super) fn device_node_of(
        &self,
        topo: &Topology,
        record: &Record,
        names: &[String],
    ) -> bool {
        select(topo, &record.target, names).is_some_and(|ns| self.has_node(ns))
    }

    pub(super) fn has_node(&self, ns: &Namespace) -> bool {
        self.inner.host.path(paths::DEV).join(&ns.block).exists()
    }

    pub(super) fn timeout_error(
        &self,
        record: &Record,
        topo: &Topology,
        names: &[String],
        t: Duration,
    ) -> NvmeError {
        let live = names
            .iter()
            .filter(|n| {
                topo.controllers
                    .get(*n)
                    .is_some_and(|c| c.state == CtrlState::Live)
            })
            .count();
        let in_subsys: Vec<String> = topo
            .namespaces
            .iter()
            .filter(|n| n.subsysnqn == record.target.nqn)
            .map(|n| format!("nsid {}", n.nsid))
            .collect();
        if live > 0
            && select(topo, &record.target, names).is_none()
            && head_exists(topo, &record.target)
        {
            NvmeError::NotFound(format!(
                "{} {} exists (through other controllers) but none of volume {}'s controllers ({}) reaches it within {t:?}",
                record.target.nqn,
                record.target.namespace,
                record.volume_id,
                names.join(", ")
            ))
        } else if live > 0 && select(topo, &record.target, names).is_none() && !in_subsys.is_empty()
        {
            NvmeError::NotFound(format!(
                "subsystem {} has no namespace with {} (it has {})",
                record.target.nqn,
                record.target.namespace,
                in_subsys.join(", ")
            ))
        } else {
            NvmeError::Timeout(format!(
                "volume {}: the block device for {} {} did not appear (udev-processed) within {t:?}",
                record.volume_id, record.target.nqn, record.target.namespace
            ))
        }
    }
}

/// What one connect has done to the kernel so far, for its wait and its rollback.
#[derive(Default)]
pub(super) struct ConnectProgress {
    /// Controllers this call made.
    created: Vec<String>,
    /// One of them joined a multipath head that already existed.
    joined: bool,
    pending: PendingSave,
    /// The last sysfs scan before the kernel was asked for anything.
    scanned: Option<Arc<Topology>>,
}

/// Where a device wait starts.
pub(super) enum FirstLook {
    /// This call made nothing: the scan it just did is current.
    Scanned(Arc<Topology>),
    /// A path joined a head that exists: no event will come, so read sysfs now.
    Rescan,
    /// This call made a controller for a new head, and the events and link watch were set up
    /// before it: nothing can be ready before their first wake, so sysfs is not read while the
    /// kernel is busy scanning.
    Wake,
}

impl ConnectProgress {
    pub(super) fn first_look(&mut self) -> FirstLook {
        match (self.created.is_empty(), self.joined, self.scanned.take()) {
            (true, _, Some(t)) => FirstLook::Scanned(t),
            (false, false, _) => FirstLook::Wake,
            _ => FirstLook::Rescan,
        }
    }
}

/// Where a connect's time went (the `connected` log line): `prepare=0.1ms scan=2.0ms record=0.4ms …`.
pub(super) struct Laps {
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Laps {
    pub(super) fn new() -> Laps {
        Laps {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }
    pub(super) fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.laps.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: Duration = self.laps.iter().map(|(_, d)| *d).sum();
        write!(f, "{:.1}ms:", total.as_secs_f64() * 1e3)?;
        for (name, d) in &self.laps {
            write!(f, " {name}={:.1}ms", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}
