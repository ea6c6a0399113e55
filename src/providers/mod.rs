//! Providers: for each, the upstream URL of an API, where its credential goes, and (for
//! `mock`) the answer itself. This is the only place that matches on the provider.

pub mod mock;
mod openai;

use crate::entities::registry::{ParamLocation, Provider, ProviderAuth};
use crate::proxy::body::JsonBody;
use crate::proxy::error::ProxyError;
use crate::snapshot::CompiledRegistry;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};

/// The client-facing API a request calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Embeddings,
    Responses,
    Models,
    Messages,
}

impl Api {
    pub fn from_path(rest: &str) -> Option<Api> {
        Some(match rest {
            "chat/completions" => Api::ChatCompletions,
            "embeddings" => Api::Embeddings,
            "responses" => Api::Responses,
            "models" => Api::Models,
            "messages" => Api::Messages,
            _ => return None,
        })
    }

    /// The OpenAI path under a `/v1`-style base URL.
    pub fn openai_path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/chat/completions",
            Api::Embeddings => "/embeddings",
            Api::Responses => "/responses",
            Api::Models => "/models",
            Api::Messages => "/messages",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Embeddings => "embeddings",
            Api::Responses => "responses",
            Api::Models => "models",
            Api::Messages => "messages",
        }
    }
}

/// What to send upstream, short of the connection itself.
#[derive(Debug)]
pub struct UpstreamRequest {
    /// Path and query.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// Reads a credential value, following `env:NAME` to the environment at use time.
pub fn secret(value: &str) -> Result<String, ProxyError> {
    match value.strip_prefix("env:") {
        Some(name) => std::env::var(name).map_err(|_| {
            ProxyError::UpstreamUnavailable(format!(
                "the registry's credential names environment variable `{name}`, which is not set"
            ))
        }),
        None => Ok(value.to_string()),
    }
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), ProxyError> {
    let bad = || ProxyError::Internal("a registry credential is not a valid header".into());
    Ok((
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?,
        HeaderValue::from_str(value).map_err(|_| bad())?,
    ))
}

/// Places the registry's credential: the explicit header or query override, else the
/// provider's own header for `api_key`. Returns headers and query pairs to add.
fn credential(
    auth: &ProviderAuth,
    default_header: Option<(&str, &str)>,
    headers: &mut Vec<(HeaderName, HeaderValue)>,
    query: &mut Vec<(String, String)>,
) -> Result<(), ProxyError> {
    if let (Some(n), Some(v)) = (&auth.header_name, &auth.header_value) {
        headers.push(header(n, &secret(v)?)?);
    }
    if let (Some(n), Some(v)) = (&auth.param_name, &auth.param_value) {
        match auth.param_location.unwrap_or_default() {
            ParamLocation::Query => query.push((n.clone(), secret(v)?)),
            ParamLocation::Header => headers.push(header(n, &secret(v)?)?),
        }
    }
    if let (Some(key), Some((name, prefix))) = (&auth.api_key, default_header) {
        if auth.header_name.is_none() {
            headers.push(header(name, &format!("{prefix}{}", secret(key)?))?);
        }
    }
    Ok(())
}

fn with_query(mut path: String, query: &[(String, String)]) -> String {
    for (i, (k, v)) in query.iter().enumerate() {
        path.push(if i == 0 && !path.contains('?') {
            '?'
        } else {
            '&'
        });
        path.push_str(&urlencode(k));
        path.push('=');
        path.push_str(&urlencode(v));
    }
    path
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The headers an `mcp` registry's requests carry: its credential (as a bearer token unless
/// overridden) and its static headers. Query-placed credentials are not supported for MCP.
pub fn mcp_headers(reg: &CompiledRegistry) -> Result<Vec<(HeaderName, HeaderValue)>, ProxyError> {
    let mut headers = Vec::new();
    let mut query = Vec::new();
    credential(
        &reg.spec.auth,
        Some(("authorization", "Bearer ")),
        &mut headers,
        &mut query,
    )?;
    for (k, v) in &reg.spec.headers {
        headers.push(header(k, v)?);
    }
    Ok(headers)
}

/// Builds the upstream request for a registry (not for `mock`, which answers in-process).
pub fn build(
    reg: &CompiledRegistry,
    api: Api,
    model: &str,
    body: &JsonBody,
) -> Result<UpstreamRequest, ProxyError> {
    let mut headers = Vec::new();
    let mut query = Vec::new();
    let prefix = reg
        .endpoint
        .as_ref()
        .map(|e| e.prefix.as_str())
        .unwrap_or("");
    let path = match reg.provider {
        Provider::Openai | Provider::OpenaiCompatible => {
            credential(
                &reg.spec.auth,
                Some(("authorization", "Bearer ")),
                &mut headers,
                &mut query,
            )?;
            openai::path(prefix, api)
        }
        Provider::AzureOpenai => {
            credential(
                &reg.spec.auth,
                Some(("api-key", "")),
                &mut headers,
                &mut query,
            )?;
            let opts = reg.spec.azure_options();
            let deployment = opts
                .deployments
                .get(model)
                .map(String::as_str)
                .unwrap_or(model);
            query.push((
                "api-version".into(),
                opts.api_version
                    .unwrap_or_else(|| openai::AZURE_DEFAULT_API_VERSION.into()),
            ));
            openai::azure_path(prefix, api, deployment)
        }
        Provider::Anthropic | Provider::Gemini | Provider::Bedrock => {
            return Err(ProxyError::InvalidRequest(format!(
                "registry `{}` ({}) cannot serve OpenAI-format requests yet",
                reg.name,
                reg.provider.as_str()
            )))
        }
        Provider::Mock | Provider::Mcp => {
            return Err(ProxyError::Internal(format!(
                "registry `{}` has no HTTP upstream",
                reg.name
            )))
        }
    }?;
    for (k, v) in &reg.spec.headers {
        headers.push(header(k, v)?);
    }
    Ok(UpstreamRequest {
        path: with_query(path, &query),
        headers,
        body: body.render(model),
    })
}
