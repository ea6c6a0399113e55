//! Test harness: the real `switchyard` binary on loopback ports, with a temporary data dir,
//! and a small blocking admin client.
#![allow(dead_code)]

pub mod upstream;

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A loopback port nothing listens on, for a gateway to bind.
///
/// Picked below the kernel's ephemeral range and handed out once per test process. A port
/// from `bind(0)` is ephemeral: once released, it can become the source port of an outgoing
/// connection (a gateway's own, to a fake upstream) before the gateway binds it, and a later
/// `bind(0)` may hand it out again. Ports below the range are never given to outgoing
/// connections; the counter, started at a point that depends on the process id, keeps tests
/// of one process (which run in parallel) apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if low <= FIRST + 1_000 {
        return TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let span = low - FIRST;
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let port = FIRST + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port in {FIRST}..{low}");
}

/// A process's resident memory (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub proxy_port: u16,
    pub admin_port: u16,
    child: Option<Child>,
    pub http: Client,
    extra_config: String,
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Starts a gateway with an empty store.
    pub fn start() -> Gateway {
        Gateway::start_with("")
    }

    /// Starts a gateway; `extra` is appended to the generated YAML config.
    pub fn start_with(extra: &str) -> Gateway {
        Gateway::start_full(extra, &[])
    }

    /// Starts a gateway with extra config and environment variables.
    pub fn start_full(extra: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let mut gw = Gateway {
            dir,
            proxy_port: free_port(),
            admin_port: free_port(),
            child: None,
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            extra_config: extra.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        gw.spawn();
        gw
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("switchyard.yaml")
    }

    fn write_config(&self) {
        let cfg = format!(
            "data_dir: {data}\n{threads}proxy:\n  listen: [\"127.0.0.1:{p}\"]\nadmin:\n  listen: \"127.0.0.1:{a}\"\n  token: \"{ADMIN_TOKEN}\"\nlog: {{format: json, level: info}}\n{shutdown}{extra}\n",
            data = self.data_dir().display(),
            p = self.proxy_port,
            a = self.admin_port,
            extra = self.extra_config,
            threads = if self.extra_config.contains("threads:") { "" } else { "threads: 2\n" },
            shutdown = if self.extra_config.contains("shutdown:") { "" } else { "shutdown: {grace_period_s: 1, shutdown_timeout_s: 1}\n" },
        );
        std::fs::write(self.config_path(), cfg).unwrap();
    }

    fn spawn(&mut self) {
        self.write_config();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stdout.log"))
            .unwrap();
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stderr.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(self.config_path())
            .envs(self.env.iter().cloned())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn switchyard");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let admin = self.http.get(self.admin_url("/healthz")).send();
            let proxy = self.http.get(self.proxy_url("/readyz")).send();
            if admin.is_ok_and(|r| r.status() == 200) && proxy.is_ok_and(|r| r.status() == 200) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("switchyard exited early ({status}): {}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "switchyard did not become ready: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the process wrote so far.
    /// Everything logged so far (the gateway writes its log buffer out every 100 ms).
    pub fn logs(&self) -> String {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("stderr.log"))
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.proxy_port)
    }

    /// An admin call with the token; returns status and JSON body (Null when empty).
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        read_json(req.send().unwrap())
    }

    /// An admin call with a raw body (malformed JSON and the like).
    pub fn admin_raw(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let req = self
            .http
            .request(m, self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body);
        read_json(req.send().unwrap())
    }

    pub fn create(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.admin("POST", path, Some(body));
        assert_eq!(s, 201, "POST {path}: {v}");
        v
    }

    /// The whole store as the admin API exports it, without the export time.
    pub fn export(&self) -> Value {
        let (s, mut v) = self.admin("GET", "/v1/export", None);
        assert_eq!(s, 200, "{v}");
        v.as_object_mut().unwrap().remove("exported_at");
        v
    }

    /// A gateway with one mock registry, one API key and one consumer using both.
    pub fn seed_basic(&self) -> Seeded {
        let gw = self.create("/v1/gateways", json!({"name": "g1"}));
        let gid = id(&gw);
        let reg = self.create(
            &format!("/v1/gateways/{gid}/registries"),
            json!({"name": "mock", "provider": "mock"}),
        );
        let auth = self.create(
            &format!("/v1/gateways/{gid}/auths"),
            json!({"name": "key1", "type": "api_key"}),
        );
        let consumer = self.create(
            &format!("/v1/gateways/{gid}/consumers"),
            json!({"name": "app", "registries": [{"id": id(&reg), "weight": 1,
                   "model_policies": {"allowed": [], "default": "mock-1"}}],
                   "auth_ids": [id(&auth)]}),
        );
        Seeded {
            gid,
            registry_id: id(&reg),
            auth_id: id(&auth),
            key: auth["key"].as_str().unwrap().to_string(),
            consumer_id: id(&consumer),
            slug: consumer["slug"].as_str().unwrap().to_string(),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Seeded {
    pub gid: String,
    pub registry_id: String,
    pub auth_id: String,
    pub key: String,
    pub consumer_id: String,
    pub slug: String,
}

pub fn id(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

pub fn read_json(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

/// Sorted keys of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
