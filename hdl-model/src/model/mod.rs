//! The card at transaction level: the oracle the RTL is checked against, and the fast card for
//! large simulations.

pub mod card;
pub mod link_auth;
pub mod ring;
pub mod sharer_table;

/// Host memory backed by a byte vector starting at DMA address `base` (tests and simulations).
/// With `refuse` set every access fails, as a host memory port returning errors would.
pub struct VecMemory {
    /// DMA address of byte 0.
    pub base: u64,
    /// Contents.
    pub bytes: Vec<u8>,
    /// Refuse every access.
    pub refuse: bool,
}

impl VecMemory {
    /// `len` zero bytes at `base`.
    pub fn new(base: u64, len: usize) -> VecMemory {
        VecMemory { base, bytes: vec![0; len], refuse: false }
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, card::DmaError> {
        let err = card::DmaError { addr, len };
        if self.refuse {
            return Err(err);
        }
        let at = addr.checked_sub(self.base).ok_or(err)? as usize;
        let end = at.checked_add(len).filter(|&e| e <= self.bytes.len()).ok_or(err)?;
        Ok(at..end)
    }
}

impl card::HostMemory for VecMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), card::DmaError> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), card::DmaError> {
        let r = self.range(addr, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}
