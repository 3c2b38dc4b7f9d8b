//! The crate's error type.

/// A boxed error from a dependency whose concrete type is an implementation
/// detail (the OTLP exporter's build error, for one).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while setting up or tearing down telemetry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The log filter (from the builder or `RUST_LOG`) is not valid
    /// `EnvFilter` syntax.
    #[error("invalid log filter `{directives}`")]
    InvalidFilter {
        /// The directives that failed to parse.
        directives: String,
        /// Why they failed.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global tracing subscriber was already installed, so `init` could
    /// not install ours. Use `build` and install the dispatcher yourself.
    #[error("a global tracing subscriber is already installed")]
    SubscriberAlreadySet(#[source] tracing::subscriber::SetGlobalDefaultError),
    /// The span exporter (OTLP) could not be built from its configuration.
    #[error("the span exporter could not be built")]
    Exporter(#[source] BoxError),
    /// Flushing or shutting down the tracer provider failed.
    #[error("the tracer provider did not shut down cleanly")]
    Shutdown(#[source] opentelemetry_sdk::error::OTelSdkError),
    /// Rendering the metrics registry as OpenMetrics text failed.
    #[error("the metrics registry could not be encoded")]
    Encode(#[source] std::fmt::Error),
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
