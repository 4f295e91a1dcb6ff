//! The web console (`/console/`) in a real browser: Debian's headless Chromium driven over the
//! W3C WebDriver protocol by chromedriver, with `curl` as the HTTP client (run inside the
//! network namespace chromedriver lives in, when it lives in one).
//!
//! - `console_assets_headers_and_stats_api`: the page, its headers (CSP) and the statistics and
//!   latest-test REST endpoints, without a browser.
//! - `console_over_tls_signs_in_and_shows_reported_peers`: an in-process controller over TLS
//!   (HTTP/2) with agents simulated over gRPC; sign in through the form, peers, links,
//!   traffic, topology and latency matrix as reported, a live change, a network created in
//!   the UI. Needs no root.
//! - `console_follows_a_real_mesh`: the controller and three real agents in network
//!   namespaces, the browser next to the controller; real traffic statistics, a connectivity
//!   test started with the button, live state changes (a `down` command, an agent stopping),
//!   a network created and deleted in the UI.
//!
//! Screenshots are decoded and checked not blank, and kept in
//! `target/tmp/console-screenshots/`. Without chromium, chromium-driver or curl the browser
//! tests print why they skip, except under `CI=true` where they fail.

use std::{
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use cladnet_proto::v1 as pb;
use cladnet_tests::{
    MESH_ADMIN_TOKEN, Mesh, Nat, Process, Topology, api_checks,
    controller::{ADMIN_TOKEN, TestController},
    require_netns, site, skip_or_fail,
};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const UI: Duration = Duration::from_secs(20);

// ---- Prerequisites ----------------------------------------------------------------------------

/// Why the browser tests cannot run here, if they cannot.
fn browser_unavailable() -> Option<String> {
    for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        if !Path::new(path).exists() {
            return Some(format!(
                "{path} is missing (`apt-get install {package}`, or `cargo xtask setup`)"
            ));
        }
    }
    if Command::new("curl").arg("--version").output().is_err() {
        return Some("curl is missing (`apt-get install curl`)".into());
    }
    None
}

macro_rules! require_browser {
    ($test:literal) => {
        if let Some(reason) = browser_unavailable() {
            skip_or_fail($test, &reason);
            return;
        }
    };
}

/// A port free on this host's loopback right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ---- A tiny WebDriver client --------------------------------------------------------------------

/// Starts a program where the browser runs (this namespace, or a test host's).
type Launcher = Box<dyn Fn(&str) -> Command>;

/// chromedriver with one headless Chromium session. Dropping it ends the session (Chromium
/// quits) and kills chromedriver.
struct Browser {
    launch: Launcher,
    base: String,
    session: String,
    profile: tempfile::TempDir,
    _driver: Process,
}

impl Browser {
    /// Starts chromedriver (through `launch`) and a browser session. `insecure_certs` accepts
    /// the self-signed certificate of a TLS test controller.
    fn start(launch: Launcher, insecure_certs: bool) -> Self {
        let port = free_port();
        let profile = tempfile::tempdir().expect("profile dir");
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).expect("log");
        let mut cmd = launch(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(log);
        let driver = Process::spawn(&mut cmd).expect("start chromedriver");
        let mut browser = Self {
            launch,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            _driver: driver,
            profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while browser
            .request("GET", "/status", None)
            .map_or(true, |v| v["ready"] != true)
        {
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let user_data = browser.profile.path().join("chromium");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": insecure_certs,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--disable-extensions",
                    "--disable-crash-reporter",
                    "--disable-breakpad",
                    "--window-size=1500,1900",
                    format!("--user-data-dir={}", user_data.display()),
                ],
            },
        }}});
        let created = browser
            .request("POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("starting Chromium: {e}\n{}", browser.driver_log()));
        browser.session = created["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        browser
    }

    fn driver_log(&self) -> String {
        let log = std::fs::read_to_string(self.profile.path().join("chromedriver.log"))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// One WebDriver call; `Ok(value)` or `Err` with WebDriver's error and message.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let mut cmd = (self.launch)("curl");
        cmd.args(["-sS", "--max-time", "90", "-X", method])
            .args(["-H", "Content-Type: application/json; charset=utf-8"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        cmd.arg(format!("{}{path}", self.base));
        let mut child = cmd.spawn().map_err(|e| format!("curl: {e}"))?;
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(b) = body {
            stdin
                .write_all(b.to_string().as_bytes())
                .map_err(|e| format!("curl stdin: {e}"))?;
        }
        drop(stdin);
        let out = child.wait_with_output().map_err(|e| format!("curl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "curl {method} {path}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "{method} {path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        let value = v["value"].clone();
        match value.get("error") {
            Some(err) => Err(format!("{method} {path}: {err}: {}", value["message"])),
            None => Ok(value),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.request(method, &path, body.as_ref())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `body` (a function body; `arguments[i]` are `args`) in the page.
    fn js(&self, body: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": body, "args": args })),
        )
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT].as_str().expect("an element").to_owned()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 PNG"))
            .expect("valid base64")
    }

    /// Polls `body` until it returns something other than `null`/`false`; returns it. Panics
    /// after `within` with the last value and what the page's status line says.
    fn wait_for(&self, what: &str, within: Duration, body: &str, args: Value) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.js(body, args.clone());
            if !v.is_null() && v != false {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.js(
                    "return [document.getElementById('live').textContent, \
                     document.getElementById('status').textContent, location.href]",
                    json!([]),
                );
                panic!("timed out waiting for {what}; last {v}; page {page}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.request("DELETE", &format!("/session/{}", self.session), None);
        }
    }
}

// ---- Page probes (JavaScript returning JSON) ---------------------------------------------------

/// Every row of the peer table: host id and name, state, links `[peer, mode]`, sent and
/// received bytes (`null` without a report), newest handshake age.
const PEER_ROWS: &str = "return [...document.querySelectorAll('#peers tbody tr')].map(tr => ({
    id: tr.dataset.hostId, name: tr.dataset.hostName, state: tr.dataset.state,
    links: [...tr.querySelectorAll('.link')].map(l => [l.dataset.peer, l.dataset.mode]),
    tx: tr.querySelector('.tx').dataset.bytes === undefined ? null : Number(tr.querySelector('.tx').dataset.bytes),
    rx: tr.querySelector('.rx').dataset.bytes === undefined ? null : Number(tr.querySelector('.rx').dataset.bytes),
    txText: tr.querySelector('.tx').textContent,
    handshake: Number(tr.querySelector('.handshake').dataset.age),
}));";

/// The topology drawing: site names, nodes `[id, state]`, edges `[a, b, mode]`.
const TOPOLOGY: &str = "const s = document.querySelector('#topology svg'); if (!s) return null;
  return { sites: [...s.querySelectorAll('g.site')].map(g => g.dataset.site).sort(),
    nodes: [...s.querySelectorAll('g.node')].map(g => [g.dataset.hostId, g.dataset.state]),
    edges: [...s.querySelectorAll('path.edge')].map(p => [p.dataset.a, p.dataset.b, p.dataset.mode]) };";

/// The latency matrix: test id, completeness, cells `[src, dst, avg ms or null]`.
const MATRIX: &str = "const m = document.getElementById('matrix');
  return { id: m.dataset.testId || null, complete: m.dataset.complete === 'true',
    cells: [...m.querySelectorAll('td[data-dst]')].map(td =>
      [td.dataset.src, td.dataset.dst, td.dataset.avg === undefined ? null : Number(td.dataset.avg)]) };";

/// `true` once the peer rows match `arguments[0]`: `{name: state}`.
const STATES_ARE: &str = "const want = arguments[0];
  const rows = [...document.querySelectorAll('#peers tbody tr')];
  return rows.length === Object.keys(want).length &&
    rows.every(tr => want[tr.dataset.hostName] === tr.dataset.state);";

fn peer_rows(b: &Browser) -> Vec<Value> {
    b.js(PEER_ROWS, json!([]))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name} in {rows:?}"))
}

/// The mode of the link from `from` to `to` as the peer table shows it.
fn link_mode(rows: &[Value], from: &str, to_id: &str) -> String {
    row(rows, from)["links"]
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l[0] == to_id)
        .and_then(|l| l[1].as_str())
        .unwrap_or_else(|| panic!("{from} has no link to {to_id}: {rows:?}"))
        .to_owned()
}

/// Marks the page; [`still_same_page`] then tells whether it was never reloaded.
fn mark_page(b: &Browser) {
    b.js("window.__consoleTestMark = 'kept'; return true;", json!([]));
}

fn still_same_page(b: &Browser) -> bool {
    b.js("return window.__consoleTestMark === 'kept';", json!([])) == true
}

// ---- Screenshots ------------------------------------------------------------------------------

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// Saves the PNG as `<name>.png`, decodes it and checks it shows something: many distinct
/// colours and a luminance variance no blank or single-colour page has.
fn check_screenshot(png_bytes: &[u8], name: &str) -> PathBuf {
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png_bytes).expect("save screenshot");
    let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("frame size")];
    let info = reader.next_frame(&mut buf).expect("decodes");
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{}", path.display());
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected colour type {other:?}"),
    };
    assert!(info.width >= 800 && info.height >= 600, "{info:?}");
    let (mut sum, mut sum_sq, mut n) = (0f64, 0f64, 0f64);
    let mut colours = std::collections::HashSet::new();
    for line in buf[..info.line_size * info.height as usize].chunks(info.line_size) {
        for px in line[..info.width as usize * channels].chunks(channels) {
            let (r, g, b) = (f64::from(px[0]), f64::from(px[1]), f64::from(px[2]));
            let y = 0.299 * r + 0.587 * g + 0.114 * b;
            sum += y;
            sum_sq += y * y;
            n += 1.0;
            if colours.len() < 10_000 {
                colours.insert((px[0], px[1], px[2]));
            }
        }
    }
    let mean = sum / n;
    let variance = sum_sq / n - mean * mean;
    eprintln!(
        "screenshot {}: {}x{}, mean luminance {mean:.1}, variance {variance:.1}, {} colours",
        path.display(),
        info.width,
        info.height,
        colours.len()
    );
    assert!(
        variance > 200.0,
        "{} looks blank: variance {variance:.1}",
        path.display()
    );
    assert!(
        colours.len() > 50,
        "{} has only {} colours",
        path.display(),
        colours.len()
    );
    path
}

// ---- Without a browser --------------------------------------------------------------------------

/// One HTTP/1.1 request on a fresh connection: status, lower-cased headers, body.
async fn raw_http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn embedded_store(dir: &Path) -> Arc<dyn cladnet_store::Store> {
    Arc::new(
        cladnet_store::embedded::EmbeddedStore::open(
            &dir.join("store.redb"),
            cladnet_store::embedded::EmbeddedOptions::default(),
        )
        .await
        .expect("embedded store"),
    )
}

fn peer_stats(host_id: &str, mode: &str, tx: u64, rx: u64, handshake: i64) -> pb::PeerStats {
    pb::PeerStats {
        host_id: host_id.into(),
        mode: mode.into(),
        endpoint: "198.18.1.2:8055".into(),
        tx_bytes: tx,
        rx_bytes: rx,
        tx_packets: tx / 1000,
        rx_packets: rx / 1000,
        handshake_age_seconds: handshake,
        last_rx_age_seconds: 1,
        path_mtu: 1400,
        path: "direct".into(),
        via: String::new(),
    }
}

/// [`peer_stats`] of a link whose agent reports `path` (through the relay `via`).
fn peer_stats_path(
    host_id: &str,
    mode: &str,
    tx: u64,
    rx: u64,
    handshake: i64,
    path: &str,
    via: &str,
) -> pb::PeerStats {
    pb::PeerStats {
        path: path.into(),
        via: via.into(),
        ..peer_stats(host_id, mode, tx, rx, handshake)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_assets_headers_and_stats_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctl = TestController::start(embedded_store(dir.path()).await).await;
    let addr = ctl.addr();

    // The page and its files: no credentials needed, strict CSP, right types.
    for (path, ty) in [
        ("/console/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let (status, headers, body) = raw_http(addr, "GET", path, "").await;
        assert_eq!(status, 200, "{path}");
        assert!(
            header(&headers, "content-type").is_some_and(|v| v.starts_with(ty)),
            "{path}: {headers:?}"
        );
        let csp = header(&headers, "content-security-policy").expect("a CSP");
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        assert!(!body.is_empty());
    }
    let (_, _, html) = raw_http(addr, "GET", "/console/", "").await;
    assert!(html.contains(r#"<script src="app.js" defer></script>"#));
    let (status, headers, _) = raw_http(addr, "GET", "/console", "").await;
    assert_eq!(status, 308);
    assert_eq!(header(&headers, "location"), Some("console/"));

    // Over HTTP/2 (prior knowledge, as h2c) too, as the rest of the API.
    if let Ok(out) = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-o", "/dev/null"])
        .args(["-w", "%{http_version} %{http_code}"])
        .arg(format!("http://{addr}/console/"))
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    }

    // Statistics: admin only, stored outside the keys Watch streams follow.
    let net = api_checks::network(&ctl, "stats", "10.66.0.0/24").await;
    let token = api_checks::join_token(&ctl, &net).await;
    let a = api_checks::join(&ctl, &token, &net, "a").await;
    let b = api_checks::join(&ctl, &token, &net, "b").await;
    let stats_path = format!("/v1/cladnet/{net}/stats");
    let (status, _, _) = raw_http(addr, "GET", &stats_path, "").await;
    assert_eq!(status, 401, "statistics need the admin token");
    let (status, _, body) = raw_http(addr, "GET", &stats_path, ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["nodes"],
        Value::Null,
        "no report yet: {body}"
    );

    let mut as_b = ctl.agent(&b.session_token).await;
    let mut watch = as_b
        .watch(pb::WatchRequest {
            cladnet_id: net.clone(),
            host_id: "b".into(),
            from_revision: 0,
            batches: false,
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("snapshot").expect("an event");
    assert!(matches!(
        first.event,
        Some(pb::watch_event::Event::Snapshot(_))
    ));

    let mut as_a = ctl.agent(&a.session_token).await;
    let report = |stats: Vec<pb::PeerStats>| pb::ReportRequest {
        cladnet_id: net.clone(),
        host_id: "a".into(),
        peer_stats: stats,
        ..Default::default()
    };
    as_a.report(report(vec![peer_stats("b", "sealed", 5 << 20, 1234, 3)]))
        .await
        .expect("stats report");
    let bad = as_a
        .report(report(vec![peer_stats("b", "clear", 1, 1, 0)]))
        .await
        .expect_err("a bad mode is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("peerStats[0].mode"), "{bad:?}");
    // Nothing reached b's stream for those reports; the next peer change does.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), watch.message()).await;
    assert!(
        quiet.is_err(),
        "a stats report reached a Watch stream: {quiet:?}"
    );
    as_a.report(pb::ReportRequest {
        cladnet_id: net.clone(),
        host_id: "a".into(),
        state: "up".into(),
        ..Default::default()
    })
    .await
    .expect("state report");
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the state change arrives")
        .expect("stream")
        .expect("event");
    assert!(
        matches!(&next.event, Some(pb::watch_event::Event::PeerUpserted(p)) if p.host_id == "a" && p.state == "up"),
        "{next:?}"
    );

    let (_, _, body) = raw_http(addr, "GET", &stats_path, ADMIN_TOKEN).await;
    let stats: pb::NetworkStats = serde_json::from_str(&body).expect("NetworkStats JSON");
    assert_eq!(stats.nodes.len(), 1, "{stats:?}");
    let node = &stats.nodes[0];
    assert_eq!(node.host_id, "a");
    assert!(node.reported_at > 1_600_000_000);
    assert_eq!(node.peers.len(), 1);
    let p = &node.peers[0];
    assert_eq!((p.host_id.as_str(), p.mode.as_str()), ("b", "sealed"));
    assert_eq!((p.tx_bytes, p.rx_bytes), (5 << 20, 1234));
    assert!((3..60).contains(&p.handshake_age_seconds), "{p:?}");
    assert_eq!(p.path_mtu, 1400, "the reported path MTU is served");
    assert_eq!(
        (p.path.as_str(), p.via.as_str()),
        ("direct", ""),
        "the reported path is served"
    );
    let keys = ctl
        .controller()
        .store()
        .range("/cladnet/v1/stats/")
        .await
        .expect("range");
    assert_eq!(keys.kvs.len(), 1);
    assert!(keys.kvs[0].lease.is_some(), "stats keys expire by lease");

    // Deleting the peer deletes its statistics.
    ctl.admin(ADMIN_TOKEN)
        .await
        .delete_peer(pb::GetPeerRequest {
            cladnet_id: net.clone(),
            host_id: "a".into(),
        })
        .await
        .expect("delete peer");
    let (_, _, body) = raw_http(addr, "GET", &stats_path, ADMIN_TOKEN).await;
    assert_eq!(body, format!(r#"{{"cladnetId":"{net}"}}"#));

    // The latest connectivity test: 404 before any, then always the last one started.
    let latest = format!("/v1/test/cladnet/{net}/latest");
    let (status, _, _) = raw_http(addr, "GET", &latest, ADMIN_TOKEN).await;
    assert_eq!(status, 404);
    as_b.report(pb::ReportRequest {
        cladnet_id: net.clone(),
        host_id: "b".into(),
        state: "up".into(),
        ..Default::default()
    })
    .await
    .expect("b up");
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    let mut started = Vec::new();
    for _ in 0..3 {
        let t = admin
            .start_connectivity_test(pb::StartConnectivityTestRequest {
                cladnet_id: net.clone(),
                trial_count: 1,
            })
            .await
            .expect("start test")
            .into_inner();
        started.push(t.test_id);
    }
    let (status, _, body) = raw_http(addr, "GET", &latest, ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    let t: pb::ConnectivityTest = serde_json::from_str(&body).unwrap();
    assert_eq!(&t.test_id, started.last().unwrap());

    // Deleting the network deletes every statistic of it.
    as_b.report(pb::ReportRequest {
        cladnet_id: net.clone(),
        host_id: "b".into(),
        peer_stats: vec![peer_stats("a", "plain", 1, 1, -1)],
        ..Default::default()
    })
    .await
    .expect("b's stats");
    admin
        .delete_network(pb::GetNetworkRequest {
            cladnet_id: net.clone(),
        })
        .await
        .expect("delete network");
    let left = ctl
        .controller()
        .store()
        .range("/cladnet/v1/stats/")
        .await
        .unwrap();
    assert!(left.kvs.is_empty(), "{:?}", left.kvs);
}

// ---- TLS, simulated agents ------------------------------------------------------------------------

fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

/// Joins `node` at site `provider`/`vpc` and returns its session token.
async fn join_at(
    ctl: &TestController,
    token: &str,
    net: &str,
    node: &str,
    provider: &str,
    vpc: &str,
) -> String {
    let req = pb::JoinRequest {
        details: Some(pb::CloudInformation {
            provider_name: provider.into(),
            virtual_network_id: vpc.into(),
            ..Default::default()
        }),
        ..api_checks::join_request(net, node)
    };
    api_checks::join_signed(&mut ctl.agent(token).await, req)
        .await
        .expect("join")
        .into_inner()
        .session_token
}

fn pair(src: &str, dst: &str, avg: f64) -> pb::PairResult {
    pb::PairResult {
        source_host_id: src.into(),
        destination_host_id: dst.into(),
        min_rtt_ms: avg * 0.8,
        avg_rtt_ms: avg,
        max_rtt_ms: avg * 1.3,
        stddev_rtt_ms: avg * 0.1,
        packets_sent: 3,
        packets_received: 3,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_over_tls_signs_in_and_shows_reported_peers() {
    require_browser!("console_over_tls_signs_in_and_shows_reported_peers");
    let dir = tempfile::tempdir().expect("temp dir");
    let ctl = TestController::start(embedded_store(dir.path()).await).await;
    // The same controller also serves TLS (HTTP/2 and HTTP/1.1 by ALPN) on a second port, from
    // a runtime of its own: the browser calls below block this test's threads.
    let (cert, key) = self_signed(dir.path());
    let tls = cladnet_controller::server::tls_config(&cert, &key).expect("TLS config");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let tls_port = listener.local_addr().expect("addr").port();
    let tls_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let served = ctl.controller().clone();
    tls_rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        cladnet_controller::server::serve_tls(listener, served, tls, std::future::pending()).await
    });

    // Three simulated agents: a and b share a site, c is elsewhere; inter-site encryption.
    let mut admin = ctl.admin(ADMIN_TOKEN).await;
    admin
        .create_network(pb::Network {
            cladnet_id: "tls-net".into(),
            name: "TLS network".into(),
            ipv4_address_space: "10.67.0.0/24".into(),
            encryption: "inter-site".into(),
            ..Default::default()
        })
        .await
        .expect("create network");
    let net = "tls-net".to_owned();
    let token = api_checks::join_token(&ctl, &net).await;
    let mut agents = Vec::new();
    for (node, provider, vpc) in [
        ("a", "aws", "vpc-1"),
        ("b", "aws", "vpc-1"),
        ("c", "gcp", "vpc-2"),
    ] {
        let session = join_at(&ctl, &token, &net, node, provider, vpc).await;
        agents.push((node, ctl.agent(&session).await));
    }
    let traffic = |node: &str| -> Vec<pb::PeerStats> {
        match node {
            "a" => vec![
                peer_stats("b", "plain", 3 << 20, 1 << 20, -1),
                peer_stats_path("c", "sealed", 2 << 20, 512 << 10, 7, "relay", "b"),
            ],
            "b" => vec![
                peer_stats("a", "plain", 1 << 20, 3 << 20, -1),
                peer_stats_path("c", "sealed", 4096, 2048, 30, "unreachable", ""),
            ],
            _ => vec![
                peer_stats("a", "sealed", 512 << 10, 2 << 20, 7),
                peer_stats("b", "sealed", 2048, 4096, 30),
            ],
        }
    };
    for (node, client) in &mut agents {
        client
            .report(pb::ReportRequest {
                cladnet_id: net.clone(),
                host_id: (*node).into(),
                state: "up".into(),
                dataplane: "userspace".into(),
                dataplane_reason: "simulated".into(),
                peer_stats: traffic(node),
                ..Default::default()
            })
            .await
            .expect("report");
    }
    let test = admin
        .start_connectivity_test(pb::StartConnectivityTestRequest {
            cladnet_id: net.clone(),
            trial_count: 3,
        })
        .await
        .expect("start test")
        .into_inner();
    let rtt = |s: &str, d: &str| match (s, d) {
        ("a", "b") | ("b", "a") => 0.25,
        _ => 12.5,
    };
    for (node, client) in &mut agents {
        let results = ["a", "b", "c"]
            .iter()
            .filter(|d| **d != *node)
            .map(|d| pair(node, d, rtt(node, d)))
            .collect();
        client
            .report(pb::ReportRequest {
                cladnet_id: net.clone(),
                host_id: (*node).into(),
                test_id: test.test_id.clone(),
                test_results: results,
                ..Default::default()
            })
            .await
            .expect("test results");
    }

    let browser = Browser::start(Box::new(|p: &str| Command::new(p)), true);
    let origin = format!("https://127.0.0.1:{tls_port}");
    browser.goto(&format!("{origin}/console/"));
    // Signing in through the form.
    browser.wait_for(
        "the sign-in form",
        UI,
        "return !document.getElementById('login').hidden",
        json!([]),
    );
    browser.type_into("#token", "wrong-token-0123456789");
    browser.click("#login-form button[type=submit]");
    browser.wait_for(
        "the refusal of a wrong token",
        UI,
        "const e = document.getElementById('login-error'); return !e.hidden && e.textContent",
        json!([]),
    );
    browser.type_into("#token", ADMIN_TOKEN);
    browser.click("#login-form button[type=submit]");
    browser.wait_for(
        "three peers up",
        UI,
        STATES_ARE,
        json!([{ "a.example": "up", "b.example": "up", "c.example": "up" }]),
    );
    let protocol = browser.js(
        "return performance.getEntriesByType('navigation')[0].nextHopProtocol",
        json!([]),
    );
    assert_eq!(protocol, "h2", "the console is served over HTTP/2 with TLS");
    let stored = browser.js(
        "return [sessionStorage.getItem('cladnet.console.token'), localStorage.length, document.cookie]",
        json!([]),
    );
    assert_eq!(
        stored,
        json!([ADMIN_TOKEN, 0, ""]),
        "the token stays in the tab"
    );

    // Peer table: states, link modes per pair, traffic as reported.
    browser.wait_for(
        "traffic in the peer table",
        UI,
        "return [...document.querySelectorAll('#peers tbody td.tx')].every(td => td.dataset.bytes)",
        json!([]),
    );
    let rows = peer_rows(&browser);
    assert_eq!(link_mode(&rows, "a.example", "b"), "plain");
    assert_eq!(link_mode(&rows, "a.example", "c"), "sealed");
    assert_eq!(link_mode(&rows, "c.example", "b"), "sealed");
    assert_eq!(row(&rows, "a.example")["tx"], json!(5 << 20));
    assert_eq!(
        row(&rows, "a.example")["rx"],
        json!((1 << 20) + (512 << 10))
    );
    assert_eq!(row(&rows, "a.example")["txText"], "5.00 MiB");
    let handshake = row(&rows, "a.example")["handshake"].as_i64().unwrap();
    assert!((7..60).contains(&handshake), "{rows:?}");
    let handshake = row(&rows, "b.example")["handshake"].as_i64().unwrap();
    assert!(
        (30..90).contains(&handshake),
        "b's only sealed link: {rows:?}"
    );
    let links = browser.js(
        "return [...document.querySelectorAll('#links tbody tr')].map(tr => [tr.dataset.from, tr.dataset.to, tr.dataset.mode])",
        json!([]),
    );
    assert_eq!(links.as_array().map(Vec::len), Some(6), "{links}");
    // The path column: as each link's agent reported it, the relay by its name.
    let paths = browser.js(
        "return Object.fromEntries([...document.querySelectorAll('#links tbody tr')].map(tr => [tr.dataset.from + '>' + tr.dataset.to, tr.querySelector('td.path').textContent]))",
        json!([]),
    );
    assert_eq!(paths["a>c"], "relay via b.example", "{paths}");
    assert_eq!(paths["b>c"], "unreachable", "{paths}");
    assert_eq!(paths["a>b"], "direct", "{paths}");
    assert_eq!(paths["c>a"], "direct", "{paths}");

    // Topology: two sites, three edges, one of them plain.
    let topo = browser.wait_for("the topology", UI, TOPOLOGY, json!([]));
    assert_eq!(topo["sites"], json!(["aws / vpc-1", "gcp / vpc-2"]));
    assert_eq!(topo["nodes"].as_array().map(Vec::len), Some(3));
    let edges = topo["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 3, "{topo}");
    let plain: Vec<_> = edges.iter().filter(|e| e[2] == "plain").collect();
    assert_eq!(plain.len(), 1, "{topo}");
    assert_eq!(
        {
            let mut ends = [plain[0][0].as_str().unwrap(), plain[0][1].as_str().unwrap()];
            ends.sort_unstable();
            ends
        },
        ["a", "b"]
    );

    // The latency matrix of the test.
    let matrix = browser.wait_for(
        "the latency matrix",
        UI,
        &format!("const v = (() => {{ {MATRIX} }})(); return v.complete && v.cells.length === 6 ? v : null;"),
        json!([]),
    );
    assert_eq!(matrix["id"], test.test_id.as_str());
    for cell in matrix["cells"].as_array().unwrap() {
        let (s, d) = (cell[0].as_str().unwrap(), cell[1].as_str().unwrap());
        assert_eq!(cell[2].as_f64(), Some(rtt(s, d)), "{cell}");
    }
    check_screenshot(&browser.screenshot(), "tls-reported-peers");

    // Live: a state change shows without a reload.
    mark_page(&browser);
    agents[2]
        .1
        .report(pb::ReportRequest {
            cladnet_id: net.clone(),
            host_id: "c".into(),
            state: "down".into(),
            ..Default::default()
        })
        .await
        .expect("c down");
    browser.wait_for(
        "c down",
        UI,
        STATES_ARE,
        json!([{ "a.example": "up", "b.example": "up", "c.example": "down" }]),
    );
    assert!(still_same_page(&browser), "updated without a reload");

    // A network created in the UI with the recommended address space.
    browser.click("#new-network");
    let cidr = browser.wait_for(
        "the recommended address space",
        UI,
        "return document.getElementById('create-cidr').value || null",
        json!([]),
    );
    let cidr = cidr.as_str().expect("a CIDR").to_owned();
    let recommended: ipnet::Ipv4Net = cidr.parse().expect("a CIDR");
    let host_subnet: ipnet::Ipv4Net = "192.168.1.0/24".parse().unwrap();
    assert!(
        !recommended.contains(&host_subnet.network())
            && !host_subnet.contains(&recommended.network()),
        "{recommended} avoids the peers' subnet"
    );
    browser.type_into("#create-id", "from-ui");
    browser.type_into("#create-name", "Made in the console");
    browser.click("#create-encryption option[value=never]");
    browser.click("#create-submit");
    browser.wait_for(
        "the new network selected",
        UI,
        "return document.getElementById('network').dataset.id === 'from-ui' && \
         document.querySelector('#networks li.selected')?.dataset.id === 'from-ui'",
        json!([]),
    );
    let made = admin
        .get_network(pb::GetNetworkRequest {
            cladnet_id: "from-ui".into(),
        })
        .await
        .expect("the network exists")
        .into_inner();
    assert_eq!(made.ipv4_address_space, cidr);
    assert_eq!(made.name, "Made in the console");
    assert_eq!(made.encryption, "never");
    assert!(still_same_page(&browser));

    drop(browser);
    tls_rt.shutdown_background();
}

// ---- A real mesh ------------------------------------------------------------------------------------

/// REST on the controller, from its own host (curl inside its namespace).
fn rest(mesh: &Mesh, path: &str) -> Value {
    let out = mesh
        .topo
        .host("ctl")
        .exec([
            "curl",
            "-sS",
            "-f",
            "-H",
            &format!("Authorization: Bearer {MESH_ADMIN_TOKEN}"),
            &format!("http://127.0.0.1:{}{path}", cladnet_tests::CONTROLLER_PORT),
        ])
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("GET {path}: {e}: {out}"))
}

#[test]
fn console_follows_a_real_mesh() {
    require_netns!();
    require_browser!("console_follows_a_real_mesh");
    let topo = Topology::builder()
        .cloud("aws", "192.168.1.0/24", Nat::Masquerade)
        .host("aws", "a1")
        .host("aws", "a2")
        .cloud("gcp", "192.168.1.0/24", Nat::OneToOne)
        .host("gcp", "g1")
        .cloud("ops", "172.16.0.0/24", Nat::OneToOne)
        .host("ops", "ctl")
        .build()
        .expect("topology");
    let mut mesh = Mesh::start(
        topo,
        "ctl",
        "10.82.0.0/24",
        &[
            "--encryption",
            "inter-site",
            "--rule-type",
            "cost-prioritized",
        ],
    );
    let hosts = ["a1", "a2", "g1"];
    mesh.start_agent("a1", site("aws", "vpc-a"), &[]);
    mesh.start_agent("a2", site("aws", "vpc-a"), &[]);
    mesh.start_agent("g1", site("gcp", "vpc-g"), &[]);
    mesh.wait_mesh(&hosts, Duration::from_secs(30));
    let id = |h: &str| -> String {
        mesh.peer(h).expect("peer")["hostId"]
            .as_str()
            .expect("hostId")
            .to_owned()
    };
    let (a1, a2, g1) = (id("a1"), id("a2"), id("g1"));

    // The browser runs next to the controller, in its namespace.
    let ctl_ns = mesh.topo.host("ctl").netns().name().to_owned();
    let launch: Launcher = Box::new(move |program: &str| {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ctl_ns}"))
            .arg("--")
            .arg(program);
        cmd
    });
    let browser = Browser::start(launch, false);
    let origin = format!("http://127.0.0.1:{}", cladnet_tests::CONTROLLER_PORT);
    browser.goto(&format!(
        "{origin}/console/#token={MESH_ADMIN_TOKEN}&net={}",
        mesh.net
    ));
    let everyone_up = json!([{ "a1": "up", "a2": "up", "g1": "up" }]);
    browser.wait_for("three peers up", UI, STATES_ARE, everyone_up.clone());
    let href = browser.js("return location.href", json!([]));
    assert!(
        !href.as_str().unwrap().contains("token="),
        "the token left the address bar: {href}"
    );
    let rows = peer_rows(&browser);
    assert_eq!(link_mode(&rows, "a1", &a2), "plain", "same site");
    assert_eq!(link_mode(&rows, "a2", &a1), "plain");
    assert_eq!(link_mode(&rows, "a1", &g1), "sealed", "across sites");
    assert_eq!(link_mode(&rows, "g1", &a2), "sealed");

    // Traffic and handshakes as the agents report them (every 10 s).
    browser.wait_for(
        "traffic statistics from every agent",
        Duration::from_secs(40),
        "const rows = [...document.querySelectorAll('#peers tbody tr')];
         return rows.length === 3 && rows.every(tr => Number(tr.querySelector('.tx').dataset.bytes) > 0
           && Number(tr.querySelector('.rx').dataset.bytes) > 0);",
        json!([]),
    );
    let rows = peer_rows(&browser);
    let g1_handshake = row(&rows, "g1")["handshake"].as_i64().unwrap();
    assert!(
        (0..120).contains(&g1_handshake),
        "g1's sealed links had handshakes: {rows:?}"
    );
    let stats = rest(&mesh, &format!("/v1/cladnet/{}/stats", mesh.net));
    let nodes = stats["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{stats}");
    for node in nodes {
        let peers = node["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), 2, "{node}");
        for p in peers {
            let want = if [&a1, &a2].contains(&&node["hostId"].as_str().unwrap().to_owned())
                && [&a1, &a2].contains(&&p["hostId"].as_str().unwrap().to_owned())
            {
                "plain"
            } else {
                "sealed"
            };
            assert_eq!(p["mode"], want, "{node}");
        }
    }

    // Topology: two sites, the in-site edge plain, the others sealed.
    let topo = browser.js(TOPOLOGY, json!([]));
    assert_eq!(topo["sites"], json!(["aws / vpc-a", "gcp / vpc-g"]));
    let mut modes: Vec<&str> = topo["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e[2].as_str().unwrap())
        .collect();
    modes.sort_unstable();
    assert_eq!(modes, ["plain", "sealed", "sealed"], "{topo}");

    // A connectivity test from the button; the matrix fills in.
    browser.click("#run-test");
    let matrix = browser.wait_for(
        "a complete latency matrix",
        Duration::from_secs(30),
        &format!(
            "const v = (() => {{ {MATRIX} }})(); \
             return v.complete && v.cells.length === 6 && v.cells.every(c => c[2] > 0) ? v : null;"
        ),
        json!([]),
    );
    let latest = rest(&mesh, &format!("/v1/test/cladnet/{}/latest", mesh.net));
    assert_eq!(matrix["id"], latest["testId"], "{latest}");
    let shot = check_screenshot(&browser.screenshot(), "mesh");
    eprintln!("console screenshot: {}", shot.display());

    // Live updates, no reload: a `down` command, then an agent that stops.
    mark_page(&browser);
    mesh.cli(&["command", &mesh.net, "down", "--host", &g1]);
    browser.wait_for(
        "g1 down",
        UI,
        STATES_ARE,
        json!([{ "a1": "up", "a2": "up", "g1": "down" }]),
    );
    let status = mesh.signal_agent("a2", "TERM");
    assert!(status.success(), "{status}");
    browser.wait_for(
        "a2 released",
        UI,
        STATES_ARE,
        json!([{ "a1": "up", "a2": "released", "g1": "down" }]),
    );
    assert!(
        still_same_page(&browser),
        "the table changed without a reload"
    );

    // Create a network in the UI, then delete it with the confirmation.
    browser.click("#new-network");
    let cidr = browser.wait_for(
        "the recommended address space",
        UI,
        "return document.getElementById('create-cidr').value || null",
        json!([]),
    );
    browser.type_into("#create-id", "console-made");
    browser.click("#create-submit");
    browser.wait_for(
        "the new network selected",
        UI,
        "return document.getElementById('network').dataset.id === 'console-made'",
        json!([]),
    );
    let shown: Value =
        serde_json::from_str(&mesh.cli(&["--json", "network", "show", "console-made"]))
            .expect("network JSON");
    assert_eq!(shown["ipv4AddressSpace"], cidr, "{shown}");
    browser.click("#delete-network");
    browser.wait_for(
        "the confirmation",
        UI,
        "return !document.getElementById('delete-confirm').hidden",
        json!([]),
    );
    browser.click("#delete-yes");
    browser.wait_for(
        "the network gone from the list",
        UI,
        "return !document.querySelector('#networks li[data-id=\"console-made\"]')",
        json!([]),
    );
    assert!(
        mesh.try_cli(&["network", "show", "console-made"]).is_err(),
        "deleted through the console"
    );
    assert!(still_same_page(&browser));
    drop(browser);
}
