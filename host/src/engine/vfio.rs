//! A real card bound to vfio-pci: BAR0 mapped through the VFIO device, ring memory pinned and
//! mapped through the IOMMU. There is no such card on the machines this project is built on: the
//! checks up to the first ioctl are tested against a fake sysfs tree, the ioctls themselves are
//! not exercised (docs/driver.md and docs/operations.md say how to deploy on a real card).
//!
//! The VFIO container, group, device, region, DMA-map and interrupt ioctls are rust-vmm's
//! (vfio-ioctls, with the uAPI structs and constants of vfio-bindings); the mappings are memmap2's.
//! The unsafe that remains is the volatile MMIO and the DMA window, in this module.

use super::Backend;
use memmap2::{MmapOptions, MmapRaw};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vfio_bindings::bindings::vfio::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP};
use vfio_ioctls::{VfioContainer, VfioDevice};
use vmm_sys_util::eventfd::EventFd;

/// Why a card could not be opened through VFIO, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// The PCI device does not exist.
    #[error("no PCI device {0} (check the address with lspci -D)")]
    NoDevice(String),
    /// The device has no IOMMU group: the IOMMU is off.
    #[error("{0} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command line)")]
    NoIommuGroup(String),
    /// The device is bound to another driver.
    #[error("{bdf} is bound to {driver}, not vfio-pci: echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override, unbind it, then echo {bdf} > /sys/bus/pci/drivers_probe")]
    NotVfio {
        /// Device.
        bdf: String,
        /// Its driver.
        driver: String,
    },
    /// /dev/vfio is missing or not accessible.
    #[error("cannot open {path}: {source} (load vfio-pci with modprobe, and give the controller's user access to the group)")]
    Open {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// The group has devices not bound to vfio-pci.
    #[error("IOMMU group {0} is not viable: every device in it must be bound to vfio-pci (or removed)")]
    NotViable(String),
    /// A VFIO operation failed.
    #[error("VFIO {what} failed: {source}")]
    Vfio {
        /// Which operation.
        what: &'static str,
        /// Cause.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// A mapping failed.
    #[error("mapping {what} failed: {source}")]
    Map {
        /// What was being mapped.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// BAR0 cannot be mapped.
    #[error("BAR0 of {0} cannot be mapped (too small or not mappable)")]
    Bar(String),
}

/// Where the group and driver of a PCI device are found, from sysfs (a parameter for tests).
pub fn check_device(sysfs: &Path, bdf: &str) -> Result<String, VfioError> {
    let dev = sysfs.join("bus/pci/devices").join(bdf);
    if !dev.exists() {
        return Err(VfioError::NoDevice(bdf.into()));
    }
    let group = std::fs::read_link(dev.join("iommu_group")).map_err(|_| VfioError::NoIommuGroup(bdf.into()))?;
    let group =
        group.file_name().and_then(|n| n.to_str()).ok_or_else(|| VfioError::NoIommuGroup(bdf.into()))?.to_string();
    let driver = std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|d| d.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .unwrap_or_else(|| "no driver".into());
    if driver != "vfio-pci" {
        return Err(VfioError::NotVfio { bdf: bdf.into(), driver });
    }
    Ok(group)
}

const DMA_BYTES: usize = 4 << 20;
/// Where ring memory appears to the card.
const IOVA_BASE: u64 = 0x1_0000_0000;

/// A card bound to vfio-pci.
pub struct VfioBackend {
    // Field order is drop order: the device and container close (the kernel unmaps the DMA
    // window and drops the pins) before the memory behind them is unmapped.
    device: VfioDevice,
    _container: Arc<VfioContainer>,
    bar: MmapRaw,
    dma: MmapRaw,
    next_free: Mutex<u64>,
    /// MSI-X vector 0's eventfd; None when the card has no MSI-X (the driver polls then).
    irq: Option<EventFd>,
}

impl VfioBackend {
    /// Opens the card at PCI address `bdf` (e.g. 0000:03:00.0).
    pub fn open(bdf: &str) -> Result<VfioBackend, VfioError> {
        let group = check_device(Path::new("/sys"), bdf)?;
        let container = VfioContainer::new(None).map_err(|source| match source {
            vfio_ioctls::VfioError::OpenContainer(_) => VfioError::Open { path: "/dev/vfio/vfio".into(), source },
            source => VfioError::Vfio { what: "container setup", source },
        })?;
        let container = Arc::new(container);
        let sysfs = Path::new("/sys/bus/pci/devices").join(bdf);
        let device = VfioDevice::new(&sysfs, container.clone(), false).map_err(|source| match source {
            vfio_ioctls::VfioError::GroupViable => VfioError::NotViable(group.clone()),
            vfio_ioctls::VfioError::OpenGroup(..) => {
                VfioError::Open { path: format!("/dev/vfio/{group}").into(), source }
            }
            source => VfioError::Vfio { what: "device setup", source },
        })?;
        let bar0 = VFIO_PCI_BAR0_REGION_INDEX;
        let bar_len = device.get_region_size(bar0) as usize;
        if device.get_region_flags(bar0) & VFIO_REGION_INFO_FLAG_MMAP == 0
            || bar_len < amf_hdl_model::gen::regs::BAR_BYTES as usize
        {
            return Err(VfioError::Bar(bdf.into()));
        }
        let bar = MmapOptions::new()
            .offset(device.get_region_offset(bar0))
            .len(bar_len)
            .map_raw(&device)
            .map_err(|source| VfioError::Map { what: "BAR0", source })?;
        let dma: MmapRaw = MmapOptions::new()
            .len(DMA_BYTES)
            .map_anon()
            .map_err(|source| VfioError::Map { what: "ring memory", source })?
            .into();
        // SAFETY: `dma` is a live anonymous mapping of DMA_BYTES owned by the backend, which
        // keeps it until after the container (and with it the IOMMU mapping) is gone.
        unsafe { container.vfio_dma_map(IOVA_BASE, DMA_BYTES, dma.as_mut_ptr()) }
            .map_err(|source| VfioError::Vfio { what: "IOMMU mapping of ring memory", source })?;
        let irq = msix_eventfd(&device);
        Ok(VfioBackend { device, _container: container, bar, dma, next_free: Mutex::new(IOVA_BASE), irq })
    }

    fn dma_range(&self, addr: u64, len: usize) -> Result<usize, String> {
        let off = addr.checked_sub(IOVA_BASE).ok_or("address below the DMA window")? as usize;
        if off.checked_add(len).is_none_or(|end| end > DMA_BYTES) {
            return Err(format!("{len} bytes at {addr:#x} leave the DMA window"));
        }
        Ok(off)
    }
}

impl Backend for VfioBackend {
    fn read32(&self, offset: u32) -> u32 {
        if offset as usize + 4 > self.bar.len() || !offset.is_multiple_of(4) {
            return u32::MAX;
        }
        // SAFETY: in bounds and aligned (checked); MMIO must be a single volatile access.
        unsafe { std::ptr::read_volatile(self.bar.as_ptr().add(offset as usize) as *const u32) }
    }
    fn write32(&self, offset: u32, value: u32) {
        if offset as usize + 4 <= self.bar.len() && offset.is_multiple_of(4) {
            // SAFETY: as in read32.
            unsafe { std::ptr::write_volatile(self.bar.as_mut_ptr().add(offset as usize) as *mut u32, value) }
        }
    }
    fn interrupt(&self) -> Option<RawFd> {
        self.irq.as_ref().map(|f| f.as_raw_fd())
    }
    fn dma_alloc(&self, bytes: usize) -> Result<u64, String> {
        let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let addr = *next;
        self.dma_range(addr, bytes)?;
        *next += bytes.next_multiple_of(64) as u64;
        Ok(addr)
    }
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), String> {
        let off = self.dma_range(addr, buf.len())?;
        // SAFETY: in bounds of the DMA mapping (checked); the card may write concurrently, which
        // is why completions carry a phase bit and are read whole. Raw copies: no Rust reference
        // to memory the device writes.
        unsafe { std::ptr::copy_nonoverlapping(self.dma.as_ptr().add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        let off = self.dma_range(addr, data.len())?;
        // SAFETY: in bounds of the DMA mapping (checked).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.dma.as_mut_ptr().add(off), data.len()) };
        Ok(())
    }
}

/// Routes MSI-X vector 0 of the device to a new eventfd. None (and the driver polls) when the
/// card has no MSI-X or the kernel refuses.
fn msix_eventfd(device: &VfioDevice) -> Option<EventFd> {
    device.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX).filter(|i| i.count > 0)?;
    let fd = EventFd::new(libc::EFD_NONBLOCK).ok()?;
    match device.enable_msix(vec![&fd]) {
        Ok(()) => Some(fd),
        Err(e) => {
            eprintln!("amf: card interrupts unavailable ({e}); the driver polls");
            None
        }
    }
}

impl Drop for VfioBackend {
    fn drop(&mut self) {
        if self.irq.is_some() {
            let _ = self.device.disable_msix();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs(bound_to: Option<&str>, group: bool) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("bus/pci/devices/0000:03:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(t.path().join("kernel/iommu_groups/17")).unwrap();
        if group {
            std::os::unix::fs::symlink(t.path().join("kernel/iommu_groups/17"), dev.join("iommu_group")).unwrap();
        }
        if let Some(d) = bound_to {
            std::fs::create_dir_all(t.path().join("bus/pci/drivers").join(d)).unwrap();
            std::os::unix::fs::symlink(t.path().join("bus/pci/drivers").join(d), dev.join("driver")).unwrap();
        }
        t
    }

    #[test]
    fn each_missing_piece_is_named() {
        let t = fake_sysfs(Some("vfio-pci"), true);
        assert_eq!(check_device(t.path(), "0000:03:00.0").unwrap(), "17");
        assert!(matches!(check_device(t.path(), "0000:09:00.0"), Err(VfioError::NoDevice(_))));
        let t = fake_sysfs(Some("vfio-pci"), false);
        let e = check_device(t.path(), "0000:03:00.0").unwrap_err();
        assert!(e.to_string().contains("intel_iommu=on"), "{e}");
        let t = fake_sysfs(Some("nvme"), true);
        let e = check_device(t.path(), "0000:03:00.0").unwrap_err();
        assert!(e.to_string().contains("bound to nvme") && e.to_string().contains("driver_override"), "{e}");
        let t = fake_sysfs(None, true);
        assert!(check_device(t.path(), "0000:03:00.0").unwrap_err().to_string().contains("no driver"));
    }

    /// The layouts of the uAPI structs the crates pass to the kernel, and the constants used here,
    /// against the kernel's own linux/vfio.h compiled by the C compiler.
    #[test]
    fn vfio_bindings_match_the_kernel_header() {
        use vfio_bindings::bindings::vfio as b;
        let header = Path::new("/usr/include/linux/vfio.h");
        assert!(header.exists(), "linux/vfio.h (package linux-libc-dev) is needed to check the layouts");
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("layout.c");
        std::fs::write(
            &c,
            r#"#include <stdio.h>
#include <stddef.h>
#include <linux/vfio.h>
int main(void) {
  printf("%zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct vfio_region_info), sizeof(struct vfio_iommu_type1_dma_map),
         sizeof(struct vfio_irq_set), sizeof(struct vfio_group_status), offsetof(struct vfio_region_info, offset),
         offsetof(struct vfio_iommu_type1_dma_map, iova), sizeof(struct vfio_irq_info));
  printf("%u %u %u\n", VFIO_REGION_INFO_FLAG_MMAP, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX);
  return 0;
}
"#,
        )
        .unwrap();
        let exe = dir.path().join("layout");
        let cc = std::process::Command::new("cc").arg(&c).arg("-o").arg(&exe).output().expect("a C compiler (cc)");
        assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
        let out = std::process::Command::new(&exe).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let kernel: Vec<u64> = text.split_whitespace().map(|w| w.parse().unwrap()).collect();
        let rust = [
            std::mem::size_of::<b::vfio_region_info>() as u64,
            std::mem::size_of::<b::vfio_iommu_type1_dma_map>() as u64,
            std::mem::size_of::<b::vfio_irq_set>() as u64,
            std::mem::size_of::<b::vfio_group_status>() as u64,
            std::mem::offset_of!(b::vfio_region_info, offset) as u64,
            std::mem::offset_of!(b::vfio_iommu_type1_dma_map, iova) as u64,
            std::mem::size_of::<b::vfio_irq_info>() as u64,
            VFIO_REGION_INFO_FLAG_MMAP as u64,
            VFIO_PCI_BAR0_REGION_INDEX as u64,
            VFIO_PCI_MSIX_IRQ_INDEX as u64,
        ];
        assert_eq!(kernel, rust, "vfio-bindings against linux/vfio.h: {text}");
    }

    #[test]
    fn opening_without_vfio_is_a_clear_error() {
        // No card and (here) no VFIO: whatever is missing first is named, nothing panics.
        let e = VfioBackend::open("0000:ff:1f.7").err().expect("there is no such device here");
        assert!(!e.to_string().is_empty());
    }
}
