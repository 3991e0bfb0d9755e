//! A real card bound to vfio-pci: BAR0 mapped through the VFIO device, ring memory pinned and
//! mapped through the IOMMU. There is no such card on the machines this project is built on: the
//! checks up to the first ioctl are tested against a fake sysfs tree, the ioctls themselves are
//! not exercised (docs/driver.md says how to deploy on a real card).
//!
//! Raw ioctls through libc (the VFIO uAPI is small and stable); unsafe stays in this module.

use super::Backend;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
        source: std::io::Error,
    },
    /// The group has devices not bound to vfio-pci.
    #[error("IOMMU group {0} is not viable: every device in it must be bound to vfio-pci (or removed)")]
    NotViable(String),
    /// An ioctl failed.
    #[error("VFIO {what} failed: {source}")]
    Ioctl {
        /// Which request.
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

// VFIO uAPI (linux/vfio.h): _IO(';', 100 + n).
const VFIO_TYPE: u64 = b';' as u64;
const fn vfio_io(nr: u64) -> u64 {
    (VFIO_TYPE << 8) | (100 + nr)
}
const VFIO_GET_API_VERSION: u64 = vfio_io(0);
const VFIO_SET_IOMMU: u64 = vfio_io(2);
const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
const VFIO_IOMMU_MAP_DMA: u64 = vfio_io(13);
const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
/// vfio-pci's interrupt index for MSI-X.
const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1_IOMMU: u64 = 1;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 4;
const VFIO_DMA_MAP_FLAG_READ_WRITE: u32 = 3;
const DMA_BYTES: usize = 4 << 20;
/// Where ring memory appears to the card.
const IOVA_BASE: u64 = 0x1_0000_0000;

#[repr(C)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

/// `struct vfio_irq_set` with room for one eventfd.
#[repr(C)]
struct IrqSetOne {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    eventfd: i32,
}

impl IrqSetOne {
    /// MSI-X vector 0 signals `eventfd`.
    fn msix_vector0(eventfd: i32) -> IrqSetOne {
        IrqSetOne {
            argsz: std::mem::size_of::<IrqSetOne>() as u32,
            flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            start: 0,
            count: 1,
            eventfd,
        }
    }
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

fn ioctl(fd: RawFd, what: &'static str, req: u64, arg: u64) -> Result<i32, VfioError> {
    // SAFETY: `arg` is either an integer or a pointer to a live #[repr(C)] struct of the layout
    // the request expects (the callers below pair them); the kernel validates argsz.
    let r = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg) };
    if r < 0 {
        return Err(VfioError::Ioctl { what, source: std::io::Error::last_os_error() });
    }
    Ok(r)
}

/// A card bound to vfio-pci.
pub struct VfioBackend {
    _container: File,
    _group: File,
    _device: File,
    bar: *mut u8,
    bar_len: usize,
    dma: *mut u8,
    next_free: Mutex<u64>,
    /// MSI-X vector 0's eventfd; None when the card has no MSI-X (the driver polls then).
    irq: Option<File>,
}

// SAFETY: the BAR and DMA mappings are owned by this value; MMIO goes through volatile accesses
// and DMA memory through the bounds-checked copies below.
unsafe impl Send for VfioBackend {}

impl VfioBackend {
    /// Opens the card at PCI address `bdf` (e.g. 0000:03:00.0).
    pub fn open(bdf: &str) -> Result<VfioBackend, VfioError> {
        let group = check_device(Path::new("/sys"), bdf)?;
        let open = |p: PathBuf| {
            OpenOptions::new().read(true).write(true).open(&p).map_err(|source| VfioError::Open { path: p, source })
        };
        let container = open(PathBuf::from("/dev/vfio/vfio"))?;
        if ioctl(container.as_raw_fd(), "GET_API_VERSION", VFIO_GET_API_VERSION, 0)? != VFIO_API_VERSION {
            return Err(VfioError::Ioctl {
                what: "GET_API_VERSION",
                source: std::io::Error::other("unknown API version"),
            });
        }
        let group_file = open(PathBuf::from(format!("/dev/vfio/{group}")))?;
        let mut status = GroupStatus { argsz: std::mem::size_of::<GroupStatus>() as u32, flags: 0 };
        ioctl(group_file.as_raw_fd(), "GROUP_GET_STATUS", VFIO_GROUP_GET_STATUS, &mut status as *mut _ as u64)?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::NotViable(group));
        }
        let cfd = container.as_raw_fd();
        ioctl(group_file.as_raw_fd(), "GROUP_SET_CONTAINER", VFIO_GROUP_SET_CONTAINER, &cfd as *const _ as u64)?;
        ioctl(cfd, "SET_IOMMU", VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU)?;
        let name = CString::new(bdf).map_err(|_| VfioError::NoDevice(bdf.into()))?;
        let dfd = ioctl(group_file.as_raw_fd(), "GROUP_GET_DEVICE_FD", VFIO_GROUP_GET_DEVICE_FD, name.as_ptr() as u64)?;
        // SAFETY: the kernel returned a new descriptor that we now own.
        let device = unsafe { <File as std::os::unix::io::FromRawFd>::from_raw_fd(dfd) };
        let mut info = RegionInfo {
            argsz: std::mem::size_of::<RegionInfo>() as u32,
            flags: 0,
            index: 0,
            cap_offset: 0,
            size: 0,
            offset: 0,
        };
        ioctl(dfd, "DEVICE_GET_REGION_INFO", VFIO_DEVICE_GET_REGION_INFO, &mut info as *mut _ as u64)?;
        let bar_len = info.size as usize;
        if info.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || bar_len < amf_hdl_model::gen::regs::BAR_BYTES as usize {
            return Err(VfioError::Bar(bdf.into()));
        }
        // SAFETY: mapping the device's BAR0 region at the offset VFIO reported; checked below.
        let bar = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bar_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                dfd,
                info.offset as libc::off_t,
            )
        };
        if bar == libc::MAP_FAILED {
            return Err(VfioError::Bar(bdf.into()));
        }
        // SAFETY: anonymous private memory for the rings, pinned and mapped for the card below.
        let dma = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                DMA_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if dma == libc::MAP_FAILED {
            let source = std::io::Error::last_os_error();
            // SAFETY: unmapping the BAR mapped just above, which nothing else refers to.
            unsafe { libc::munmap(bar, bar_len) };
            return Err(VfioError::Ioctl { what: "mmap of ring memory", source });
        }
        // From here on Drop unmaps both mappings, on the error path too.
        let backend = VfioBackend {
            _container: container,
            _group: group_file,
            _device: device,
            bar: bar as *mut u8,
            bar_len,
            dma: dma as *mut u8,
            next_free: Mutex::new(IOVA_BASE),
            irq: None,
        };
        let map = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ_WRITE,
            vaddr: dma as u64,
            iova: IOVA_BASE,
            size: DMA_BYTES as u64,
        };
        ioctl(cfd, "IOMMU_MAP_DMA", VFIO_IOMMU_MAP_DMA, &map as *const _ as u64)?;
        let mut backend = backend;
        backend.irq = msix_eventfd(dfd);
        Ok(backend)
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
        if offset as usize + 4 > self.bar_len || !offset.is_multiple_of(4) {
            return u32::MAX;
        }
        // SAFETY: in bounds and aligned (checked); MMIO must be a single volatile access.
        unsafe { std::ptr::read_volatile(self.bar.add(offset as usize) as *const u32) }
    }
    fn write32(&self, offset: u32, value: u32) {
        if offset as usize + 4 <= self.bar_len && offset.is_multiple_of(4) {
            // SAFETY: as in read32.
            unsafe { std::ptr::write_volatile(self.bar.add(offset as usize) as *mut u32, value) }
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
        // is why completions carry a phase bit and are read whole.
        unsafe { std::ptr::copy_nonoverlapping(self.dma.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        let off = self.dma_range(addr, data.len())?;
        // SAFETY: in bounds of the DMA mapping (checked).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.dma.add(off), data.len()) };
        Ok(())
    }
}

/// Routes MSI-X vector 0 of the device to a new eventfd. None (and the driver polls) when the
/// card has no MSI-X or the kernel refuses.
fn msix_eventfd(device: RawFd) -> Option<File> {
    // SAFETY: eventfd(2) creates a new descriptor, owned by the File below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let file = unsafe { <File as std::os::unix::io::FromRawFd>::from_raw_fd(fd) };
    let set = IrqSetOne::msix_vector0(fd);
    match ioctl(device, "DEVICE_SET_IRQS", VFIO_DEVICE_SET_IRQS, &set as *const _ as u64) {
        Ok(_) => Some(file),
        Err(e) => {
            eprintln!("amf: card interrupts unavailable ({e}); the driver polls");
            None
        }
    }
}

impl Drop for VfioBackend {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open() mapped.
        unsafe {
            libc::munmap(self.bar as *mut libc::c_void, self.bar_len);
            libc::munmap(self.dma as *mut libc::c_void, DMA_BYTES);
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

    #[test]
    fn ioctl_numbers_match_the_kernel_uapi() {
        // linux/vfio.h: VFIO_GET_API_VERSION = _IO(';', 100) = 0x3b64, VFIO_IOMMU_MAP_DMA = 0x3b71.
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(std::mem::size_of::<RegionInfo>(), 32);
        assert_eq!(std::mem::size_of::<DmaMap>(), 32);
        // VFIO_DEVICE_SET_IRQS = _IO(';', 110); struct vfio_irq_set is 20 bytes + u8 data[].
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        let set = IrqSetOne::msix_vector0(7);
        assert_eq!((set.argsz, set.flags, set.index, set.count), (24, 0x24, 2, 1));
        assert_eq!(std::mem::offset_of!(IrqSetOne, eventfd), 20);
    }

    #[test]
    fn opening_without_vfio_is_a_clear_error() {
        // No card and (here) no VFIO: whatever is missing first is named, nothing panics.
        let e = VfioBackend::open("0000:ff:1f.7").err().expect("there is no such device here");
        assert!(!e.to_string().is_empty());
    }
}
