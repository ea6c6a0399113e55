//! Providers: for each, the upstream URL of an API, where its credential goes, and (for
//! `mock`) the answer itself. This is the only place that matches on the provider.

mod bedrock;
pub mod mock;
mod openai;

use crate::entities::registry::{ParamLocation, Provider, ProviderAuth};
use crate::proxy::body::JsonBody;
use crate::proxy::error::{ClientFormat, ProxyError};
use crate::snapshot::CompiledRegistry;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use std::sync::OnceLock;

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
    /// How the answer must be translated for the client, when formats differ.
    pub translation: Option<Translation>,
}

/// The wire format a provider answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

/// A translation of answers (bodies, streams, errors) from a provider's wire format to the
/// client's: through OpenAI chat's shape when neither side speaks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub upstream: Wire,
    pub client: ClientFormat,
}

impl Translation {
    /// The translation a client API needs from a provider, if formats differ.
    pub fn new(upstream: Wire, api: Api) -> Option<Translation> {
        let client = if api == Api::Messages {
            ClientFormat::Anthropic
        } else {
            ClientFormat::OpenAi
        };
        match (upstream, client) {
            (Wire::OpenAi, ClientFormat::OpenAi) | (Wire::Anthropic, ClientFormat::Anthropic) => {
                None
            }
            _ => Some(Translation { upstream, client }),
        }
    }
}

/// The request as an OpenAI chat request (translated from Anthropic's format for
/// `/v1/messages`), for providers whose own format is built from OpenAI's.
fn openai_value(api: Api, model: &str, body: &JsonBody) -> Result<serde_json::Value, ProxyError> {
    if api == Api::Messages {
        return crate::translate::anthropic::request_to_openai(&body.value(), model)
            .map_err(ProxyError::InvalidRequest);
    }
    Ok(body.value())
}

/// The body an OpenAI-format provider gets for a request.
pub fn openai_body(api: Api, model: &str, body: &JsonBody) -> Result<Bytes, ProxyError> {
    if api == Api::Messages {
        return Ok(Bytes::from(openai_value(api, model, body)?.to_string()));
    }
    Ok(body.render(model))
}

/// A credential value that names an environment variable: `env:NAME`.
const ENV_PREFIX: &str = "env:";

/// Reads a credential value, following `env:NAME` to the environment at use time.
pub fn secret(value: &str) -> Result<String, ProxyError> {
    match value.strip_prefix(ENV_PREFIX) {
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

/// A registry's credential headers and query pairs, placed once and reused while its snapshot
/// lives. Not used when a value reads the environment: `env:` values are read at each use, so
/// a changed variable takes effect without a reload.
#[derive(Default)]
pub struct CredentialCache(OnceLock<Option<Placed>>);

type Placed = (Vec<(HeaderName, HeaderValue)>, Vec<(String, String)>);

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialCache") // never the secret
    }
}

/// [`credential`] for a registry, from its cache when no value reads the environment. The
/// values are marked sensitive (left out of `Debug` output and HTTP/2 header compression).
fn registry_credential(
    reg: &CompiledRegistry,
    default_header: Option<(&str, &str)>,
    headers: &mut Vec<(HeaderName, HeaderValue)>,
    query: &mut Vec<(String, String)>,
) -> Result<(), ProxyError> {
    let auth = &reg.spec.auth;
    let reads_env = [&auth.api_key, &auth.header_value, &auth.param_value]
        .iter()
        .any(|v| v.as_deref().is_some_and(|v| v.starts_with(ENV_PREFIX)));
    if reads_env {
        return credential(auth, default_header, headers, query);
    }
    let placed = reg.credential.0.get_or_init(|| {
        let (mut h, mut q) = (Vec::new(), Vec::new());
        credential(auth, default_header, &mut h, &mut q).ok()?;
        for (_, v) in &mut h {
            v.set_sensitive(true);
        }
        Some((h, q))
    });
    let Some((h, q)) = placed else {
        return Err(ProxyError::Internal(
            "a registry credential is not a valid header".into(),
        ));
    };
    headers.extend(h.iter().cloned());
    query.extend(q.iter().cloned());
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
    client_headers: &http::HeaderMap,
) -> Result<UpstreamRequest, ProxyError> {
    let mut headers = Vec::new();
    let mut query = Vec::new();
    let prefix = reg
        .endpoint
        .as_ref()
        .map(|e| e.prefix.as_str())
        .unwrap_or("");
    let openai_api = if api == Api::Messages {
        Api::ChatCompletions
    } else {
        api
    };
    let (path, bytes, translation) = match reg.provider {
        Provider::Openai | Provider::OpenaiCompatible => {
            registry_credential(
                reg,
                Some(("authorization", "Bearer ")),
                &mut headers,
                &mut query,
            )?;
            (
                openai::path(prefix, openai_api)?,
                openai_body(api, model, body)?,
                Translation::new(Wire::OpenAi, api),
            )
        }
        Provider::AzureOpenai => {
            registry_credential(reg, Some(("api-key", "")), &mut headers, &mut query)?;
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
            (
                openai::azure_path(prefix, openai_api, deployment)?,
                openai_body(api, model, body)?,
                Translation::new(Wire::OpenAi, api),
            )
        }
        Provider::Anthropic => {
            registry_credential(reg, Some(("x-api-key", "")), &mut headers, &mut query)?;
            let opts = reg.spec.anthropic_options();
            // The client's own anthropic-version/beta pass through when it speaks Anthropic.
            let version = client_headers
                .get("anthropic-version")
                .filter(|_| api == Api::Messages)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or(opts.version)
                .unwrap_or_else(|| "2023-06-01".into());
            headers.push(header("anthropic-version", &version)?);
            if let Some(beta) = client_headers
                .get("anthropic-beta")
                .filter(|_| api == Api::Messages)
            {
                headers.push(header("anthropic-beta", beta.to_str().unwrap_or_default())?);
            }
            let bytes = match api {
                Api::Messages => body.render(model),
                Api::ChatCompletions => {
                    let v = crate::translate::anthropic::request_from_openai(
                        &body.value(),
                        model,
                        u64::from(opts.default_max_tokens.unwrap_or(4096)),
                    )
                    .map_err(ProxyError::InvalidRequest)?;
                    Bytes::from(v.to_string())
                }
                _ => {
                    return Err(ProxyError::InvalidRequest(format!(
                        "registry `{}` (anthropic) serves chat completions and messages only",
                        reg.name
                    )))
                }
            };
            (
                format!("{prefix}/v1/messages"),
                bytes,
                Translation::new(Wire::Anthropic, api),
            )
        }
        Provider::Gemini => {
            chat_only(reg, api)?;
            registry_credential(reg, Some(("x-goog-api-key", "")), &mut headers, &mut query)?;
            let v = crate::translate::gemini::request_from_openai(&openai_value(api, model, body)?)
                .map_err(ProxyError::InvalidRequest)?;
            let action = if body.stream {
                ":streamGenerateContent?alt=sse"
            } else {
                ":generateContent"
            };
            (
                format!("{prefix}/v1beta/models/{}{action}", urlencode(model)),
                Bytes::from(v.to_string()),
                Translation::new(Wire::Gemini, api),
            )
        }
        Provider::Bedrock => {
            chat_only(reg, api)?;
            let v =
                crate::translate::bedrock::request_from_openai(&openai_value(api, model, body)?)
                    .map_err(ProxyError::InvalidRequest)?;
            let bytes = Bytes::from(v.to_string());
            let path = bedrock::path(prefix, model, body.stream);
            bedrock_credentials(reg, &path, &bytes, &mut headers, &mut query)?;
            (path, bytes, Translation::new(Wire::Bedrock, api))
        }
        Provider::Mock | Provider::Mcp => {
            return Err(ProxyError::Internal(format!(
                "registry `{}` has no HTTP upstream",
                reg.name
            )))
        }
    };
    for (k, v) in &reg.spec.headers {
        headers.push(header(k, v)?);
    }
    Ok(UpstreamRequest {
        path: with_query(path, &query),
        headers,
        body: bytes,
        translation,
    })
}

/// Providers that answer chat only (through translation): OpenAI chat completions and
/// Anthropic messages.
fn chat_only(reg: &CompiledRegistry, api: Api) -> Result<(), ProxyError> {
    match api {
        Api::ChatCompletions | Api::Messages => Ok(()),
        _ => Err(ProxyError::InvalidRequest(format!(
            "registry `{}` ({}) serves chat completions and messages only",
            reg.name,
            reg.provider.as_str()
        ))),
    }
}

/// Bedrock's credential: SigV4 from the options' access keys, else a Bedrock API key from
/// `auth.api_key` as a bearer token (or the generic header/query overrides).
fn bedrock_credentials(
    reg: &CompiledRegistry,
    path: &str,
    body: &[u8],
    headers: &mut Vec<(HeaderName, HeaderValue)>,
    query: &mut Vec<(String, String)>,
) -> Result<(), ProxyError> {
    let opts = reg.spec.bedrock_options().unwrap_or_default();
    let (Some(akid), Some(secret_key)) = (&opts.access_key_id, &opts.secret_access_key) else {
        return registry_credential(reg, Some(("authorization", "Bearer ")), headers, query);
    };
    let (akid, secret_key) = (secret(akid)?, secret(secret_key)?);
    let token = opts.session_token.as_deref().map(secret).transpose()?;
    let host = reg
        .endpoint
        .as_ref()
        .map(|e| e.authority())
        .unwrap_or_default();
    let signer = bedrock::Signer {
        access_key_id: &akid,
        secret_access_key: &secret_key,
        session_token: token.as_deref(),
        region: &opts.region,
        service: "bedrock",
    };
    let signed = signer.sign(
        "POST",
        &with_query(path.to_string(), query),
        &[("content-type", "application/json"), ("host", host)],
        body,
        &bedrock::amz_date_now(),
    );
    for (k, v) in signed {
        headers.push(header(k, &v)?);
    }
    Ok(())
}
