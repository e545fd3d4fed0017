//! Error types by who caused them (client, upstream, gateway) and the one place
//! that maps each to an HTTP status. Nothing here does I/O.

use std::fmt;

/// The client sent something we refuse, or went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// Malformed or ambiguous request (framing, headers, target).
    BadRequest(&'static str),
    HeaderTooLarge,
    UriTooLong,
    BodyTooLarge,
    /// A transfer coding or method we do not implement.
    NotImplemented(&'static str),
    ExpectationFailed,
    HeaderTimeout,
    BodyTimeout,
    /// The connection closed or failed; there is nobody to answer.
    Gone,
}

/// The upstream failed. `Connect*` happen before any byte was sent, so they are always safe to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    ConnectRefused,
    ConnectTimeout,
    /// Reset/closed before the first response byte.
    Reset,
    SendTimeout,
    ReadTimeout,
    /// Unparseable or ambiguous response framing.
    BadResponse(&'static str),
    /// Closed in the middle of a response body.
    Truncated,
}

impl UpstreamError {
    /// Failures that count against a node for passive health.
    pub fn counts_as_node_failure(self) -> bool {
        !matches!(self, UpstreamError::BadResponse(_))
    }
}

/// Everything the proxy path can end in, mapped to a status in `status()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    Client(ClientError),
    Upstream(UpstreamError),
    NoRoute,
}

impl ProxyError {
    /// The one mapping from errors to HTTP status codes.
    pub fn status(self) -> u16 {
        match self {
            ProxyError::Client(c) => match c {
                ClientError::BadRequest(_) => 400,
                ClientError::HeaderTooLarge => 431,
                ClientError::UriTooLong => 414,
                ClientError::BodyTooLarge => 413,
                ClientError::NotImplemented(_) => 501,
                ClientError::ExpectationFailed => 417,
                ClientError::HeaderTimeout | ClientError::BodyTimeout => 408,
                ClientError::Gone => 499,
            },
            ProxyError::Upstream(u) => match u {
                UpstreamError::ConnectTimeout
                | UpstreamError::ReadTimeout
                | UpstreamError::SendTimeout => 504,
                _ => 502,
            },
            ProxyError::NoRoute => 404,
        }
    }

    /// Short message for the JSON error body.
    pub fn message(self) -> &'static str {
        match self {
            ProxyError::Client(c) => match c {
                ClientError::BadRequest(m) | ClientError::NotImplemented(m) => m,
                ClientError::HeaderTooLarge => "request header too large",
                ClientError::UriTooLong => "request line too long",
                ClientError::BodyTooLarge => "request body too large",
                ClientError::ExpectationFailed => "unsupported expectation",
                ClientError::HeaderTimeout => "timed out reading request header",
                ClientError::BodyTimeout => "timed out reading request body",
                ClientError::Gone => "client closed connection",
            },
            ProxyError::Upstream(u) => match u {
                UpstreamError::ConnectRefused => "upstream connection failed",
                UpstreamError::ConnectTimeout => "upstream connect timed out",
                UpstreamError::Reset => "upstream closed the connection",
                UpstreamError::SendTimeout => "upstream send timed out",
                UpstreamError::ReadTimeout => "upstream response timed out",
                UpstreamError::BadResponse(m) => m,
                UpstreamError::Truncated => "upstream response truncated",
            },
            ProxyError::NoRoute => "no route matched",
        }
    }
}

impl From<ClientError> for ProxyError {
    fn from(e: ClientError) -> Self {
        ProxyError::Client(e)
    }
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        ProxyError::Upstream(e)
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.status())
    }
}

impl std::error::Error for ProxyError {}

/// A configuration error: which key is wrong and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path such as `routes[0].upstream`; empty for file-level errors.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
