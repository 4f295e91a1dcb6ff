//! Failures the CLI reports, and the exit code of each class.

use tonic::Code;

/// Exit codes of `cladnet` (documented in `docs/cli.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ExitClass {
    /// Anything else: internal or unknown errors, a local file problem, an unhealthy controller.
    Other = 1,
    /// Bad usage: a flag clap rejected, or the controller said InvalidArgument / OutOfRange.
    Usage = 2,
    /// The network, peer, token or test does not exist.
    NotFound = 3,
    /// No, a wrong or an insufficient token (Unauthenticated, PermissionDenied).
    Auth = 4,
    /// The controller cannot be reached or did not answer in time (Unavailable,
    /// DeadlineExceeded, connection failures, timeouts).
    Unavailable = 5,
    /// The request conflicts with the current state (AlreadyExists, FailedPrecondition,
    /// Aborted: e.g. a concurrent update changed the revision).
    Conflict = 6,
}

impl ExitClass {
    /// The class of a gRPC status code.
    pub(crate) fn of_code(code: Code) -> Self {
        match code {
            Code::InvalidArgument | Code::OutOfRange => Self::Usage,
            Code::NotFound => Self::NotFound,
            Code::Unauthenticated | Code::PermissionDenied => Self::Auth,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Self::Unavailable,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => Self::Conflict,
            _ => Self::Other,
        }
    }

    /// The process exit code.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }
}

/// A failure with a known exit class. Other errors (plain `anyhow`) exit with 1.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A controller call returned an error status.
    #[error("{action}: {message}")]
    Call {
        /// What was attempted, e.g. `reading network net-1`.
        action: String,
        /// The status code.
        code: Code,
        /// The status message (or the code's description when empty), plus the controller URL
        /// when it could not be reached.
        message: String,
    },
    /// The controller could not be reached.
    #[error("cannot reach the controller at {url}: {reason}")]
    Connect {
        /// The controller URL.
        url: String,
        /// The innermost transport error, e.g. `Connection refused (os error 111)`.
        reason: String,
    },
    /// The controller answered but could not be trusted (wrong pin, unknown CA) or speaks
    /// the other protocol (`http://` to a TLS port or the reverse).
    #[error("{0}")]
    Tls(String),
    /// An admin call was attempted without credentials.
    #[error(
        "no admin token: pass --token or --token-file (or set CLADNET_TOKEN / \
         CLADNET_TOKEN_FILE); /var/lib/cladnet/admin.token is not readable"
    )]
    NoToken,
    /// A token file could not be used.
    #[error("token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Bad usage found after parsing (a combination of flags clap cannot check).
    #[error("{0}")]
    Usage(String),
    /// The controller answered but reports itself unhealthy.
    #[error("controller is {status}: {message}")]
    Unhealthy {
        /// The reported status.
        status: String,
        /// The reported message.
        message: String,
    },
    /// The controller answered the call but says it did not succeed.
    #[error("{action}: {message}")]
    NotSucceeded {
        /// What was attempted.
        action: String,
        /// The controller's message.
        message: String,
    },
}

impl CliError {
    /// A failed call: `action` says what was attempted; `url` is named when the controller
    /// could not be reached.
    pub(crate) fn call(action: impl Into<String>, status: &tonic::Status, url: &str) -> Self {
        let code = status.code();
        // `http://` to a TLS port connects; the first call then fails on the TLS answer.
        if let Some(e) = std::error::Error::source(status)
            .and_then(cladnet_proto::tls::find_connect_error)
            .filter(cladnet_proto::tls::ConnectError::is_tls_failure)
        {
            return Self::Tls(e.to_string());
        }
        let mut message = if status.message().is_empty() {
            code.description().to_owned()
        } else {
            status.message().to_owned()
        };
        if ExitClass::of_code(code) == ExitClass::Unavailable {
            message.push_str(&format!(" (controller {url})"));
        }
        Self::Call {
            action: action.into(),
            code,
            message,
        }
    }

    /// The exit class of this failure.
    pub(crate) fn class(&self) -> ExitClass {
        match self {
            Self::Call { code, .. } => ExitClass::of_code(*code),
            Self::Connect { .. } | Self::Tls(_) | Self::Unhealthy { .. } => ExitClass::Unavailable,
            Self::NoToken | Self::TokenFile { .. } => ExitClass::Auth,
            Self::Usage(_) => ExitClass::Usage,
            Self::NotSucceeded { .. } => ExitClass::Other,
        }
    }
}

/// The exit class of any error: the first [`CliError`] in its chain, else [`ExitClass::Other`].
pub(crate) fn class_of(err: &anyhow::Error) -> ExitClass {
    err.chain()
        .find_map(|e| e.downcast_ref::<CliError>())
        .map_or(ExitClass::Other, CliError::class)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;
    use tonic::Status;

    #[test]
    fn status_codes_map_to_classes() {
        let cases = [
            (Code::InvalidArgument, 2),
            (Code::OutOfRange, 2),
            (Code::NotFound, 3),
            (Code::Unauthenticated, 4),
            (Code::PermissionDenied, 4),
            (Code::Unavailable, 5),
            (Code::DeadlineExceeded, 5),
            (Code::Cancelled, 5),
            (Code::AlreadyExists, 6),
            (Code::FailedPrecondition, 6),
            (Code::Aborted, 6),
            (Code::Internal, 1),
            (Code::Unknown, 1),
            (Code::Unimplemented, 1),
        ];
        for (code, exit) in cases {
            let err = anyhow::Error::new(CliError::call("x", &Status::new(code, "m"), "u"));
            assert_eq!(class_of(&err).code(), exit, "{code:?}");
        }
    }

    #[test]
    fn other_errors_classes() {
        assert_eq!(class_of(&anyhow::anyhow!("boom")), ExitClass::Other);
        let connect = CliError::Connect {
            url: "http://h:1".into(),
            reason: "refused".into(),
        };
        assert_eq!(connect.class().code(), 5);
        assert_eq!(CliError::NoToken.class().code(), 4);
        assert_eq!(CliError::Usage("u".into()).class().code(), 2);
        // Found through context layers too.
        let err = Err::<(), _>(CliError::NoToken)
            .context("outer")
            .unwrap_err();
        assert_eq!(class_of(&err), ExitClass::Auth);
    }

    #[test]
    fn call_message_names_action_and_controller_when_unreachable() {
        let e = CliError::call(
            "listing networks",
            &Status::not_found("network x"),
            "http://c:8053",
        );
        assert_eq!(e.to_string(), "listing networks: network x");
        let e = CliError::call(
            "listing networks",
            &Status::unavailable("down"),
            "http://c:8053",
        );
        assert_eq!(
            e.to_string(),
            "listing networks: down (controller http://c:8053)"
        );
        let e = CliError::call("x", &Status::new(Code::Internal, ""), "u");
        assert_eq!(e.to_string(), "x: Internal error");
    }
}
