//! The admin token: from the config, else `SWITCHYARD_ADMIN_TOKEN`, else generated once into
//! `<data_dir>/admin.token` (mode 0600). Compared in constant time.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct AdminToken {
    hash: [u8; 32],
}

/// Where the token came from, for the start-up log line (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Config,
    Env,
    File(PathBuf),
    Generated(PathBuf),
}

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken {
            hash: Sha256::digest(token.as_bytes()).into(),
        }
    }

    pub fn matches(&self, presented: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        h.ct_eq(&self.hash).into()
    }

    /// Resolves the token as SPEC §1 orders the sources.
    pub fn resolve(
        configured: Option<&str>,
        data_dir: &Path,
    ) -> std::io::Result<(AdminToken, TokenSource)> {
        if let Some(t) = configured.filter(|t| !t.is_empty()) {
            return Ok((AdminToken::new(t), TokenSource::Config));
        }
        if let Ok(t) = std::env::var("SWITCHYARD_ADMIN_TOKEN") {
            if !t.is_empty() {
                return Ok((AdminToken::new(&t), TokenSource::Env));
            }
        }
        let path = data_dir.join("admin.token");
        if let Ok(t) = std::fs::read_to_string(&path) {
            if !t.trim().is_empty() {
                return Ok((AdminToken::new(t.trim()), TokenSource::File(path)));
            }
        }
        let token = crate::entities::auth::generate_key().replacen("sy-", "adm-", 1);
        std::fs::create_dir_all(data_dir)?;
        write_private(&path, token.as_bytes())?;
        Ok((AdminToken::new(&token), TokenSource::Generated(path)))
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_token_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        std::env::remove_var("SWITCHYARD_ADMIN_TOKEN");
        let (t1, s1) = AdminToken::resolve(None, dir.path()).unwrap();
        assert!(matches!(s1, TokenSource::Generated(_)));
        let path = dir.path().join("admin.token");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(t1.matches(&text));
        assert!(!t1.matches("wrong"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (t2, s2) = AdminToken::resolve(None, dir.path()).unwrap();
        assert!(matches!(s2, TokenSource::File(_)));
        assert!(t2.matches(&text));
        let (t3, s3) = AdminToken::resolve(Some("from-config"), dir.path()).unwrap();
        assert_eq!(s3, TokenSource::Config);
        assert!(t3.matches("from-config"));
    }
}
