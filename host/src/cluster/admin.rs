//! The admin HTTP endpoint of a controller: GET /status (JSON), GET /metrics (Prometheus text),
//! POST /scrub[?repair=1] and POST /rebuild?member=I[&replacement=PATH] start maintenance tasks
//! whose progress appears in /status. Also the small HTTP client the CLI uses to reach it.

use super::controller::ControllerState;
use super::ClusterError;
use crate::raid::member::Member;
use crate::raid::rebuild::{check_replacement, prepare_replacement, rebuild};
use crate::raid::scrub::scrub;
use crate::raid::MemberState;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A maintenance task and its progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Task {
    /// "scrub" or "rebuild".
    pub kind: String,
    /// "running", "done" or "failed".
    pub state: String,
    /// Stripes done.
    pub done: u64,
    /// Stripes in all.
    pub total: u64,
    /// The task's report when done.
    pub result: Option<serde_json::Value>,
    /// The error when failed.
    pub error: Option<String>,
}

/// A running admin endpoint.
pub struct Admin {
    /// Address served.
    pub addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// With TLS: the front on `addr` (the plain endpoint then listens on a loopback port).
    front: Option<super::admin_tls::Front>,
}

impl Admin {
    /// Stops serving and waits for the threads.
    pub fn stop(mut self) {
        if let Some(f) = self.front.take() {
            f.stop();
        }
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The endpoint's URL: `https://ADDR` with TLS, `http://ADDR` without.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.front.is_some() { "https" } else { "http" }, self.addr)
    }
}

/// Serves the endpoint for `state` on `listener`; with `tls`, over HTTPS.
pub fn spawn(
    listener: std::net::TcpListener,
    state: Arc<ControllerState>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Admin, ClusterError> {
    let addr = listener.local_addr().map_err(|source| ClusterError::Bind { addr: "admin".into(), source })?;
    let bind_err = |source| ClusterError::Bind { addr: addr.to_string(), source };
    // With TLS the plain endpoint moves to a loopback port only the front uses.
    let (plain, front) = match tls {
        None => (listener, None),
        Some(config) => {
            let plain = std::net::TcpListener::bind("127.0.0.1:0").map_err(bind_err)?;
            let plain_addr = plain.local_addr().map_err(bind_err)?;
            let front = super::admin_tls::Front::start(listener, plain_addr, config).map_err(bind_err)?;
            (plain, Some(front))
        }
    };
    let server = tiny_http::Server::from_listener(plain, None)
        .map_err(|e| ClusterError::Bind { addr: addr.to_string(), source: std::io::Error::other(e.to_string()) })?;
    let addr = if front.is_some() { addr } else { server.server_addr().to_ip().unwrap_or(addr) };
    if !addr.ip().is_loopback() && front.is_none() {
        eprintln!(
            "amf: controller {}: WARNING: the admin endpoint http://{addr} is reachable beyond this machine \
             without TLS: status and metrics are open to whoever reaches it, and the bearer token of \
             its changes crosses the network in the clear; keep it on a management network",
            state.index
        );
    }
    let server = Arc::new(server);
    let srv = server.clone();
    let thread = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for rq in srv.incoming_requests() {
                let auth =
                    rq.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str().to_string());
                let (code, ctype, body) = match (rq.method(), authorized(&state, auth.as_deref())) {
                    (tiny_http::Method::Post, Err(why)) => json_error(401, why),
                    _ => route(&state, rq.method(), rq.url()),
                };
                let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes());
                let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
                if let Ok(h) = header {
                    resp = resp.with_header(h);
                }
                let _ = rq.respond(resp);
            }
        })
        .map_err(|source| ClusterError::Bind { addr: addr.to_string(), source })?;
    Ok(Admin { addr, server, thread: Some(thread), front })
}

/// Where `amf cluster` keeps the admin token of a group: readable by whoever may change the group.
pub fn admin_token_path(dir: &Path) -> PathBuf {
    dir.join("run").join("admin-token")
}

/// The group's admin token, if one was made.
pub fn load_admin_token(dir: &Path) -> Option<String> {
    std::fs::read_to_string(admin_token_path(dir)).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

/// Makes a fresh random admin token for the group (mode 0600), replacing any old one.
pub fn create_admin_token(dir: &Path) -> Result<String, ClusterError> {
    write_secret(&admin_token_path(dir), 32)
}

/// Writes `bytes` random bytes from the OS as hexadecimal to a new file at `path` that only its
/// owner can read (replacing any file there), and returns the text.
pub fn write_secret(path: &Path, bytes: usize) -> Result<String, ClusterError> {
    use rand::RngCore;
    use std::os::unix::fs::OpenOptionsExt;
    let file_err = |source| ClusterError::File { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(file_err)?;
    }
    let mut raw = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let text: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(file_err)?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(file_err)?;
    Ok(text)
}

/// Mutating requests need `Authorization: Bearer TOKEN` with the group's token (compared in
/// constant time); without a configured token they are refused.
fn authorized(state: &ControllerState, header: Option<&str>) -> Result<(), String> {
    let Some(want) = state.admin_token.as_deref() else {
        return Err(format!("no admin token is configured ({} is missing)", admin_token_path(&state.dir).display()));
    };
    let got = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).unwrap_or("");
    let same = got.len() == want.len() && got.bytes().zip(want.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
    if same {
        Ok(())
    } else {
        Err(format!(
            "changing the group needs Authorization: Bearer <the token in {}>",
            admin_token_path(&state.dir).display()
        ))
    }
}

/// A replacement named over the admin endpoint must be in the group folder or listed, one path a
/// line, in DIR/replacements.allow: never any file the process could open.
fn replacement_allowed(dir: &Path, replacement: &str) -> Result<(), String> {
    let refuse = |why: String| Err(format!("replacement {replacement} {why}"));
    let Ok(target) = std::fs::canonicalize(replacement) else {
        return refuse("does not exist".into());
    };
    if std::fs::canonicalize(dir).is_ok_and(|d| target.starts_with(d)) {
        return Ok(());
    }
    let list = dir.join("replacements.allow");
    let allowed = std::fs::read_to_string(&list).unwrap_or_default().lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#') && std::fs::canonicalize(l).is_ok_and(|p| p == target)
    });
    if allowed {
        return Ok(());
    }
    refuse(format!("is outside the group folder and not listed in {}", list.display()))
}

fn query<'a>(url: &'a str, key: &str) -> Option<&'a str> {
    url.split_once('?')?.1.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn json_error(code: u16, msg: String) -> (u16, &'static str, String) {
    (code, "application/json", serde_json::json!({ "error": msg }).to_string())
}

/// Status document of a controller.
pub fn status_json(state: &ControllerState) -> serde_json::Value {
    let task = state.task.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut v = match &state.array {
        Some(a) => group_json(state, a),
        None => serde_json::json!({
            "controller": state.index,
            "pid": std::process::id(),
            "dir": state.dir.display().to_string(),
            "nbd": state.nbd_uri,
            "capacity_bytes": state.core.as_ref().map(|a| a.capacity()),
            "nbd_server": &*state.nbd,
        }),
    };
    v["task"] = serde_json::to_value(task).unwrap_or_default();
    v["latency"] = crate::metrics::summary();
    if let Some(core) = &state.core {
        v["coherency"] = core.status();
    }
    if let Some(lease) = &state.lease {
        v["lease"] = lease.json();
    }
    v
}

fn group_json(state: &ControllerState, a: &crate::raid::Array) -> serde_json::Value {
    let sb = a.superblock();
    serde_json::json!({
        "controller": state.index,
        "pid": std::process::id(),
        "dir": state.dir.display().to_string(),
        "nbd": state.nbd_uri,
        "uuid": sb.uuid_string(),
        "level": sb.level,
        "layout": sb.level.layout(),
        "chunk_bytes": sb.chunk_bytes,
        "capacity_bytes": a.capacity(),
        "stripes": a.geometry().stripes(),
        "parity_kernel": a.kernel(),
        "degraded": !a.degraded_members().is_empty(),
        "failed": !a.alive(),
        "members": a.member_status(),
        "events": sb.events,
        "resynced_stripes_at_start": state.resynced_stripes,
        "dirty_regions": a.bitmap().dirty_regions().len(),
        "engine": &a.stats,
        "nbd_server": &*state.nbd,
    })
}

fn metrics(state: &ControllerState) -> String {
    let mut doc = crate::metrics::Document::new(state.index);
    if let Some(a) = &state.array {
        doc.counters("engine", serde_json::to_value(&a.stats).unwrap_or_default());
    }
    doc.counters("nbd", serde_json::to_value(&*state.nbd).unwrap_or_default());
    if let Some(core) = &state.core {
        let st = core.status();
        doc.counters("coherency", st["counters"].clone());
        doc.counters("fabric", st["fabric"].clone());
        // The card's own counters (frames, drops by cause, stale epochs) and the cache's shape.
        doc.counters("card", st["card"]["counters"].clone());
        for (key, help) in [("lines", "Lines cached"), ("dirty", "Dirty lines cached")] {
            doc.gauge(&format!("cache_{key}"), help, st["cache"][key].as_i64().unwrap_or(0));
        }
        doc.gauge("replicas_held", "Peers' dirty lines held as replicas", st["replicas"].as_i64().unwrap_or(0));
    }
    if let Some(a) = &state.array {
        doc.gauge("members_degraded", "Members not active", a.degraded_members().len() as i64);
        doc.gauge("group_failed", "1 when more members are out than the level tolerates", !a.alive() as i64);
    }
    if let Some(t) = state.task.lock().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|t| t.state == "running") {
        doc.gauge(&format!("{}_done_stripes", t.kind), "Progress of the running maintenance task", t.done as i64);
        doc.gauge(&format!("{}_total_stripes", t.kind), "Stripes the running maintenance task covers", t.total as i64);
    }
    doc.finish()
}

fn route(state: &Arc<ControllerState>, method: &tiny_http::Method, url: &str) -> (u16, &'static str, String) {
    let path = url.split('?').next().unwrap_or("");
    match (method, path) {
        (tiny_http::Method::Get, "/status") => (200, "application/json", status_json(state).to_string()),
        (tiny_http::Method::Get, "/metrics") => {
            (200, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics(state))
        }
        (tiny_http::Method::Get, "/card") => match &state.core {
            Some(core) => match core.card_state() {
                Ok(v) => (200, "application/json", v.to_string()),
                Err(e) => json_error(503, e),
            },
            None => json_error(404, "this controller runs without a card (one controller)".into()),
        },
        (tiny_http::Method::Get, "/regs") => match &state.core {
            Some(core) => match core.card_registers() {
                Ok(v) => (200, "application/json", v.to_string()),
                Err(e) => json_error(503, e),
            },
            None => json_error(404, "this controller runs without a card (one controller)".into()),
        },
        (tiny_http::Method::Post, "/fail") => {
            let Some(member) = query(url, "member").and_then(|m| m.parse::<usize>().ok()) else {
                return json_error(400, "fail needs ?member=INDEX".into());
            };
            let Some(a) = state.array.as_ref() else {
                return json_error(409, "this controller has no members".into());
            };
            // On a cluster the controller's loop records it under the group resource and every
            // controller stops using the member before its next member I/O.
            match a.fail_by_operator(member) {
                Ok(()) => (200, "application/json", serde_json::json!({ "failed": member }).to_string()),
                Err(e) => json_error(409, e.to_string()),
            }
        }
        (tiny_http::Method::Post, "/scrub" | "/rebuild") if state.array.is_none() => {
            json_error(409, "this controller has no members".into())
        }
        (tiny_http::Method::Post, "/scrub") => {
            let repair = query(url, "repair").is_some_and(|v| v == "1" || v == "true");
            start_task(state, "scrub", move |st, progress| {
                let a = st.array.as_ref().ok_or("no members here")?;
                // A cluster's controller scrubs each stripe under its lock from every peer.
                let r = match &st.core {
                    Some(core) => core.scrub(a, repair, progress)?,
                    None => scrub(a, repair, progress).map_err(|e| e.to_string())?,
                };
                Ok(serde_json::to_value(r).unwrap_or_default())
            })
        }
        (tiny_http::Method::Post, "/rebuild") => {
            let Some(member) = query(url, "member").and_then(|m| m.parse::<usize>().ok()) else {
                return json_error(400, "rebuild needs ?member=INDEX".into());
            };
            let replacement = query(url, "replacement").map(|p| p.replace("%2F", "/"));
            if let Some(r) = &replacement {
                if let Err(e) = replacement_allowed(&state.dir, r) {
                    return json_error(403, e);
                }
            }
            // Every precondition before anything changes (and before the 202).
            if let Some(a) = state.array.as_ref() {
                let resuming = a.member_status().get(member).is_some_and(|m| m.state == MemberState::Rebuilding);
                if !(resuming && replacement.is_none()) {
                    if let Err(e) = check_replacement(a, member, replacement.as_deref().map(std::path::Path::new)) {
                        return json_error(409, e.to_string());
                    }
                }
            }
            start_rebuild(state, member, replacement)
        }
        _ => json_error(404, format!("no route {method} {path}")),
    }
}

/// How long a rebuild waits for the lease record to name it (a few renewals).
const REBUILD_RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts (or, with no replacement and the member Rebuilding, resumes) the rebuild of `member`
/// as this controller's task; its lease record says so while it runs, so that a survivor
/// resumes it if this controller dies.
pub fn start_rebuild(
    state: &Arc<ControllerState>,
    member: usize,
    replacement: Option<String>,
) -> (u16, &'static str, String) {
    start_task(state, "rebuild", move |st, progress| {
        let m = replacement_member(st, member, replacement.as_deref())?;
        let a = st.array.as_ref().ok_or("no members here")?;
        let lease = st.lease.as_ref();
        if let Some(l) = lease {
            let marker = (member as u8).saturating_add(1);
            l.rebuilding.store(marker, std::sync::atomic::Ordering::Relaxed);
            // The record names the rebuild before it writes anything: a controller that dies
            // a moment after starting it leaves a record the survivors resume from.
            let until = std::time::Instant::now() + REBUILD_RECORD_WAIT;
            while l.rebuilding_written.load(std::sync::atomic::Ordering::Relaxed) != marker {
                if std::time::Instant::now() >= until {
                    eprintln!(
                        "amf: the lease record does not name the rebuild of member {member} yet; rebuilding anyway \
                         (a survivor resumes it only once it does)"
                    );
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        // On a cluster every controller learns of the new member through the group.
        let r = match &st.core {
            Some(core) => core.rebuild(a, member, m, progress),
            None => rebuild(a, member, m, progress).map_err(|e| e.to_string()),
        };
        if let Some(l) = lease {
            l.rebuilding.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(serde_json::to_value(r?).unwrap_or_default())
    })
}

/// After controllers of `dead` left the membership: the lowest survivor resumes a rebuild one
/// of them was running (its last lease record says which member), from the point recorded in
/// the superblocks. Returns the member resumed.
pub fn resume_orphaned_rebuild(state: &Arc<ControllerState>, dead: u8, lowest: bool) -> Option<usize> {
    let lease = state.lease.as_ref()?;
    let array = state.array.as_ref()?;
    if !lowest {
        return None;
    }
    let member = (0..8usize)
        .filter(|d| dead & (1 << d) != 0)
        .find_map(|d| lease.peers_rebuilding.get(d)?.load(std::sync::atomic::Ordering::Relaxed).checked_sub(1))?
        as usize;
    if array.member_status().get(member)?.state != MemberState::Rebuilding {
        return None;
    }
    // A live controller's record naming it: that one runs it (started again by an operator).
    let live_runs = (0..8usize).filter(|p| dead & (1 << p) == 0).any(|p| {
        lease
            .peers_rebuilding
            .get(p)
            .is_some_and(|r| r.load(std::sync::atomic::Ordering::Relaxed) as usize == member + 1)
    });
    if live_runs {
        return None;
    }
    let (code, _, _) = start_rebuild(state, member, None);
    (code == 202).then_some(member)
}

/// Opens or creates the member a rebuild writes to: the given path, else DIR/member-NN.img
/// created afresh (None resumes a rebuild in progress).
pub fn replacement_member(st: &ControllerState, index: usize, path: Option<&str>) -> Result<Option<Member>, String> {
    let array = st.array.as_ref().ok_or("no members here")?;
    let resuming = array.member_status().get(index).is_some_and(|m| m.state == MemberState::Rebuilding);
    if resuming && path.is_none() {
        return Ok(None);
    }
    prepare_replacement(array, &st.dir, index, path.map(std::path::Path::new)).map(Some).map_err(|e| e.to_string())
}

type TaskFn = dyn FnOnce(&ControllerState, &dyn Fn(u64, u64)) -> Result<serde_json::Value, String> + Send;

fn start_task(
    state: &Arc<ControllerState>,
    kind: &str,
    f: impl FnOnce(&ControllerState, &dyn Fn(u64, u64)) -> Result<serde_json::Value, String> + Send + 'static,
) -> (u16, &'static str, String) {
    {
        let mut t = state.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = t.as_ref().filter(|t| t.state == "running") {
            return json_error(409, format!("a {} is already running", t.kind));
        }
        *t = Some(Task { kind: kind.into(), state: "running".into(), done: 0, total: 0, result: None, error: None });
    }
    let st = state.clone();
    let f: Box<TaskFn> = Box::new(f);
    std::thread::spawn(move || {
        let progress = |done: u64, total: u64| {
            if let Some(t) = st.task.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                t.done = done;
                t.total = total;
            }
        };
        let r = f(&st, &progress);
        if let Some(t) = st.task.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            match r {
                Ok(v) => {
                    t.state = "done".into();
                    t.result = Some(v);
                }
                Err(e) => {
                    t.state = "failed".into();
                    t.error = Some(e);
                }
            }
        }
    });
    (202, "application/json", serde_json::json!({ "started": kind }).to_string())
}

/// Waits for a running task to end (shutdown lets a rebuild or scrub reach a clean point).
pub fn wait_for_task(state: &ControllerState) {
    loop {
        let running =
            state.task.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|t| t.state == "running");
        if !running {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The environment variable naming the CA certificate (PEM) an `https://` admin endpoint's
/// certificate must chain to.
pub const ADMIN_CA_ENV: &str = "AMF_ADMIN_CA";

/// Minimal HTTP/1.0 client for the CLI (`http://` or, trusting the CA in `$AMF_ADMIN_CA`,
/// `https://`): returns (status, body).
pub fn request(base: &str, method: &str, path: &str, token: Option<&str>) -> Result<(u16, String), ClusterError> {
    let ca = std::env::var_os(ADMIN_CA_ENV).map(PathBuf::from);
    request_with_ca(base, method, path, token, ca.as_deref())
}

/// [`request`] trusting `ca` for an `https://` endpoint.
pub fn request_with_ca(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    ca: Option<&Path>,
) -> Result<(u16, String), ClusterError> {
    let err = |detail: String| ClusterError::Admin { url: base.to_string(), detail };
    let https = base.starts_with("https://");
    let hostport = base.strip_prefix("https://").or_else(|| base.strip_prefix("http://")).unwrap_or(base);
    let hostport = hostport.trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).map_err(|e| err(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| err(e.to_string()))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.0\r\nHost: {hostport}\r\n{auth}Content-Length: 0\r\n\r\n");
    let mut resp = String::new();
    if https {
        let ca = ca.ok_or_else(|| {
            err(format!("an https endpoint: set {ADMIN_CA_ENV} to the CA certificate (PEM) that signed it"))
        })?;
        let config = crate::tls::client_config(ca, None).map_err(|e| err(e.to_string()))?;
        let host = hostport.rsplit_once(':').map(|(h, _)| h).unwrap_or(hostport).trim_matches(['[', ']']);
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| err(e.to_string()))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(|e| err(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, s);
        tls.write_all(req.as_bytes()).map_err(|e| err(format!("TLS: {e}")))?;
        tls.flush().map_err(|e| err(format!("TLS: {e}")))?;
        // The front ends an HTTP/1.0 exchange with close_notify; a peer that just closes is
        // taken as the end too, and an answer cut short is caught by its Content-Length.
        match tls.read_to_string(&mut resp) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !resp.is_empty() => {}
            Err(e) => return Err(err(format!("TLS: {e}"))),
        }
    } else {
        s.write_all(req.as_bytes()).map_err(|e| err(e.to_string()))?;
        s.read_to_string(&mut resp).map_err(|e| err(e.to_string()))?;
    }
    parse_response(&resp).map_err(err)
}

/// Splits an HTTP answer into (status, body). An answer shorter than its Content-Length was
/// cut off (a peer that closed early, over TLS without close_notify too) and is an error.
fn parse_response(resp: &str) -> Result<(u16, String), String> {
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("malformed HTTP response")?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("malformed HTTP status line")?;
    let length = head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
    });
    match length {
        Some(n) if body.len() < n => Err(format!("the answer was cut off: {} of {n} bytes", body.len())),
        Some(n) => Ok((code, body.get(..n).ok_or("the answer's length falls inside a character")?.to_string())),
        None => Ok((code, body.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    /// An answer is taken whole or refused: a body short of its Content-Length was cut off.
    #[test]
    fn answers_shorter_than_their_length_are_refused() {
        let whole = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\ncontent-length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(parse_response(whole), Ok((200, "{\"a\":1}".to_string())));
        let cut = "HTTP/1.0 200 OK\r\nContent-Length: 70\r\n\r\n{\"a\":1}";
        assert!(parse_response(cut).unwrap_err().contains("cut off: 7 of 70"));
        let no_length = "HTTP/1.0 401 Unauthorized\r\n\r\nno token";
        assert_eq!(parse_response(no_length), Ok((401, "no token".to_string())));
        assert!(parse_response("HTTP/1.0 200 OK\r\n").is_err());
        assert!(parse_response("garbage\r\n\r\n").is_err());
    }
}
