//! Service addresses that move: a controller that takes over a dead peer also takes over the
//! address its hosts connect to, as Pacemaker's IPaddr2 does. It adds the address to its
//! interface (`ip addr add`), tells the hosts' network with gratuitous ARP that the address
//! is at its interface now, and serves NBD on it with its own core; a host whose NBD client
//! reconnects (qemu's `reconnect-delay`) goes on through the survivor. Real deployments with
//! their own cluster manager can use this or its IP resource agent; multipath hosts (several
//! controllers' addresses in one multipath device) need none of it.

use super::ClusterError;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

/// Gratuitous ARPs sent per takeover (switches and hosts may miss one).
const ANNOUNCEMENTS: usize = 3;
const ETH_P_ARP: u16 = 0x0806;
const ARP_FRAME_BYTES: usize = 42;

/// Adds `ip/prefix` to `dev`, or says why not.
pub fn add_address(dev: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), ClusterError> {
    ip_command(&["addr", "add", &format!("{ip}/{prefix}"), "dev", dev])
}

/// Removes `ip/prefix` from `dev`.
pub fn remove_address(dev: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), ClusterError> {
    ip_command(&["addr", "del", &format!("{ip}/{prefix}"), "dev", dev])
}

fn ip_command(args: &[&str]) -> Result<(), ClusterError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| ClusterError::Config(format!("ip {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(ClusterError::Config(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The MAC address of `dev`.
fn mac_of(dev: &str) -> Result<[u8; 6], ClusterError> {
    let path = format!("/sys/class/net/{dev}/address");
    let text =
        std::fs::read_to_string(&path).map_err(|source| ClusterError::File { path: path.clone().into(), source })?;
    let bytes: Vec<u8> = text.trim().split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    bytes.try_into().map_err(|_| ClusterError::Config(format!("{path}: not a MAC address: {}", text.trim())))
}

/// A gratuitous ARP request: "who has `ip`? tell `ip`", from `mac`, to everyone.
fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; ARP_FRAME_BYTES] {
    let mut f = [0u8; ARP_FRAME_BYTES];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Announces that `ip` is at `dev` now: hosts and switches update their tables at once
/// instead of after their entries for the dead controller time out.
pub fn announce(dev: &str, ip: Ipv4Addr) -> Result<(), ClusterError> {
    let mac = mac_of(dev)?;
    let frame = garp_frame(mac, ip);
    let cdev = std::ffi::CString::new(dev).map_err(|_| ClusterError::Config(format!("interface {dev:?}")))?;
    // SAFETY: if_nametoindex reads the NUL-terminated string it is given, which lives across
    // the call.
    let ifindex = unsafe { libc::if_nametoindex(cdev.as_ptr()) };
    if ifindex == 0 {
        return Err(ClusterError::Config(format!("no interface {dev}: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: socket(2) with constant arguments; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (ETH_P_ARP.to_be()) as libc::c_int) };
    if fd < 0 {
        return Err(ClusterError::Config(format!("raw socket for ARP: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value, filled in below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let mut result = Ok(());
    for _ in 0..ANNOUNCEMENTS {
        // SAFETY: the frame and the address are valid for the lengths given for the duration
        // of the call; the kernel only reads them.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &to as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            result = Err(ClusterError::Config(format!("gratuitous ARP on {dev}: {}", std::io::Error::last_os_error())));
        }
    }
    // SAFETY: closing the descriptor opened above, once.
    unsafe { libc::close(fd) };
    result
}

/// A service address this controller took over: removed again when it stops.
pub struct TakenAddress {
    /// The address hosts connect to.
    pub addr: SocketAddr,
    dev: String,
    prefix: u8,
    /// Its NBD server (this controller's core behind it).
    pub server: crate::nbd::Server,
}

impl TakenAddress {
    /// Takes `addr` over on `dev`: adds it, announces it, serves `backend` on it.
    pub fn take(
        dev: &str,
        prefix: u8,
        addr: SocketAddr,
        backend: std::sync::Arc<dyn crate::nbd::Backend>,
        cfg: crate::nbd::ServerConfig,
    ) -> Result<TakenAddress, ClusterError> {
        let SocketAddr::V4(v4) = addr else {
            return Err(ClusterError::Config(format!("{addr}: service addresses are IPv4 here")));
        };
        add_address(dev, *v4.ip(), prefix)?;
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| ClusterError::Bind { addr: addr.to_string(), source })?;
        let server = crate::nbd::Server::spawn(listener, backend, cfg)
            .map_err(|source| ClusterError::Bind { addr: addr.to_string(), source })?;
        // After the listener: a host that hears the announcement finds the port open.
        announce(dev, *v4.ip())?;
        Ok(TakenAddress { addr, dev: dev.to_string(), prefix, server })
    }

    /// Stops serving it and gives it back.
    pub fn release(mut self) {
        self.server.shutdown();
        if let SocketAddr::V4(v4) = self.addr {
            let _ = remove_address(&self.dev, *v4.ip(), self.prefix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gratuitous_arp_names_the_address_as_sender_and_target() {
        let mac = [2, 0, 0, 0, 0, 9];
        let f = garp_frame(mac, Ipv4Addr::new(10, 77, 1, 1));
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[12..14], &[0x08, 0x06], "ARP");
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 77, 1, 1]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 77, 1, 1]);
    }
}
