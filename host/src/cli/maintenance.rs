//! `amf inspect`, `amf scrub`, `amf rebuild`: offline on the directory when no controller serves
//! it, otherwise through the serving controller's admin endpoint (online).

use super::progress::Progress;
use crate::cluster::admin::{self, Task};
use crate::cluster::dirlock::{controller_file, DirLock};
use crate::cluster::ClusterError;
use crate::raid::assemble::{assemble_with, check_write_hole, classify, member_path, resync, Assembled, Classified};
use crate::raid::rebuild::{check_replacement_file, prepare_replacement, rebuild as rebuild_member};
use crate::raid::scrub::scrub as scrub_group;
use crate::raid::{Geometry, MemberState};
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

type Res = Result<(), Box<dyn Error>>;

/// Prints the group as its superblocks describe it.
pub fn inspect(dir: &Path, json: bool) -> Res {
    let c = classify(dir)?;
    let sb = &c.reference;
    let geo = Geometry::new(sb.level, sb.member_count as usize, sb.chunk_bytes as u64, sb.member_data_bytes)?;
    let members: Vec<serde_json::Value> = (0..sb.member_count as usize)
        .map(|i| {
            let (path, state, events) = match &c.slots[i] {
                Some((m, own)) => (m.path().display().to_string(), state_name(sb.states[i]), Some(own.events)),
                None => (
                    member_path(dir, i).display().to_string(),
                    if sb.states[i] == MemberState::Faulty { "faulty" } else { "missing" },
                    None,
                ),
            };
            serde_json::json!({ "path": path, "index": i, "state": state, "events": events })
        })
        .collect();
    let doc = serde_json::json!({
        "uuid": sb.uuid_string(),
        "level": sb.level,
        "layout": sb.level.layout(),
        "chunk_bytes": sb.chunk_bytes,
        "data_offset_bytes": sb.data_offset_bytes,
        "member_data_bytes": sb.member_data_bytes,
        "capacity_bytes": geo.capacity(),
        "stripes": geo.stripes(),
        "events": sb.events,
        "clean": sb.clean,
        "bitmap_region_stripes": sb.region_stripes,
        "bitmap_slots": bitmap_slots(&c),
        "members": members,
        "rejected": c.rejected,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "group {}  {} {}  chunk {} KiB  capacity {} bytes  events {}  {}",
        doc["uuid"].as_str().unwrap_or(""),
        sb.level,
        sb.level.layout(),
        sb.chunk_bytes / 1024,
        geo.capacity(),
        sb.events,
        if sb.clean { "clean" } else { "dirty (in use or crashed)" }
    );
    for m in &members {
        println!(
            "  member {:>2}  {:<10}  {}",
            m["index"],
            m["state"].as_str().unwrap_or(""),
            m["path"].as_str().unwrap_or("")
        );
    }
    for r in &c.rejected {
        println!("  rejected   {r}");
    }
    Ok(())
}

/// Regions set in each controller's write-intent slot, read from the freshest member (null for a
/// slot that cannot be read).
fn bitmap_slots(c: &Classified) -> Vec<serde_json::Value> {
    let sb = &c.reference;
    let fresh = c.slots.iter().flatten().find(|(_, own)| own.events == sb.events);
    (0..sb.bitmap_slots as u64)
        .map(|slot| {
            let mut b = vec![0u8; sb.bitmap_bytes as usize];
            let at = sb.bitmap_offset_bytes + slot * sb.bitmap_bytes as u64;
            let dirty = fresh
                .and_then(|(m, _)| m.read_at(at, &mut b).ok())
                .map(|_| b.iter().map(|x| x.count_ones() as u64).sum::<u64>());
            serde_json::json!({ "slot": slot, "dirty_regions": dirty })
        })
        .collect()
}

fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Active => "active",
        MemberState::Faulty => "faulty",
        MemberState::Rebuilding => "rebuilding",
    }
}

/// Assembles for offline maintenance, resyncing first if the group was not shut down cleanly.
fn offline(dir: &Path, quiet: bool, force: bool) -> Result<Assembled, Box<dyn Error>> {
    let asm = assemble_with(dir, force)?;
    check_write_hole(&asm, force)?;
    for note in asm.notes() {
        eprintln!("amf: {note}");
    }
    if asm.was_dirty {
        let p = Progress::new("resync", quiet);
        resync(&asm.array, &asm.dirty_regions, &|d, t| p.update(d, t))?;
        p.finish();
    }
    Ok(asm)
}

fn admin_url(dir: &Path) -> Result<String, ClusterError> {
    let path = controller_file(dir, 0);
    let text = std::fs::read_to_string(&path).map_err(|source| ClusterError::File { path: path.clone(), source })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ClusterError::File { path: path.clone(), source: std::io::Error::other(e) })?;
    v["admin"]
        .as_str()
        .map(str::to_string)
        .ok_or(ClusterError::File { path, source: std::io::Error::other("no admin URL") })
}

/// Starts a task on the serving controller and follows it to the end.
fn online(dir: &Path, path_query: &str, label: &str, quiet: bool) -> Result<serde_json::Value, Box<dyn Error>> {
    let url = admin_url(dir)?;
    let (code, body) = admin::request(&url, "POST", path_query, admin::load_admin_token(dir).as_deref())?;
    if code != 202 {
        return Err(Box::new(ClusterError::Admin { url, detail: format!("HTTP {code}: {body}") }));
    }
    let p = Progress::new(label, quiet);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let (_, body) = admin::request(&url, "GET", "/status", None)?;
        let status: serde_json::Value = serde_json::from_str(&body)?;
        let task: Option<Task> = serde_json::from_value(status["task"].clone()).ok();
        let Some(task) = task else { continue };
        p.update(task.done, task.total);
        match task.state.as_str() {
            "done" => {
                p.finish();
                return Ok(task.result.unwrap_or_default());
            }
            "failed" => {
                return Err(Box::new(ClusterError::Admin { url, detail: task.error.unwrap_or_default() }));
            }
            _ => {}
        }
    }
}

/// `amf scrub`.
pub fn scrub(dir: &Path, repair: bool, json: bool, force: bool) -> Res {
    let report = match DirLock::try_acquire(dir)? {
        Some(_lock) => {
            let asm = offline(dir, json, force)?;
            let p = Progress::new(if repair { "scrub --repair" } else { "scrub" }, json);
            let r = scrub_group(&asm.array, repair, &|d, t| p.update(d, t))?;
            p.finish();
            asm.array.close()?;
            serde_json::to_value(r)?
        }
        None => online(dir, if repair { "/scrub?repair=1" } else { "/scrub" }, "scrub (online)", json)?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "scrub: {} stripes checked, {} skipped, {} mismatches, {} repaired",
            report["checked"], report["skipped"], report["mismatches"], report["repaired"]
        );
    }
    Ok(())
}

/// Which member an offline rebuild takes, checked from the superblocks without writing: the
/// slot exists and is not active, and a replacement file is usable.
fn precheck_rebuild(dir: &Path, member: Option<usize>, replacement: Option<&Path>) -> Result<usize, Box<dyn Error>> {
    let c = classify(dir)?;
    let count = c.reference.member_count as usize;
    let active = |i: usize| c.slots[i].is_some() && c.reference.states[i] == MemberState::Active;
    let index = match member {
        Some(i) => i,
        None => (0..count).find(|&i| !active(i)).ok_or("every member is in sync; nothing to rebuild")?,
    };
    if index >= count {
        return Err(format!("the group has {count} members; there is no member {index}").into());
    }
    if active(index) {
        return Err(format!("member {index} is active; nothing to rebuild").into());
    }
    if let Some(r) = replacement {
        let members: Vec<(usize, PathBuf)> = c
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|(m, _)| (i, m.path().to_path_buf())))
            .collect();
        let bytes = c.reference.data_offset_bytes + c.reference.member_data_bytes;
        check_replacement_file(index, r, bytes, &members)?;
    }
    Ok(index)
}

/// `amf rebuild`.
/// `amf fail DIR --member N`.
pub fn fail(dir: &Path, member: usize, json: bool) -> Res {
    match DirLock::try_acquire(dir)? {
        Some(_lock) => {
            let asm = offline(dir, json, false)?;
            asm.array.fail_by_operator(member)?;
            asm.array.close()?;
        }
        None => {
            let url = admin_url(dir)?;
            let path = format!("/fail?member={member}");
            let (code, body) = admin::request(&url, "POST", &path, admin::load_admin_token(dir).as_deref())?;
            if code != 200 {
                return Err(Box::new(ClusterError::Admin { url, detail: format!("HTTP {code}: {body}") }));
            }
        }
    }
    if json {
        println!("{}", serde_json::json!({ "failed": member }));
    } else {
        println!("member {member} failed");
    }
    Ok(())
}

pub fn rebuild(dir: &Path, member: Option<usize>, replacement: Option<PathBuf>, json: bool, force: bool) -> Res {
    let report = match DirLock::try_acquire(dir)? {
        Some(_lock) => {
            // Refusals before assembly, which writes the superblocks.
            let index = precheck_rebuild(dir, member, replacement.as_deref())?;
            let asm = offline(dir, json, force)?;
            let a = &asm.array;
            let resuming = a.member_status().get(index).is_some_and(|m| m.state == MemberState::Rebuilding);
            let m = if resuming && replacement.is_none() {
                None
            } else {
                Some(prepare_replacement(a, dir, index, replacement.as_deref())?)
            };
            let p = Progress::new(&format!("rebuild member {index}"), json);
            let r = rebuild_member(a, index, m, &|d, t| p.update(d, t))?;
            p.finish();
            a.close()?;
            serde_json::to_value(r)?
        }
        None => {
            let index = match member {
                Some(i) => i,
                None => {
                    let (_, body) = admin::request(&admin_url(dir)?, "GET", "/status", None)?;
                    let v: serde_json::Value = serde_json::from_str(&body)?;
                    v["members"]
                        .as_array()
                        .and_then(|ms| ms.iter().find(|m| m["state"] != "active"))
                        .and_then(|m| m["index"].as_u64())
                        .ok_or("every member is in sync; nothing to rebuild")? as usize
                }
            };
            let mut q = format!("/rebuild?member={index}");
            if let Some(r) = &replacement {
                q += &format!("&replacement={}", r.display().to_string().replace('/', "%2F"));
            }
            online(dir, &q, &format!("rebuild member {index} (online)"), json)?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("rebuild: member {} rebuilt ({} stripes)", report["member"], report["stripes"]);
    }
    Ok(())
}

/// `amf status`: a running controller's status document, summarised or as JSON.
fn fetch_status(url: String) -> Result<serde_json::Value, Box<dyn Error>> {
    let (code, body) = admin::request(&url, "GET", "/status", None)?;
    if code != 200 {
        return Err(Box::new(ClusterError::Admin { url, detail: format!("HTTP {code}: {body}") }));
    }
    Ok(serde_json::from_str(&body)?)
}

/// Admin URLs of the other controllers serving `dir` (their status files).
fn peer_urls(dir: &Path) -> Vec<String> {
    (1..crate::cluster::config::NODES_MAX as usize)
        .filter_map(|i| std::fs::read_to_string(controller_file(dir, i)).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter_map(|v| v["admin"].as_str().map(str::to_string))
        .collect()
}

pub fn status(dir: Option<&Path>, admin: Option<String>, json: bool) -> Res {
    let (url, others) = match (admin, dir) {
        (Some(url), _) => (url, Vec::new()),
        (None, Some(dir)) => (admin_url(dir)?, peer_urls(dir)),
        (None, None) => return Err("amf status needs a group directory or --admin URL".into()),
    };
    let mut v = fetch_status(url)?;
    let peers: Vec<serde_json::Value> = others.into_iter().filter_map(|u| fetch_status(u).ok()).collect();
    if json {
        // Controller 0's object as always; the other controllers of a cluster under "peers".
        if !peers.is_empty() {
            v["peers"] = serde_json::Value::Array(peers);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print_status(&v);
    for p in &peers {
        println!();
        print_status(p);
    }
    Ok(())
}

fn print_status(v: &serde_json::Value) {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let health = match (v["failed"] == true, v["degraded"] == true) {
        (true, _) => "FAILED",
        (false, true) => "DEGRADED",
        _ => "healthy",
    };
    println!(
        "controller {} pid {}  {}  {} {}  {} bytes  {health}",
        v["controller"],
        v["pid"],
        s("nbd"),
        s("level"),
        s("layout"),
        v["capacity_bytes"]
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let path = m["path"].as_str().unwrap_or("-");
        let (index, state) = (m["index"].as_u64().unwrap_or(0), m["state"].as_str().unwrap_or(""));
        println!("  member {index:>2}  {state:<10}  {path}");
    }
    let e = &v["engine"];
    if e.is_object() {
        println!(
            "  engine: {} member reads, {} member writes, {} full-stripe / {} rmw / {} rcw writes, {} degraded reads",
            e["member_reads"],
            e["member_writes"],
            e["full_stripe_writes"],
            e["rmw_writes"],
            e["rcw_writes"],
            e["degraded_reads"]
        );
    }
    let n = &v["nbd_server"];
    println!("  nbd: {} connections open, {} requests, {} errors", n["connections_open"], n["requests"], n["errors"]);
    let tls = ["tls_connections", "tls_failures", "tls_refused"].map(|k| n[k].as_u64().unwrap_or(0));
    if tls.iter().any(|c| *c != 0) || s("nbd").starts_with("nbds://") {
        println!(
            "  nbd tls: {} connections, {} failed handshakes, {} plaintext clients refused",
            tls[0], tls[1], tls[2]
        );
    }
    // Latency at a glance: the operations that ran, mean and the p99 bucket bound.
    let lat: Vec<String> = v["latency"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, l)| l["count"].as_u64().unwrap_or(0) > 0)
        .map(|(op, l)| {
            format!("{op} {:.0}/{:.0}", l["mean_us"].as_f64().unwrap_or(0.0), l["p99_us_max"].as_f64().unwrap_or(0.0))
        })
        .collect();
    if !lat.is_empty() {
        println!("  latency us (mean/p99<=): {}", lat.join(", "));
    }
    if let Some(c) = v["coherency"].as_object() {
        let k = &c["counters"];
        let cache = &c["cache"];
        println!(
            "  coherency: node {} of {}, epoch {}, {} card, peers up {:#04x}",
            c["node"],
            c["nodes"],
            c["epoch"],
            c["card_kind"].as_str().unwrap_or("?"),
            c["peers_up"].as_u64().unwrap_or(0),
        );
        println!(
            "  cache: {}/{} lines of {} bytes, {} dirty, {} replicas held for peers ({} kept as bases)",
            cache["lines"],
            cache["lines_max"],
            c["line_bytes"],
            cache["dirty"],
            c["replicas"],
            c["replica_bases"].as_u64().unwrap_or(0)
        );
        let f = &c["fabric"];
        println!(
            "  fabric: {}, {} frames sent, {} received, {} dropped, {} refused, {} refused by TLS, {} peer throttles",
            if f["tls"] == true { "mutual TLS" } else { "plaintext" },
            f["sent"],
            f["received"],
            f["dropped"],
            f["refused"],
            f["tls_refused"].as_u64().unwrap_or(0),
            f["throttled"].as_u64().unwrap_or(0)
        );
        let card = &c["card"];
        let cc = &card["counters"];
        let n = |k: &str| cc[k].as_u64().unwrap_or(0);
        println!(
            "  card link: {}, {} frames sent, {} accepted; dropped: {} bad CRC, {} malformed, {} stale epoch, {} forged, \
             {} replayed",
            match card["link_auth"].as_bool() {
                Some(true) => "authenticated (MAC and replay window)",
                Some(false) => "unauthenticated",
                None => "unauthenticated (card without link_auth)",
            },
            n("frames_tx"),
            n("frames_rx"),
            n("crc_errors"),
            n("malformed"),
            n("stale_epoch"),
            n("forged"),
            n("replayed")
        );
        println!(
            "  method: {} hits, {} remote hits, {} line fills from the members, {} acquires ({} retried), {} yields",
            k["hits"], k["remote_hits"], k["member_reads"], k["acquires"], k["retries"], k["yields"]
        );
        println!(
            "          {} replications, {} lines written back in {} member writes, {} lines forwarded to peers",
            k["replications"], k["write_back_lines"], k["member_writes"], k["lines_forwarded"]
        );
        let t = &c["takeover"];
        if t["gone"].as_u64().unwrap_or(0) != 0 {
            println!(
                "  takeover: members {:#04x} (controllers {:#04x} died), {} dirty lines taken over, resync {}/{} \
                 stripes{}",
                c["live"].as_u64().unwrap_or(0),
                t["gone"].as_u64().unwrap_or(0),
                k["lines_taken_over"],
                t["resync_done"],
                t["resync_stripes"],
                if t["resync_unfinished"].as_u64().unwrap_or(0) > 0 { " (running)" } else { "" }
            );
        }
        if t["joins"].as_u64().unwrap_or(0) != 0 {
            println!(
                "  joins: {} (members {:#04x}, epoch {})",
                t["joins"],
                c["live"].as_u64().unwrap_or(0),
                c["epoch"]
            );
        }
        if let Some(e) = c["card_error"].as_str() {
            println!("  CARD ERROR: {e}");
        }
    }
    if let Some(l) = v["lease"].as_object() {
        println!(
            "  lease: {} renewals ({} failed, slowest {} us), writes allowed for {} ms more, expired peers {:#04x}",
            l["renewals"],
            l["renewals_failed"],
            l["renew_us_max"],
            l["write_deadline_in_ms"],
            l["expired"].as_u64().unwrap_or(0)
        );
    }
    if let Some(t) = v["task"].as_object() {
        let kind = t.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let state = t.get("state").and_then(|k| k.as_str()).unwrap_or("");
        println!("  task: {kind} {state} ({}/{} stripes)", t["done"], t["total"]);
    }
}
