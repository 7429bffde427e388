//! Reservation commands on the real kernel: the NVMe passthrough ioctl (`NVME_IOCTL_IO_CMD`)
//! on the namespace's block device, which returns the command's exact status. (The generic
//! block PR ioctls, linux/pr.h, cannot unregister or report before Linux 6.19.)

use std::os::fd::AsRawFd;

use super::codec::{self, Command};
use super::{ReservationCommands, ReservationTeardown, Status};
use crate::fence::FenceGuard;
use crate::host::Host;

/// `struct nvme_passthru_cmd` (linux/nvme_ioctl.h).
#[repr(C)]
#[derive(Debug, Default)]
struct PassthruCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

nix::ioctl_readwrite!(nvme_io_cmd, b'N', 0x43, PassthruCmd);

/// The real kernel's block devices, under the host root.
pub struct KernelReservations {
    host: Host,
}

impl KernelReservations {
    pub fn new(host: Host) -> KernelReservations {
        KernelReservations { host }
    }

    /// Runs `cmd` on namespace `nsid` of block device `device` (`nvme0n1`); returns the
    /// completion status and the data buffer (filled by the controller for a Report).
    fn run(&self, device: &str, nsid: u32, cmd: &Command) -> std::io::Result<(Status, Vec<u8>)> {
        if device.is_empty() || device.contains('/') || !device.starts_with("nvme") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{device:?} is not an NVMe block device name (nvme<N>n<M>)"),
            ));
        }
        // Read-only: the ioctl needs no write access as root, and closing a disk opened for
        // writing makes udev re-probe it (a synthetic change event).
        let f = std::fs::File::open(self.host.path(crate::host::paths::DEV).join(device))?;
        let mut data = cmd.data.clone();
        let mut c = PassthruCmd {
            opcode: cmd.opcode,
            nsid,
            addr: data.as_mut_ptr() as u64,
            data_len: data.len() as u32,
            cdw10: cmd.cdw10,
            cdw11: cmd.cdw11,
            ..Default::default()
        };
        // SAFETY: `c` is a valid nvme_passthru_cmd whose addr/data_len describe `data`, which
        // outlives the call; the kernel writes at most data_len bytes there.
        let rc = unsafe { nvme_io_cmd(f.as_raw_fd(), &mut c) }.map_err(std::io::Error::from)?;
        Ok((Status(rc as u16), data))
    }
}

impl ReservationCommands for KernelReservations {
    fn submit(
        &self,
        _guard: &FenceGuard,
        device: &str,
        nsid: u32,
        cmd: &Command,
    ) -> std::io::Result<Status> {
        self.run(device, nsid, cmd).map(|(s, _)| s)
    }

    fn report(&self, device: &str, nsid: u32) -> std::io::Result<(Status, Vec<u8>)> {
        self.run(device, nsid, &codec::report())
    }
}

impl ReservationTeardown for KernelReservations {
    fn unregister(&self, device: &str, nsid: u32, key: u64) -> std::io::Result<Status> {
        let cmd = codec::register(codec::RegisterAction::Unregister, key, 0, false);
        self.run(device, nsid, &cmd).map(|(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthru_struct_is_the_kernels_72_bytes() {
        assert_eq!(std::mem::size_of::<PassthruCmd>(), 72);
        assert_eq!(std::mem::offset_of!(PassthruCmd, addr), 24);
        assert_eq!(std::mem::offset_of!(PassthruCmd, cdw10), 40);
        assert_eq!(std::mem::offset_of!(PassthruCmd, result), 68);
    }

    #[test]
    fn only_nvme_block_device_names() {
        let k = KernelReservations::new(Host::new("/nonexistent-root"));
        for bad in ["", "../sda", "sda", "nvme0n1/../../etc"] {
            let e = k.report(bad, 1).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{bad}");
            assert!(e.to_string().contains("not an NVMe block device"), "{e}");
        }
    }
}
