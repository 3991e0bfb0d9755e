//! Controllers in network namespaces: each gets its own address on a bridge in the test's
//! namespace (10.77.K.i+1/24; the test's side is .254), so a test can cut one controller off
//! by taking its link down. Needs root (CI runs as root); everything is removed on drop.

use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// `n` namespaces on one bridge.
pub struct Net {
    /// Distinguishes this net's names and subnet from others on the machine.
    pub k: u32,
    pub n: usize,
}

impl Net {
    /// Sets the namespaces up; a machine that cannot (not root, no `ip`) is an error with the
    /// reason, not a skipped test.
    pub fn new(n: usize) -> Net {
        // A subnet and names of its own: tests of one process run at once, so each net takes
        // the next number (a leftover of an earlier run is removed first).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let k = 100 + (std::process::id() * 8 + seq) % 150;
        let net = Net { k, n };
        net.remove();
        net.create().unwrap_or_else(|e| panic!("network namespaces for the test: {e}"));
        net
    }

    fn bridge(&self) -> String {
        format!("amfbr{}", self.k)
    }

    /// Controller i's namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("amf{}-{i}", self.k)
    }

    /// The test-side end of controller i's link.
    pub fn link(&self, i: usize) -> String {
        format!("amf{}h{i}", self.k)
    }

    /// The hosts' namespace (its address is .200): a client there keeps its TCP connections
    /// alive with probes after 1 s idle, as a host of a controller cluster should (a dead
    /// controller's connection is found dead when its moved address answers a probe).
    pub fn host_ns(&self) -> String {
        format!("amf{}-h", self.k)
    }

    /// Controller i's end of its link (inside its namespace).
    pub fn inner(&self, i: usize) -> String {
        format!("amf{}c{i}", self.k)
    }

    /// Controller i's address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.k, i + 1)
    }

    fn create(&self) -> Result<(), String> {
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("10.77.{}.254/24", self.k), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..self.n {
            let (ns, host, inner) = (self.ns(i), self.link(i), self.inner(i));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &host, "master", &br, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.addr(i)), "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (ns, host, inner) = (self.host_ns(), format!("amf{}hh", self.k), format!("amf{}hc", self.k));
        ip(&["netns", "add", &ns])?;
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
        ip(&["link", "set", &inner, "netns", &ns])?;
        ip(&["link", "set", &host, "master", &br, "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("10.77.{}.200/24", self.k), "dev", &inner])?;
        ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        for (knob, v) in [("tcp_keepalive_time", 1), ("tcp_keepalive_intvl", 1), ("tcp_keepalive_probes", 3)] {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "sh", "-c", &format!("echo {v} > /proc/sys/net/ipv4/{knob}")])
                .output()
                .map_err(|e| format!("{knob}: {e}"))?;
            if !out.status.success() {
                return Err(format!("{knob}: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        Ok(())
    }

    /// Takes controller i's link down (`up` false) or brings it back.
    pub fn set_link(&self, i: usize, up: bool) {
        ip(&["link", "set", &self.link(i), if up { "up" } else { "down" }]).unwrap();
    }

    fn remove(&self) {
        for i in 0..self.n {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &self.link(i)]);
        }
        let _ = ip(&["netns", "del", &self.host_ns()]);
        let _ = ip(&["link", "del", &format!("amf{}hh", self.k)]);
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}
