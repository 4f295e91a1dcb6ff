//! The connection to the controller: endpoint, TLS, timeouts and the admin bearer token.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use cladnet_proto::{
    tls::{self, ClientTls, ConnectError, Pin},
    v1::network_service_client::NetworkServiceClient,
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::error::CliError;

/// Default controller URL (the controller's default gRPC + REST port).
pub(crate) const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:8053";

/// Where the controller writes its admin token by default; read when no token is given and
/// the file is readable (so `cladnet` works as is on the controller's host).
pub(crate) const DEFAULT_TOKEN_FILE: &str = "/var/lib/cladnet/admin.token";

/// The generated `NetworkService` client with the bearer token attached to every call.
pub(crate) type Api = NetworkServiceClient<InterceptedService<Channel, BearerAuth>>;

/// How to reach and authenticate to the controller (from the global flags).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `http://` or `https://` URL of the controller.
    pub(crate) controller: String,
    /// CA certificate (PEM) to trust instead of the system roots for `https://`.
    pub(crate) ca_cert: Option<PathBuf>,
    /// Pin of the controller's key for `https://` (accepts exactly that key).
    pub(crate) pin: Option<Pin>,
    /// The admin token given inline.
    pub(crate) token: Option<String>,
    /// A file holding the admin token (used when no inline token is given).
    pub(crate) token_file: Option<PathBuf>,
    /// Connect and per-call timeout.
    pub(crate) timeout: Duration,
}

/// Adds `authorization: Bearer <token>` to every request when a token is known.
#[derive(Debug, Clone)]
pub(crate) struct BearerAuth(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connected controller client.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    /// The generated gRPC client.
    pub(crate) api: Api,
    url: String,
}

impl Client {
    /// Connects to the controller. With `need_token`, fails before connecting when no admin
    /// token was given.
    pub(crate) async fn connect(settings: &Settings, need_token: bool) -> anyhow::Result<Self> {
        let mut token = resolve_token(settings.token.as_deref(), settings.token_file.as_deref())?;
        if token.is_none() && need_token {
            // Best effort: an unreadable default file is the same as no token.
            token = resolve_token(None, Some(Path::new(DEFAULT_TOKEN_FILE))).unwrap_or(None);
        }
        if need_token && token.is_none() {
            return Err(CliError::NoToken.into());
        }
        let auth =
            match token {
                Some(t) => Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                    CliError::Usage("the admin token must be printable ASCII".into())
                })?),
                None => None,
            };
        let url = settings.controller.clone();
        if !url.starts_with("https://") {
            for (set, flag) in [
                (settings.ca_cert.is_some(), "--ca-cert"),
                (settings.pin.is_some(), "--pin"),
            ] {
                if set {
                    return Err(CliError::Usage(format!(
                        "{flag} needs an https:// controller URL, not {url}"
                    ))
                    .into());
                }
            }
        }
        let tls = ClientTls::new(settings.pin, settings.ca_cert.as_deref())
            .map_err(|e| CliError::Usage(format!("--ca-cert: {e}")))?;
        let channel = tls::connect(&url, &tls, settings.timeout, Some(settings.timeout))
            .await
            .map_err(|e| match e {
                e if e.is_tls_failure() => CliError::Tls(e.to_string()),
                ConnectError::BadUrl { .. } => CliError::Usage(e.to_string()),
                ConnectError::Io { source, .. } => CliError::Connect {
                    url: url.clone(),
                    reason: source.to_string(),
                },
                e => CliError::Connect {
                    url: url.clone(),
                    reason: e.to_string(),
                },
            })?;
        Ok(Self {
            api: NetworkServiceClient::with_interceptor(channel, BearerAuth(auth)),
            url,
        })
    }

    /// Maps a failed call's status to an error naming what was attempted.
    pub(crate) fn fail<A: Into<String>>(
        &self,
        action: A,
    ) -> impl FnOnce(Status) -> anyhow::Error + use<A> {
        let action = action.into();
        let url = self.url.clone();
        move |status| CliError::call(action, &status, &url).into()
    }
}

/// The admin token: `token` when given, else the trimmed content of `token_file`.
pub(crate) fn resolve_token(
    token: Option<&str>,
    token_file: Option<&Path>,
) -> Result<Option<String>, CliError> {
    if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(Some(t.to_owned()));
    }
    let Some(path) = token_file else {
        return Ok(None);
    };
    let file_error = |reason: String| CliError::TokenFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(file_error("is empty".into()));
    }
    Ok(Some(t.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_token_wins_over_file() {
        let t = resolve_token(Some(" abc "), Some(Path::new("/nonexistent"))).unwrap();
        assert_eq!(t.as_deref(), Some("abc"));
        assert_eq!(resolve_token(None, None).unwrap(), None);
    }

    #[test]
    fn token_file_is_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("cladnet-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "secret-admin-token\n").unwrap();
        let t = resolve_token(None, Some(&file)).unwrap();
        assert_eq!(t.as_deref(), Some("secret-admin-token"));
        std::fs::write(&file, "  \n").unwrap();
        let err = resolve_token(None, Some(&file)).unwrap_err();
        assert!(err.to_string().ends_with("is empty"), "{err}");
        assert_eq!(err.class().code(), 4);
        let err = resolve_token(None, Some(&dir.join("missing"))).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interceptor_sets_bearer_header() {
        let mut auth = BearerAuth(Some(MetadataValue::from_static("Bearer t0k")));
        let req = auth.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer t0k");
        let mut none = BearerAuth(None);
        assert!(
            none.call(Request::new(()))
                .unwrap()
                .metadata()
                .get("authorization")
                .is_none()
        );
    }
}
