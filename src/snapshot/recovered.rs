//! Job records read back at startup are checked as strictly as a caller's request: every field
//! must be what this agent itself would have written. A record that a disk fault, an older
//! version or a hand changed could otherwise name the origin as the snapshot to `lvremove`, a
//! mount point outside the mount root, or a pid to SIGKILL that is no longer the executor.

use std::path::Path;

use super::job::{Job, Resources};
use crate::config::SnapshotSettings;
use crate::host::Host;

/// Why a record is not one this agent wrote. The record is set aside, not acted on.
pub fn check(job: &Job, file_stem: &str, settings: &SnapshotSettings) -> Result<(), String> {
    super::validate_request_id(&job.request_id).map_err(|e| e.to_string())?;
    if job.request_id != file_stem {
        return Err(format!(
            "request_id {:?} does not match the file name {file_stem:?}",
            job.request_id
        ));
    }
    crate::lvm::validate_name("VG name", &job.vg).map_err(|e| e.to_string())?;
    crate::lvm::validate_name("LV name", &job.lv).map_err(|e| e.to_string())?;
    let snapshot = format!("{}{}", settings.name_prefix, job.request_id);
    if job.snapshot != snapshot || job.snapshot == job.lv {
        return Err(format!(
            "snapshot {:?} is not this agent's name for request {:?} (expected {snapshot:?})",
            job.snapshot, job.request_id
        ));
    }
    let mountpoint = settings.mount_root.join(&snapshot);
    if Path::new(&job.mountpoint) != mountpoint {
        return Err(format!(
            "mountpoint {:?} is not {:?} (under snapshots.mount_root)",
            job.mountpoint,
            mountpoint.display()
        ));
    }
    if let Some(size) = &job.size {
        crate::lvm::SnapSize::parse(size).map_err(|e| e.to_string())?;
    }
    if let Some(claim) = &job.claim {
        claim.parse::<super::PvcRef>().map_err(|e| e.to_string())?;
    }
    if !(0.0..=100.0).contains(&job.cow_percent) {
        return Err(format!("cow_percent {} is not 0-100", job.cow_percent));
    }
    if let Some(pid) = job.resources.executor_pid {
        if pid <= 1 {
            return Err(format!("executor_pid {pid} cannot be an executor"));
        }
    }
    Ok(())
}

/// True only if the recorded executor is still that very process: same boot, same start time,
/// and still the leader of the process group the agent made for it. Anything else (another
/// process with a reused pid, a record without a stamp) is never signalled.
pub fn executor_still_running(host: &Host, res: &Resources, boot_id: &str) -> Option<u32> {
    let pid = res.executor_pid?;
    let (stamp, boot) = (res.executor_stamp?, res.executor_boot.as_deref()?);
    let me = std::process::id();
    let ours = boot == boot_id
        && pid > 1
        && pid != me
        && stamp.pgrp == pid
        && host.process(pid) == Some(stamp)
        && nix::unistd::getpgrp().as_raw() as u32 != pid;
    ours.then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use std::os::unix::process::CommandExt;

    fn good() -> (Job, SnapshotSettings) {
        let s = Settings::defaults("h").snapshots;
        let job = Job::new(
            "r1",
            "vg0",
            "data",
            "vfsnap-r1",
            "/run/volfence/snapshots/vfsnap-r1",
            Some("8M".into()),
            false,
        );
        (job, s)
    }

    #[test]
    fn a_record_is_accepted_only_as_the_agent_writes_it() {
        let (job, s) = good();
        check(&job, "r1", &s).unwrap();
        type Mutation = (&'static str, fn(&mut Job));
        let cases: Vec<Mutation> = vec![
            ("snapshot", |j| j.snapshot = "data".into()),
            ("snapshot", |j| j.snapshot = "vfsnap-other".into()),
            ("mountpoint", |j| j.mountpoint = "/etc".into()),
            ("mountpoint", |j| {
                j.mountpoint = "/run/volfence/snapshots/../../etc".into()
            }),
            ("request_id", |j| j.request_id = "../x".into()),
            ("file name", |j| j.request_id = "r2".into()),
            ("VG name", |j| j.vg = "-bad".into()),
            ("snapshot size", |j| j.size = Some("0".into())),
            ("executor_pid", |j| j.resources.executor_pid = Some(0)),
            ("executor_pid", |j| j.resources.executor_pid = Some(1)),
            ("claim", |j| j.claim = Some("no-slash".into())),
            ("cow_percent", |j| j.cow_percent = f64::NAN),
        ];
        for (what, f) in cases {
            let mut j = job.clone();
            f(&mut j);
            let e = check(&j, "r1", &s).unwrap_err();
            assert!(e.contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn an_executor_is_signalled_only_while_it_is_the_process_recorded() {
        let host = Host::system();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let stamp = host.process(pid).unwrap();
        assert_eq!(stamp.pgrp, pid);
        let boot = host.boot_id().unwrap();
        let res = Resources {
            executor_pid: Some(pid),
            executor_stamp: Some(stamp),
            executor_boot: Some(boot.clone()),
            ..Resources::default()
        };
        assert_eq!(executor_still_running(&host, &res, &boot), Some(pid));
        // another boot, another start time, no stamp at all: not ours
        assert_eq!(executor_still_running(&host, &res, "other-boot"), None);
        let older = Resources {
            executor_stamp: Some(crate::host::ProcessStamp {
                start_ticks: stamp.start_ticks + 1,
                ..stamp
            }),
            ..res.clone()
        };
        assert_eq!(executor_still_running(&host, &older, &boot), None);
        let unstamped = Resources {
            executor_stamp: None,
            ..res.clone()
        };
        assert_eq!(executor_still_running(&host, &unstamped, &boot), None);
        // our own process group is never a target
        let me = std::process::id();
        let own = Resources {
            executor_pid: Some(me),
            executor_stamp: host.process(me),
            ..res.clone()
        };
        assert_eq!(executor_still_running(&host, &own, &boot), None);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(executor_still_running(&host, &res, &boot), None);
    }
}
