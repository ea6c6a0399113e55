//! AWS Bedrock Converse: the endpoint path and SigV4 request signing.
//!
//! The model id is one path segment, percent-encoded on the wire (`us.anthropic...-v1:0` →
//! `...-v1%3A0`); SigV4's canonical URI encodes each segment once more (`%253A`), as AWS does
//! for every service but S3 — single encoding is the classic 403 SignatureDoesNotMatch.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The Converse path for a model, under the base URL's prefix.
pub fn path(prefix: &str, model: &str, stream: bool) -> String {
    let action = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    format!("{prefix}/model/{}/{action}", super::urlencode(model))
}

/// Credentials and scope for SigV4.
pub struct Signer<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
    pub region: &'a str,
    pub service: &'a str,
}

impl Signer<'_> {
    /// The headers that sign a request: `x-amz-date`, `x-amz-security-token` (temporary
    /// credentials) and `authorization`. `headers` are the other headers to sign (lowercase
    /// names); `host` is always signed. `amz_date` is `YYYYMMDD'T'HHMMSS'Z'`.
    pub fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        amz_date: &str,
    ) -> Vec<(&'static str, String)> {
        let mut signed: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), collapse(v)))
            .collect();
        signed.push(("x-amz-date".into(), amz_date.into()));
        if let Some(t) = self.session_token {
            signed.push(("x-amz-security-token".into(), t.into()));
        }
        signed.sort();
        let names = signed
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let canonical = format!(
            "{method}\n{}\n{}\n{}\n{names}\n{}",
            canonical_uri(path),
            canonical_query(query),
            signed
                .iter()
                .map(|(k, v)| format!("{k}:{v}\n"))
                .collect::<String>(),
            hex::encode(Sha256::digest(body)),
        );
        let day = &amz_date[..amz_date.len().min(8)];
        let scope = format!("{day}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut key = format!("AWS4{}", self.secret_access_key).into_bytes();
        for part in [day, self.region, self.service, "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
        let mut out = vec![("x-amz-date", amz_date.to_string())];
        if let Some(t) = self.session_token {
            out.push(("x-amz-security-token", t.to_string()));
        }
        out.push((
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={names}, Signature={signature}",
                self.access_key_id
            ),
        ));
        out
    }
}

/// The current time as SigV4 wants it.
pub fn amz_date_now() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn collapse(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Each segment of the wire path encoded once more.
fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(super::urlencode)
        .collect::<Vec<_>>()
        .join("/")
}

/// Query pairs sorted; they are already encoded on the wire.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Signer<'static> {
        Signer {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: None,
            region: "us-east-1",
            service: "service",
        }
    }

    #[test]
    fn aws_test_suite_get_vanilla() {
        let h = example().sign(
            "GET",
            "/",
            &[("host", "example.amazonaws.com")],
            b"",
            "20150830T123600Z",
        );
        assert_eq!(
            h.last().unwrap().1,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn model_ids_with_colons_are_encoded_twice_in_the_canonical_uri() {
        let p = path("", "us.anthropic.claude-3-haiku-v1:0", true);
        assert_eq!(
            p,
            "/model/us.anthropic.claude-3-haiku-v1%3A0/converse-stream"
        );
        assert_eq!(
            canonical_uri(&p),
            "/model/us.anthropic.claude-3-haiku-v1%253A0/converse-stream"
        );
    }

    #[test]
    fn session_tokens_are_signed_and_sent() {
        let mut s = example();
        s.session_token = Some("TOKEN");
        let h = s.sign(
            "POST",
            "/model/m/converse",
            &[("host", "h")],
            b"{}",
            "20250101T000000Z",
        );
        assert_eq!(h[1], ("x-amz-security-token", "TOKEN".to_string()));
        assert!(h[2]
            .1
            .contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"));
    }
}
