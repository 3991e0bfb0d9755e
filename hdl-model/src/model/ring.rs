//! A card-to-host ring (completions, events): the card produces 32-byte entries into host memory
//! with a phase bit that flips on every pass, so the host finds new entries without reading a
//! register; the host returns space with a posted consumer doorbell.

use super::card::HostMemory;

/// Bit of an entry that carries the phase (bit 7 of byte 2 in completions and events).
pub const PHASE_BIT: usize = 23;
/// Smallest and largest ring, as size_log2.
pub const SIZE_LOG2_MIN: u32 = 4;
/// Largest ring.
pub const SIZE_LOG2_MAX: u32 = 12;

/// What went wrong on a ring (maps to device.status.error_code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// size_log2 outside 4..=12.
    BadSize,
    /// The host's consumer index is ahead of the producer or behind it by more than the ring.
    DoorbellOverrun,
    /// Host memory refused the write.
    Dma,
}

impl RingError {
    /// The device.status.error_code value that reports it.
    pub fn code(self) -> u32 {
        use crate::gen::regs::device::status::error_code as code;
        match self {
            RingError::BadSize => code::BAD_RING_SIZE,
            RingError::DoorbellOverrun => code::DOORBELL_OVERRUN,
            RingError::Dma => code::DMA_ERROR,
        }
    }
}

/// The card's side of one card-to-host ring.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingWriter {
    /// DMA address of entry 0.
    pub base: u64,
    /// Entries = 2^size_log2.
    pub size_log2: u32,
    /// Entries written.
    pub prod: u32,
    /// Entries the host consumed.
    pub cons: u32,
}

impl RingWriter {
    /// Entries. Only the low 4 bits of size_log2 count (as in the RTL), so a garbage value
    /// cannot overflow; values outside 4..=12 are refused for writing anyway.
    fn size(&self) -> u32 {
        1 << (self.size_log2 & 15)
    }

    /// size_log2 is usable.
    pub fn valid(&self) -> bool {
        (SIZE_LOG2_MIN..=SIZE_LOG2_MAX).contains(&self.size_log2)
    }

    /// Entries written and not yet consumed.
    pub fn used(&self) -> u32 {
        self.prod.wrapping_sub(self.cons)
    }

    /// No room for another entry.
    pub fn full(&self) -> bool {
        self.used() >= self.size()
    }

    /// Free entries (0 for an invalid ring).
    pub fn space(&self) -> u32 {
        if self.valid() {
            self.size().saturating_sub(self.used())
        } else {
            0
        }
    }

    /// Writes one entry with its phase bit; Ok(false) if the ring is full (nothing written).
    pub fn post(&mut self, mem: &mut dyn HostMemory, mut entry: [u8; 32]) -> Result<bool, RingError> {
        if !self.valid() {
            return Err(RingError::BadSize);
        }
        if self.full() {
            return Ok(false);
        }
        // First pass over the ring writes phase 1, the next 0, and so on.
        let phase = (self.prod >> self.size_log2) & 1 == 0;
        let (byte, bit) = (PHASE_BIT / 8, PHASE_BIT % 8);
        entry[byte] = (entry[byte] & !(1 << bit)) | ((phase as u8) << bit);
        let slot = self.base.wrapping_add((self.prod & (self.size() - 1)) as u64 * 32);
        mem.write(slot, &entry).map_err(|_| RingError::Dma)?;
        self.prod = self.prod.wrapping_add(1);
        Ok(true)
    }

    /// The host's consumer doorbell.
    pub fn host_consumed(&mut self, value: u32) -> Result<(), RingError> {
        if self.prod.wrapping_sub(value) > self.size() {
            return Err(RingError::DoorbellOverrun);
        }
        self.cons = value;
        Ok(())
    }

    /// Empties the ring (soft reset).
    pub fn reset(&mut self) {
        self.prod = 0;
        self.cons = 0;
    }
}

/// The card's side of the host-to-card command ring: the host posts its producer index with a
/// doorbell; the card reads descriptors in order and, if the host gave an address, writes its
/// consumer index back there (so the host never reads it over MMIO).
#[derive(Clone, Copy, Debug, Default)]
pub struct RingReader {
    /// DMA address of entry 0.
    pub base: u64,
    /// Entries = 2^size_log2.
    pub size_log2: u32,
    /// Where the consumer index is written back (0: nowhere).
    pub cons_addr: u64,
    /// Host's producer index.
    pub prod: u32,
    /// Entries read.
    pub cons: u32,
}

impl RingReader {
    fn size(&self) -> u32 {
        1 << (self.size_log2 & 15)
    }

    /// size_log2 is usable.
    pub fn valid(&self) -> bool {
        (SIZE_LOG2_MIN..=SIZE_LOG2_MAX).contains(&self.size_log2)
    }

    /// Descriptors posted and not yet read.
    pub fn pending(&self) -> bool {
        self.prod != self.cons
    }

    /// The host's producer doorbell.
    pub fn doorbell(&mut self, value: u32) -> Result<(), RingError> {
        if !self.valid() {
            return Err(RingError::BadSize);
        }
        if value.wrapping_sub(self.cons) > self.size() {
            return Err(RingError::DoorbellOverrun);
        }
        self.prod = value;
        Ok(())
    }

    /// Reads the next descriptor (and writes the consumer index back); None if none is posted.
    pub fn fetch(&mut self, mem: &mut dyn HostMemory) -> Result<Option<[u8; 32]>, RingError> {
        if !self.pending() {
            return Ok(None);
        }
        if !self.valid() {
            return Err(RingError::BadSize);
        }
        let mut b = [0u8; 32];
        let slot = self.base.wrapping_add((self.cons & (self.size() - 1)) as u64 * 32);
        mem.read(slot, &mut b).map_err(|_| RingError::Dma)?;
        self.cons = self.cons.wrapping_add(1);
        if self.cons_addr != 0 {
            mem.write(self.cons_addr, &self.cons.to_le_bytes()).map_err(|_| RingError::Dma)?;
        }
        Ok(Some(b))
    }

    /// Empties the ring (soft reset).
    pub fn reset(&mut self) {
        self.prod = 0;
        self.cons = 0;
    }
}
