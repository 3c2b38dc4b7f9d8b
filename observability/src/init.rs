//! One call that wires tracing, JSON logs and the OpenTelemetry tracer provider.

use std::fmt;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter, TracerProviderBuilder};
use tracing::Dispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::error::{Error, Result};
use crate::json::JsonLogLayer;

/// The instrumentation scope name of the tracer this crate creates.
const SCOPE: &str = "trellis-observability";
/// Filter used when neither the builder nor `RUST_LOG` says otherwise.
const DEFAULT_FILTER: &str = "info";

/// Entry point: `Telemetry::builder("orders")...init()`.
///
/// # Examples
///
/// ```no_run
/// use trellis_observability::Telemetry;
///
/// # fn main() -> Result<(), trellis_observability::Error> {
/// // Keep the guard alive for the life of the process: dropping it flushes
/// // and shuts the tracer provider down.
/// let _guard = Telemetry::builder("orders").filter("info,orders=debug").json(true).init()?;
/// tracing::info!("up");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Telemetry;

impl Telemetry {
    /// A builder for a service called `service_name` (the OpenTelemetry
    /// `service.name`, unless `OTEL_SERVICE_NAME` overrides it).
    pub fn builder(service_name: impl Into<String>) -> TelemetryBuilder {
        TelemetryBuilder {
            service_name: service_name.into(),
            filter: None,
            span_filter: None,
            json: true,
            writer: None,
            provider: Some(SdkTracerProvider::builder()),
            #[cfg(feature = "otlp")]
            otlp: None,
        }
    }
}

/// Configures logs and traces; finish with [`init`](Self::init) (global) or
/// [`build`](Self::build) (scoped, for tests and embedders).
///
/// What it sets up:
/// - a tracing-subscriber [`Registry`](tracing_subscriber::Registry) with an
///   [`EnvFilter`] (builder filter, else `RUST_LOG`, else `info`), for
///   spans and logs alike unless a
///   [`span_filter`](TelemetryBuilder::span_filter) gives the spans their
///   own;
/// - the `tracing-opentelemetry` layer over an [`SdkTracerProvider`] whose
///   resource carries `service.name` (plus `OTEL_RESOURCE_ATTRIBUTES`), whose
///   sampler honours `OTEL_TRACES_SAMPLER`, and which exports to the exporters
///   given here and, with feature `otlp`, to OTLP/HTTP (`http/protobuf` or
///   `http/json` per `OTEL_EXPORTER_OTLP_PROTOCOL`) when
///   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set and
///   `OTEL_TRACES_EXPORTER` is not `none`; without an endpoint nothing is
///   built and no export thread runs;
/// - logs as JSON lines with `trace_id`/`span_id` ([`JsonLogLayer`]) or, with
///   `json(false)`, tracing-subscriber's human-readable format.
pub struct TelemetryBuilder {
    service_name: String,
    filter: Option<String>,
    /// [`span_filter`](TelemetryBuilder::span_filter); `None`: `filter`
    /// decides for both layers.
    span_filter: Option<String>,
    json: bool,
    writer: Option<BoxMakeWriter>,
    // Taken by `build`; `None` afterwards.
    provider: Option<TracerProviderBuilder>,
    #[cfg(feature = "otlp")]
    otlp: Option<bool>,
}

impl fmt::Debug for TelemetryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryBuilder")
            .field("service_name", &self.service_name)
            .field("filter", &self.filter)
            .field("span_filter", &self.span_filter)
            .field("json", &self.json)
            .finish_non_exhaustive()
    }
}

impl TelemetryBuilder {
    /// Log/span filter in `EnvFilter` syntax (`"info,orders=debug"`).
    /// Overrides `RUST_LOG`.
    pub fn filter(&mut self, directives: impl Into<String>) -> &mut Self {
        self.filter = Some(directives.into());
        self
    }

    /// Which spans the OpenTelemetry layer records and exports, in
    /// `EnvFilter` syntax, apart from the logs, which keep
    /// [`filter`](Self::filter). Without it one filter decides for both.
    ///
    /// Why: a trace wants every `info` span on a request's path (HTTP,
    /// commands, event appends, saga steps) while the logs of a busy
    /// service want warnings only; with one filter, quiet logs mean empty
    /// traces. Events inside a span the logs see still carry its
    /// `trace_id`.
    ///
    /// # Examples
    ///
    /// ```
    /// use opentelemetry_sdk::trace::InMemorySpanExporter;
    /// use trellis_observability::Telemetry;
    ///
    /// let exporter = InMemorySpanExporter::default();
    /// let (dispatch, guard) = Telemetry::builder("orders")
    ///     .filter("warn")
    ///     .span_filter("info")
    ///     .writer(std::io::sink)
    ///     .simple_span_exporter(exporter.clone())
    ///     .build()?;
    /// tracing::dispatcher::with_default(&dispatch, || {
    ///     tracing::info_span!("place order").in_scope(|| tracing::info!("not logged"));
    /// });
    /// assert_eq!(exporter.get_finished_spans().unwrap().len(), 1);
    /// guard.shutdown()?;
    /// # Ok::<(), trellis_observability::Error>(())
    /// ```
    pub fn span_filter(&mut self, directives: impl Into<String>) -> &mut Self {
        self.span_filter = Some(directives.into());
        self
    }

    /// JSON lines (default) or human-readable logs.
    pub fn json(&mut self, json: bool) -> &mut Self {
        self.json = json;
        self
    }

    /// Where log lines go (default: stdout).
    pub fn writer<W>(&mut self, make_writer: W) -> &mut Self
    where
        W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        self.writer = Some(BoxMakeWriter::new(make_writer));
        self
    }

    fn map_provider(
        &mut self,
        f: impl FnOnce(TracerProviderBuilder) -> TracerProviderBuilder,
    ) -> &mut Self {
        let builder = self.provider.take().unwrap_or_default();
        self.provider = Some(f(builder));
        self
    }

    /// Exports finished spans through a batch processor (its own thread).
    pub fn span_exporter<E: SpanExporter + 'static>(&mut self, exporter: E) -> &mut Self {
        self.map_provider(|b| b.with_batch_exporter(exporter))
    }

    /// Exports each span synchronously as it ends. Meant for tests (with
    /// `opentelemetry_sdk::trace::InMemorySpanExporter`) and debugging.
    pub fn simple_span_exporter<E: SpanExporter + 'static>(&mut self, exporter: E) -> &mut Self {
        self.map_provider(|b| b.with_simple_exporter(exporter))
    }

    /// Turns the OTLP exporter on or off regardless of the environment.
    ///
    /// Default: on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (non-empty) and
    /// `OTEL_TRACES_EXPORTER` is not `none`; off otherwise, so a service
    /// without a collector builds no exporter and starts no export thread.
    #[cfg(feature = "otlp")]
    pub fn otlp(&mut self, enabled: bool) -> &mut Self {
        self.otlp = Some(enabled);
        self
    }

    fn env_filter(&self) -> Result<EnvFilter> {
        let directives = match &self.filter {
            Some(d) => d.clone(),
            None => std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_FILTER.to_owned()),
        };
        EnvFilter::try_new(&directives)
            .map_err(|source| Error::InvalidFilter { directives, source })
    }

    fn resource(&self) -> Resource {
        let builder = Resource::builder();
        // OTEL_SERVICE_NAME is the operator's override; the SDK's env
        // detector has already applied it.
        match std::env::var("OTEL_SERVICE_NAME") {
            Ok(v) if !v.is_empty() => builder.build(),
            _ => builder.with_service_name(self.service_name.clone()).build(),
        }
    }

    /// Builds everything without installing it: returns a [`Dispatch`] to
    /// install with `tracing::dispatcher::set_default` /
    /// `set_global_default`, and the guard.
    ///
    /// The builder's exporters are consumed; a second `build` has none.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidFilter`] when the filter directives do not parse, and
    /// [`Error::Exporter`] when the OTLP exporter cannot be built.
    ///
    /// # Examples
    ///
    /// ```
    /// use trellis_observability::Telemetry;
    ///
    /// let (dispatch, guard) = Telemetry::builder("test").filter("debug").build()?;
    /// tracing::dispatcher::with_default(&dispatch, || tracing::debug!("scoped"));
    /// guard.shutdown()?;
    /// # Ok::<(), trellis_observability::Error>(())
    /// ```
    pub fn build(&mut self) -> Result<(Dispatch, TelemetryGuard)> {
        let filter = self.env_filter()?;
        let resource = self.resource();
        #[allow(unused_mut)]
        let mut builder = self
            .provider
            .take()
            .unwrap_or_default()
            .with_resource(resource);
        #[cfg(feature = "otlp")]
        {
            let enabled = self.otlp.unwrap_or_else(otlp_configured_by_env);
            if enabled {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .build()
                    .map_err(|e| Error::Exporter(Box::new(e)))?;
                builder = builder.with_batch_exporter(exporter);
            }
        }
        let provider = builder.build();
        let tracer = provider.tracer(SCOPE);

        let writer = self
            .writer
            .take()
            .unwrap_or_else(|| BoxMakeWriter::new(std::io::stdout));
        let logs = LogLayer {
            json: self.json,
            service_name: self.service_name.clone(),
            writer,
        };
        let dispatch = match &self.span_filter {
            // One filter: spans and events the filter rejects cost nothing
            // in any layer.
            None => Dispatch::new(
                tracing_subscriber::registry()
                    .with(filter)
                    .with(tracing_opentelemetry::layer().with_tracer(tracer))
                    .with(logs.boxed()),
            ),
            Some(directives) => {
                let span_filter =
                    EnvFilter::try_new(directives).map_err(|source| Error::InvalidFilter {
                        directives: directives.clone(),
                        source,
                    })?;
                Dispatch::new(
                    tracing_subscriber::registry()
                        .with(
                            tracing_opentelemetry::layer()
                                .with_tracer(tracer)
                                .with_filter(span_filter),
                        )
                        .with(logs.boxed().with_filter(filter)),
                )
            }
        };
        Ok((dispatch, TelemetryGuard::new(provider)))
    }

    /// Builds and installs globally: the tracing subscriber, the global
    /// OpenTelemetry tracer provider and the W3C trace-context propagator.
    ///
    /// # Errors
    ///
    /// The errors of [`TelemetryBuilder::build`], and
    /// [`Error::SubscriberAlreadySet`] when a global subscriber is already
    /// installed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let _guard = trellis_observability::Telemetry::builder("orders").init()?;
    /// # Ok::<(), trellis_observability::Error>(())
    /// ```
    pub fn init(&mut self) -> Result<TelemetryGuard> {
        let (dispatch, guard) = self.build()?;
        tracing::dispatcher::set_global_default(dispatch).map_err(Error::SubscriberAlreadySet)?;
        opentelemetry::global::set_tracer_provider(guard.provider.clone());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        Ok(guard)
    }
}

/// The log layer's settings, boxed for whichever subscriber stack it
/// ends up in (one filter for all layers, or a filter per layer).
struct LogLayer {
    json: bool,
    service_name: String,
    writer: BoxMakeWriter,
}

impl LogLayer {
    fn boxed<S>(self) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        if self.json {
            JsonLogLayer::new(self.writer)
                .with_service_name(self.service_name)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_writer(self.writer)
                .boxed()
        }
    }
}

/// Whether the standard variables ask for OTLP span export: an endpoint is
/// set and `OTEL_TRACES_EXPORTER` does not say `none`.
#[cfg(feature = "otlp")]
fn otlp_configured_by_env() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_TRACES_EXPORTER")
        .is_ok_and(|v| v.split(',').any(|e| e.trim() == "none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Flushes and shuts the tracer provider down when dropped (or explicitly
/// with [`shutdown`](Self::shutdown), which reports errors).
///
/// Keep it alive for the life of the process (`let _guard = ...`, not
/// `let _ = ...`, which drops it at once).
#[derive(Debug)]
#[must_use = "dropping the guard shuts the tracer provider down"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    shut_down: bool,
}

impl TelemetryGuard {
    fn new(provider: SdkTracerProvider) -> Self {
        Self {
            provider,
            shut_down: false,
        }
    }

    /// The tracer provider, e.g. to make extra tracers.
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Exports every finished span now.
    ///
    /// # Errors
    ///
    /// [`Error::Shutdown`] when the tracer provider fails to export what it
    /// holds.
    ///
    /// # Examples
    ///
    /// ```
    /// let (_dispatch, guard) = trellis_observability::Telemetry::builder("t").build()?;
    /// guard.force_flush()?;
    /// # Ok::<(), trellis_observability::Error>(())
    /// ```
    pub fn force_flush(&self) -> Result<()> {
        self.provider.force_flush().map_err(Error::Shutdown)
    }

    /// Flushes and shuts down, reporting failures that `Drop` has to ignore.
    ///
    /// # Errors
    ///
    /// [`Error::Shutdown`] when the tracer provider does not flush and shut
    /// down cleanly.
    ///
    /// # Examples
    ///
    /// ```
    /// let (_dispatch, guard) = trellis_observability::Telemetry::builder("t").build()?;
    /// guard.shutdown()?;
    /// # Ok::<(), trellis_observability::Error>(())
    /// ```
    pub fn shutdown(mut self) -> Result<()> {
        self.shut_down = true;
        self.provider.shutdown().map_err(Error::Shutdown)
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if !self.shut_down {
            self.shut_down = true;
            // Nothing to report to from a destructor; `shutdown()` reports.
            let _ = self.provider.shutdown();
        }
    }
}
