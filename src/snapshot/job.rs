//! The snapshot job and its phase machine: `Pending → Running → Succeeded | Failed`, plus
//! `Pending → Failed`. Terminal is terminal; nothing goes backwards; the only writer of a job's
//! phase is [`Job::advance`], and every persisted write goes through it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
    fn rank(self) -> u8 {
        match self {
            Phase::Pending => 0,
            Phase::Running => 1,
            Phase::Succeeded | Phase::Failed => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot job {request_id}: {from} → {to} is not allowed (phases only move forward; terminal phases are final)", from = from.as_str(), to = to.as_str())]
pub struct PhaseError {
    pub request_id: String,
    pub from: Phase,
    pub to: Phase,
}

/// Where cleanup of a job stands, so a restart knows what is left to undo.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// The snapshot LV was created (and not yet removed).
    pub snapshot_lv: bool,
    /// Mounted at `mountpoint` (and not yet unmounted).
    pub mounted: bool,
    /// Executor pid while it runs (to tell a live executor after a restart; never signalled
    /// unless it is still our child).
    pub executor_pid: Option<u32>,
    /// Who that pid was when the agent started it, and in which boot: a restarted agent
    /// signals the pid only if it is still that very process (pids are reused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_stamp: Option<crate::host::ProcessStamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_boot: Option<String>,
}

/// One snapshot job, persisted as `<state_dir>/snapshots/<request_id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub request_id: String,
    pub vg: String,
    pub lv: String,
    pub snapshot: String,
    pub mountpoint: String,
    /// `None` for thin snapshots.
    pub size: Option<String>,
    pub keep: bool,
    phase: Phase,
    pub message: String,
    /// RFC 3339 (UTC), empty until set.
    pub started_at: String,
    pub finished_at: String,
    pub cow_percent: f64,
    pub resources: Resources,
    /// Kept (`keep = true`) resources were released by `Release`.
    pub released: bool,
    /// The PersistentVolumeClaim (`namespace/name`) the origin backs, if the request named one:
    /// a failure is reported on it as a Kubernetes Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// The failure Event was recorded (so a restart retries only what was not).
    #[serde(default)]
    pub failure_reported: bool,
}

impl Job {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        request_id: &str,
        vg: &str,
        lv: &str,
        snapshot: &str,
        mountpoint: &str,
        size: Option<String>,
        keep: bool,
    ) -> Job {
        Job {
            request_id: request_id.into(),
            vg: vg.into(),
            lv: lv.into(),
            snapshot: snapshot.into(),
            mountpoint: mountpoint.into(),
            size,
            keep,
            phase: Phase::Pending,
            message: "waiting to start".into(),
            started_at: String::new(),
            finished_at: String::new(),
            cow_percent: 0.0,
            resources: Resources::default(),
            released: false,
            claim: None,
            failure_reported: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Moves the phase forward, or refuses. Pending → Failed is allowed (a job that could not
    /// start); any move out of a terminal phase, or backwards, is an error and changes nothing.
    pub fn advance(
        &mut self,
        to: Phase,
        message: impl Into<String>,
        now: &str,
    ) -> Result<(), PhaseError> {
        let ok = !self.phase.is_terminal() && to.rank() > self.phase.rank();
        if !ok {
            return Err(PhaseError {
                request_id: self.request_id.clone(),
                from: self.phase,
                to,
            });
        }
        self.phase = to;
        self.message = message.into();
        if to == Phase::Running {
            self.started_at = now.to_string();
        }
        if to.is_terminal() {
            self.finished_at = now.to_string();
        }
        Ok(())
    }

    /// Merges a persisted copy read later (e.g. a stale writer) without ever moving backwards:
    /// the further phase wins.
    pub fn merge_from_disk(&mut self, other: &Job) {
        if other.phase.rank() > self.phase.rank() {
            *self = other.clone();
        }
    }

    /// `origin` key: one active job per origin LV.
    pub fn origin(&self) -> String {
        format!("{}/{}", self.vg, self.lv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job::new(
            "r1",
            "vg",
            "lv",
            "vfsnap-r1",
            "/run/volfence/snapshots/vfsnap-r1",
            None,
            false,
        )
    }

    #[test]
    fn forward_only() {
        let mut j = job();
        j.advance(Phase::Running, "running", "t1").unwrap();
        assert_eq!(j.started_at, "t1");
        j.advance(Phase::Succeeded, "done", "t2").unwrap();
        assert_eq!(
            (j.phase(), j.finished_at.as_str()),
            (Phase::Succeeded, "t2")
        );
        for to in [
            Phase::Pending,
            Phase::Running,
            Phase::Failed,
            Phase::Succeeded,
        ] {
            let before = j.clone();
            let e = j.advance(to, "late", "t3").unwrap_err();
            assert_eq!(e.from, Phase::Succeeded);
            assert_eq!(j, before, "a refused transition changes nothing");
        }
    }

    #[test]
    fn a_late_pending_never_overwrites_running_or_terminal() {
        let mut j = job();
        j.advance(Phase::Running, "running", "t1").unwrap();
        assert!(j.advance(Phase::Pending, "reconcile", "t2").is_err());
        assert_eq!(j.phase(), Phase::Running);
        // A stale copy from disk (Pending) does not win over the in-memory Running job.
        let stale = job();
        j.merge_from_disk(&stale);
        assert_eq!(j.phase(), Phase::Running);
        j.advance(Phase::Failed, "agent restarted", "t3").unwrap();
        j.merge_from_disk(&stale);
        assert_eq!(j.phase(), Phase::Failed);
        assert!(j.advance(Phase::Pending, "", "t4").is_err());
        assert!(j.advance(Phase::Running, "", "t4").is_err());
    }

    #[test]
    fn pending_may_fail_directly_and_running_is_not_repeatable() {
        let mut j = job();
        j.advance(Phase::Failed, "no such LV", "t1").unwrap();
        assert_eq!(j.started_at, "");
        let mut k = job();
        k.advance(Phase::Running, "", "t1").unwrap();
        assert!(
            k.advance(Phase::Running, "", "t2").is_err(),
            "Running twice would mean two executors"
        );
    }

    #[test]
    fn persisted_form_round_trips() {
        let mut j = job();
        j.advance(Phase::Running, "running", "2026-11-22T00:00:00Z")
            .unwrap();
        let s = serde_json::to_string(&j).unwrap();
        assert!(s.contains("\"phase\":\"running\""), "{s}");
        let back: Job = serde_json::from_str(&s).unwrap();
        assert_eq!(back, j);
    }
}
