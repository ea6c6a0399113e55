//! OpenAI, OpenAI-compatible and Azure OpenAI: the OpenAI wire format, so bodies and streams
//! pass through; only the URL and the credential header differ.

use super::Api;
use crate::proxy::error::ProxyError;

pub const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

/// `{base_url}/chat/completions` and friends.
pub fn path(prefix: &str, api: Api) -> Result<String, ProxyError> {
    match api {
        Api::Messages => Err(ProxyError::Internal(
            "messages are translated to chat completions first".into(),
        )),
        _ => Ok([prefix, api.openai_path()].concat()),
    }
}

/// `{base_url}/openai/deployments/{deployment}/chat/completions` (the query is added after).
pub fn azure_path(prefix: &str, api: Api, deployment: &str) -> Result<String, ProxyError> {
    let deployment = super::urlencode(deployment);
    match api {
        Api::ChatCompletions | Api::Embeddings => Ok(format!(
            "{prefix}/openai/deployments/{deployment}{}",
            api.openai_path()
        )),
        Api::Responses => Ok(format!("{prefix}/openai/responses")),
        Api::Models => Ok(format!("{prefix}/openai/models")),
        Api::Messages => path(prefix, api),
    }
}
