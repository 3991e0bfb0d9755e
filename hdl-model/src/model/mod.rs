//! The card at transaction level: the oracle the RTL is checked against, and the fast card for
//! large simulations.

pub mod card;
pub mod ring;
pub mod sharer_table;

/// Host memory backed by a byte vector starting at DMA address `base` (tests and simulations).
pub struct VecMemory {
    /// DMA address of byte 0.
    pub base: u64,
    /// Contents.
    pub bytes: Vec<u8>,
}

impl card::HostMemory for VecMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), card::DmaError> {
        let err = card::DmaError { addr, len: buf.len() };
        let at = addr.checked_sub(self.base).ok_or(err)? as usize;
        let src = self.bytes.get(at..at + buf.len()).ok_or(err)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), card::DmaError> {
        let err = card::DmaError { addr, len: data.len() };
        let at = addr.checked_sub(self.base).ok_or(err)? as usize;
        let dst = self.bytes.get_mut(at..at + data.len()).ok_or(err)?;
        dst.copy_from_slice(data);
        Ok(())
    }
}
