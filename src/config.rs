//! The YAML configuration file (SPEC §1): its types, defaults and loading.
//!
//! Every key is optional; unknown keys are an error that names the key and the file.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Pingora worker threads for the proxy listener.
    pub threads: usize,
    /// Seed a demo gateway, registry, key and consumer into an empty store.
    pub demo: bool,
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            threads: 2,
            demo: false,
            proxy: ProxyConfig::default(),
            admin: AdminConfig::default(),
            upstream: UpstreamConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: Vec<String>,
    pub tls: Option<TlsConfig>,
    /// Accept HTTP/2 with prior knowledge (h2c) on the cleartext listeners too, next to
    /// HTTP/1.1: for a load balancer that multiplexes many clients' requests on few connections.
    pub h2c: bool,
    pub max_body_bytes: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: vec!["0.0.0.0:8080".into()],
            tls: None,
            h2c: false,
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: String,
    pub token: Option<String>,
    /// Largest admin request body; larger ones get 413 `body_too_large`.
    pub max_body_bytes: usize,
    /// Least time between two journal syncs (group commit): a write is answered once synced,
    /// and every write that arrives meanwhile shares the next sync. Bounds what a stream of
    /// admin writes takes from the proxy's CPU and disk; 0 syncs each write at once.
    pub commit_interval_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:8081".into(),
            token: None,
            max_body_bytes: 10 * 1024 * 1024,
            commit_interval_ms: 8,
        }
    }
}

/// Timeouts for registries that set none of their own.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamDefaults {
    pub connect_ms: u64,
    pub first_byte_ms: u64,
    pub stream_idle_ms: u64,
    pub total_ms: u64,
}

/// How the gateway connects to providers: default timeouts, and the CAs it trusts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_ms: u64,
    pub first_byte_ms: u64,
    pub stream_idle_ms: u64,
    pub total_ms: u64,
    /// A PEM bundle of CAs trusted for provider TLS instead of the system roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        let d = UpstreamDefaults::default();
        UpstreamConfig {
            connect_ms: d.connect_ms,
            first_byte_ms: d.first_byte_ms,
            stream_idle_ms: d.stream_idle_ms,
            total_ms: d.total_ms,
            ca_file: None,
        }
    }
}

impl UpstreamConfig {
    /// The timeouts registries without their own use.
    pub fn defaults(&self) -> UpstreamDefaults {
        UpstreamDefaults {
            connect_ms: self.connect_ms,
            first_byte_ms: self.first_byte_ms,
            stream_idle_ms: self.stream_idle_ms,
            total_ms: self.total_ms,
        }
    }
}

impl Default for UpstreamDefaults {
    fn default() -> Self {
        UpstreamDefaults {
            connect_ms: 2_000,
            first_byte_ms: 60_000,
            stream_idle_ms: 30_000,
            total_ms: 600_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// How the process stops (SIGTERM) and hands over (upgrade). Pingora's own default grace
/// period is 300 s; ours is explicit and short.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM, `/readyz` answers 503 this long before the listeners close, so load
    /// balancers stop sending new requests first.
    pub drain_delay_ms: u64,
    /// Seconds in-flight requests and streams get to finish after listeners close.
    pub grace_period_s: u64,
    /// Seconds allowed for the runtimes to stop after the grace period.
    pub shutdown_timeout_s: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_delay_ms: 1000,
            grace_period_s: 10,
            shutdown_timeout_s: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::parse(&text, &file)
    }

    /// Parses config text; `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_string(),
            message,
        };
        // An empty file is the all-defaults config.
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            // serde_yaml's messages name the key path and the line.
            serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?
        };
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.threads == 0 {
            return Err("`threads` must be at least 1".into());
        }
        if self.proxy.listen.is_empty() && self.proxy.tls.is_none() {
            return Err("`proxy.listen` is empty and no `proxy.tls` listener is set".into());
        }
        for addr in self
            .proxy
            .listen
            .iter()
            .chain(std::iter::once(&self.admin.listen))
        {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|_| format!("listen address `{addr}` is not HOST:PORT"))?;
        }
        if self.admin.commit_interval_ms > 1000 {
            return Err("`admin.commit_interval_ms` must be at most 1000".into());
        }
        if self.proxy.max_body_bytes == 0 {
            return Err("`proxy.max_body_bytes` must be positive".into());
        }
        if let Some(tls) = &self.proxy.tls {
            tls.listen
                .parse::<std::net::SocketAddr>()
                .map_err(|_| format!("`proxy.tls.listen` `{}` is not HOST:PORT", tls.listen))?;
            for (what, p) in [("cert", &tls.cert), ("key", &tls.key)] {
                if !p.is_file() {
                    return Err(format!(
                        "`proxy.tls.{what}`: {} is not a readable file",
                        p.display()
                    ));
                }
            }
        }
        if let Some(ca) = &self.upstream.ca_file {
            if !ca.is_file() {
                return Err(format!(
                    "`upstream.ca_file`: {} is not a readable file",
                    ca.display()
                ));
            }
        }
        let u = &self.upstream;
        if [u.connect_ms, u.first_byte_ms, u.stream_idle_ms, u.total_ms].contains(&0) {
            return Err("`upstream` timeouts must be positive".into());
        }
        if !matches!(
            self.log.level.to_ascii_lowercase().as_str(),
            "trace" | "debug" | "info" | "warn" | "error" | "off"
        ) {
            return Err(format!(
                "`log.level` `{}` is not one of trace, debug, info, warn, error, off",
                self.log.level
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(Config::parse("", "x.yaml").unwrap(), Config::default());
    }

    /// `conf/switchyard.yaml` lists every key with its default (only `data_dir` is the
    /// package's own), so a key added here and not there, or a drifted default, fails.
    #[test]
    fn shipped_config_lists_the_defaults() {
        let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/switchyard.yaml"));
        Config::parse(text, "conf/switchyard.yaml").unwrap();
        let listed: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
        let defaults = Config {
            data_dir: PathBuf::from("/var/lib/switchyard"),
            ..Config::default()
        };
        assert_eq!(listed, serde_yaml::to_value(&defaults).unwrap());
        let c = Config::parse("proxy: {h2c: true}\n", "f").unwrap();
        assert!(c.proxy.h2c && c.proxy.listen == ProxyConfig::default().listen);
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = Config::parse("proxy:\n  listn: []\n", "conf/a.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("conf/a.yaml:"), "{err}");
        assert!(err.contains("listn"), "{err}");
        assert!(err.contains("proxy"), "{err}");
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = Config::parse("upstream:\n  connect_ms: 5\nlog: {format: text}\n", "f").unwrap();
        assert_eq!(c.upstream.connect_ms, 5);
        assert_eq!(c.upstream.total_ms, 600_000);
        assert!(Config::parse("upstream: {conect_ms: 5}\n", "f")
            .unwrap_err()
            .to_string()
            .contains("conect_ms"));
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let err = Config::parse("threads: many\n", "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("threads"), "{err}");
    }

    #[test]
    fn commit_interval_is_bounded() {
        let c = Config::parse("admin: {commit_interval_ms: 0}\n", "f").unwrap();
        assert_eq!(c.admin.commit_interval_ms, 0);
        let err = Config::parse("admin: {commit_interval_ms: 5000}\n", "f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("commit_interval_ms"), "{err}");
    }

    #[test]
    fn bad_listen_address_is_an_error() {
        assert!(Config::parse("admin: {listen: nowhere}\n", "f").is_err());
    }
}
