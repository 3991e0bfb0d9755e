//! NBD server: fixed newstyle negotiation (OPT_GO/INFO/LIST/ABORT/EXPORT_NAME), simple replies,
//! READ/WRITE/FLUSH/FUA/TRIM/WRITE_ZEROES, several requests in flight per connection, every
//! connection served by one event loop; TLS through NBD_OPT_STARTTLS (rustls), optional or
//! required.

pub mod client;
mod event_loop;
pub mod negotiate;
pub mod proto;
pub mod server;

pub use event_loop::{EventLoop, LoopWake};
pub use server::{run_blocking, Backend, BackendError, Done, Request, Server, ServerConfig, ServerStats};

impl Backend for crate::raid::Array {
    fn size(&self) -> u64 {
        self.capacity()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        crate::raid::Array::read(self, offset, buf).map_err(map_err)
    }
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), BackendError> {
        crate::raid::Array::write(self, offset, data, fua).map_err(map_err)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), BackendError> {
        crate::raid::Array::write_zeroes(self, offset, len, fua).map_err(map_err)
    }
    fn trim(&self, _offset: u64, _len: u64) -> Result<(), BackendError> {
        // TRIM is advisory; keeping the data keeps parity valid without a write.
        Ok(())
    }
    fn flush(&self) -> Result<(), BackendError> {
        crate::raid::Array::flush(self).map_err(map_err)
    }
}

fn map_err(e: crate::raid::RaidError) -> BackendError {
    match e {
        crate::raid::RaidError::OutOfRange { .. } => BackendError::OutOfRange,
        other => BackendError::Io(other.to_string()),
    }
}
