//! `amf bench nbd`: `qemu-img bench` against one amf controller serving RAID5 on member files,
//! and against `qemu-nbd` serving a raw file of the same size, in the same run, alternating;
//! then both again over TLS (one throwaway CA, the same certificate for both servers).

use super::BenchError;
use crate::raid::assemble::{create, CreateOptions};
use crate::raid::Level;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Member size of the benchmark group.
const MEMBER_BYTES: u64 = 512 << 20;
/// Five members with 16 KiB chunks: a stripe holds exactly 64 KiB of data, the size of the
/// write benchmark's requests (stripe width matched to the I/O size, as an administrator would).
const MEMBERS: usize = 5;
const CHUNK_BYTES: u64 = 16 << 10;
const REPEATS: usize = 3;

/// A server process stopped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a child we spawned.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn peer_err(program: &str, detail: impl ToString) -> BenchError {
    BenchError::Peer { program: program.into(), detail: detail.to_string() }
}

fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| peer_err("bind", e))?;
    Ok(l.local_addr().map_err(|e| peer_err("bind", e))?.port())
}

fn start_amf(dir: &Path, tls: Option<&Path>) -> Result<(Proc, String), BenchError> {
    let exe = std::env::current_exe().map_err(|e| peer_err("amf", e))?;
    let (p, a) = (free_port()?, free_port()?);
    let mut cmd = Command::new(exe);
    cmd.args(["controller", "--dir"]).arg(dir).args([
        "--index",
        "0",
        "--nbd",
        &format!("127.0.0.1:{p}"),
        "--admin",
        &format!("127.0.0.1:{a}"),
    ]);
    if let Some(t) = tls {
        cmd.arg("--tls-cert").arg(t.join(crate::tls::SERVER_CERT)).arg("--tls-key").arg(t.join(crate::tls::SERVER_KEY));
    }
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map_err(|e| peer_err("amf controller", e))?;
    let out = child.stdout.take().ok_or_else(|| peer_err("amf controller", "no stdout"))?;
    let proc = Proc(child);
    let line = BufReader::new(out).lines().map_while(Result::ok).find(|l| l.starts_with("controller "));
    let uri = line
        .and_then(|l| l.split_whitespace().nth(5).map(str::to_string))
        .ok_or_else(|| peer_err("amf controller", "no ready line"))?;
    Ok((proc, uri))
}

fn start_qemu_nbd(file: &Path, tls: Option<&Path>) -> Result<(Proc, String), BenchError> {
    let port = free_port()?;
    let mut cmd = Command::new("qemu-nbd");
    cmd.args(["-f", "raw", "-x", "amf", "-b", "127.0.0.1", "-p", &port.to_string(), "--persistent", "--shared=8"]);
    if let Some(t) = tls {
        cmd.arg("--object")
            // No client certificates asked for, as amf here.
            .arg(format!("tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off", t.display()))
            .args(["--tls-creds", "tls0"]);
    }
    let child = cmd
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| peer_err("qemu-nbd (apt-get install qemu-utils)", e))?;
    let proc = Proc(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(peer_err("qemu-nbd", "did not start listening"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((proc, format!("nbd://127.0.0.1:{port}/amf")))
}

/// Runs `qemu-img bench` and returns operations per second.
fn qemu_img_bench(uri: &str, count: u64, block: u64, write: bool) -> Result<f64, BenchError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["bench", "-f", "raw", "-c", &count.to_string(), "-d", "16", "-s", &block.to_string(), "--pattern=0xa5"]);
    if write {
        cmd.arg("-w");
    }
    let out = cmd.arg(uri).output().map_err(|e| peer_err("qemu-img", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let secs = text
        .lines()
        .find_map(|l| l.strip_prefix("Run completed in ")?.strip_suffix(" seconds.")?.parse::<f64>().ok())
        .ok_or_else(|| peer_err("qemu-img bench", format!("{}{}", text, String::from_utf8_lossy(&out.stderr))))?;
    Ok(count as f64 / secs.max(1e-9))
}

/// Runs fio's nbd engine (libnbd, GnuTLS) over TLS and returns operations per second:
/// `qemu-img bench` has no `--object` to carry TLS credentials. fio's engine may not name a
/// certificate folder in the URI (libnbd refuses local files there), so the client does not
/// verify the server: that costs the handshake, not the records measured here.
fn fio_bench(uri: &str, count: u64, block: u64, write: bool) -> Result<f64, BenchError> {
    let rw = if write { "write" } else { "read" };
    let out = Command::new("fio")
        .args(["--name=bench", "--ioengine=nbd", &format!("--uri={uri}?tls-verify-peer=false"), &format!("--rw={rw}")])
        .args([format!("--bs={block}"), "--iodepth=16".into(), format!("--io_size={}", count * block)])
        .args(["--size=256M", "--output-format=json"])
        .output()
        .map_err(|e| peer_err("fio (apt-get install fio)", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text.find('{').map(|i| &text[i..]).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let job = &v["jobs"][0];
    match (job["error"].as_u64(), job[rw]["iops"].as_f64()) {
        (Some(0), Some(iops)) if iops > 0.0 => Ok(iops),
        _ => Err(peer_err("fio", format!("{text}{}", String::from_utf8_lossy(&out.stderr)))),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One workload's result: (workload, amf ops/s, qemu-nbd ops/s).
pub type NbdRow = (String, f64, f64);

/// Runs the comparison; returns a markdown table and its rows.
pub fn run(count: u64) -> Result<(String, Vec<NbdRow>), BenchError> {
    let tmp = std::env::temp_dir().join(format!("amf-bench-nbd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let dir = tmp.join("group");
    create(
        &dir,
        &CreateOptions { chunk_bytes: CHUNK_BYTES, ..CreateOptions::new(Level::Raid5, MEMBERS, MEMBER_BYTES) },
    )?;
    let raw = tmp.join("peer.raw");
    let capacity = crate::raid::assemble::classify(&dir).map(|c| {
        let sb = c.reference;
        (sb.member_data_bytes / sb.chunk_bytes as u64) * sb.chunk_bytes as u64 * (MEMBERS as u64 - 1)
    })?;
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(capacity))
        .map_err(|source| BenchError::Io { path: raw.display().to_string(), source })?;
    let (amf, amf_uri) = start_amf(&dir, None)?;
    let (peer, peer_uri) = start_qemu_nbd(&raw, None)?;
    // Fill both completely so reads move real data (a sparse peer file would answer reads of
    // holes without sending data).
    let fill = capacity / (1 << 20);
    qemu_img_bench(&amf_uri, fill, 1 << 20, true)?;
    qemu_img_bench(&peer_uri, fill, 1 << 20, true)?;
    let workloads: [(&str, u64, bool, u64); 4] = [
        ("64 KiB sequential writes", 65536, true, count / 10),
        ("4 KiB sequential writes", 4096, true, count / 4),
        ("4 KiB sequential reads", 4096, false, count),
        ("64 KiB sequential reads", 65536, false, count / 4),
    ];
    let mut s = format!(
        "Command: `amf bench nbd` — {}; `qemu-img bench -d 16` (queue depth 16) against one amf controller \
         (RAID5, {MEMBERS} x {} MiB member files, {} KiB chunks: one stripe = 64 KiB of data) and `qemu-nbd` on a raw file of the same capacity; \
         median of {REPEATS} alternating runs; data in the page cache. Rows marked TLS: both servers again with TLS \
         required (the same ECDSA P-256 certificate; rustls in amf, GnuTLS in qemu-nbd), driven by fio's nbd engine \
         (libnbd, GnuTLS; queue depth 16, one connection), since `qemu-img bench` cannot be given TLS credentials.\n\n\
         | workload | requests | amf ops/s | qemu-nbd ops/s | amf / qemu-nbd |\n|---|---|---|---|---|\n",
        super::machine(),
        MEMBER_BYTES >> 20,
        CHUNK_BYTES >> 10
    );
    let mut rows = Vec::new();
    let mut measure = |suffix: &str, run: &mut dyn FnMut(bool, u64, u64, bool) -> Result<f64, BenchError>| {
        for (name, block, write, n) in workloads {
            let (mut a, mut p) = (Vec::new(), Vec::new());
            for _ in 0..REPEATS {
                a.push(run(true, n, block, write)?);
                p.push(run(false, n, block, write)?);
            }
            let (a, p) = (median(a), median(p));
            s += &format!("| {name}{suffix} | {n} | {a:.0} | {p:.0} | {:.2}x |\n", a / p.max(1e-9));
            rows.push((format!("{name}{suffix}"), a, p));
        }
        Ok::<(), BenchError>(())
    };
    measure("", &mut |amf_side, n, block, write| {
        qemu_img_bench(if amf_side { &amf_uri } else { &peer_uri }, n, block, write)
    })?;
    drop((amf, peer));
    // The same servers with TLS required (one controller holds the group at a time).
    let creds = tmp.join("tls");
    crate::tls::generate(&creds, &[]).map_err(|e| peer_err("amf certs", e))?;
    let (amf, amf_uri) = start_amf(&dir, Some(&creds))?;
    let (peer, peer_uri) = start_qemu_nbd(&raw, Some(&creds))?;
    let peer_uri = peer_uri.replace("nbd://", "nbds://");
    measure(", TLS", &mut |amf_side, n, block, write| {
        fio_bench(if amf_side { &amf_uri } else { &peer_uri }, n, block, write)
    })?;
    drop((amf, peer));
    let _ = std::fs::remove_dir_all(&tmp);
    Ok((s, rows))
}

/// The rows as grouped bars, amf beside qemu-nbd for each workload.
pub fn plot(rows: &[NbdRow], path: &std::path::Path) -> Result<(), BenchError> {
    let cats: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let groups = vec![
        ("amf (RAID5)".to_string(), rows.iter().map(|r| r.1).collect()),
        ("qemu-nbd (raw file)".to_string(), rows.iter().map(|r| r.2).collect()),
    ];
    super::plot::bar_chart(path, "NBD path: amf vs qemu-nbd, qemu-img bench -d 16", "ops/s", &cats, &groups)
}
