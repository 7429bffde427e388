//! The host's NVMe topology as sysfs shows it, cached until a device event marks it stale.

use super::*;

impl Volumes {
    /// The cached topology, rescanned only after a device event marked it stale.
    pub fn topology(&self) -> Arc<Topology> {
        let mut t = self.inner.topology.lock().unwrap();
        if t.dirty {
            t.topo = Arc::new(sysfs::scan(&self.inner.host));
            t.dirty = false;
        }
        t.topo.clone()
    }

    /// A fresh read of sysfs (also refreshes the cache).
    pub fn rescan(&self) -> Arc<Topology> {
        let topo = Arc::new(sysfs::scan(&self.inner.host));
        let mut t = self.inner.topology.lock().unwrap();
        t.topo = topo.clone();
        t.dirty = false;
        topo
    }

    /// Resolves a target's namespace through the cache: never by a remembered kernel name.
    pub fn resolve(&self, nqn: &str, sel: &Selector) -> Option<Namespace> {
        let topo = self.topology();
        let found = match sel {
            Selector::Nsid(n) => topo.by_nsid(nqn, *n).next(),
            Selector::Uuid(u) | Selector::Nguid(u) => topo.by_id(nqn, u).next(),
        };
        found.cloned()
    }

    /// Marks the cache stale; called for every udev event.
    pub fn invalidate(&self) {
        self.inner.topology.lock().unwrap().dirty = true;
    }

    /// Controllers no record owns, for reports.
    pub fn foreign_controllers(&self) -> Vec<Controller> {
        let owned = self.owned_names(None);
        self.rescan()
            .controllers
            .values()
            .filter(|c| !owned.contains(&c.name))
            .cloned()
            .collect()
    }
}
