//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf), off unless an
//! endpoint is configured (`[telemetry] otlp_endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! The spans themselves are `tracing` spans made by the paywall (each
//! request, its store and Lightning calls: [`gate402_paywall::observe`])
//! and by the proxy (the upstream call). [`Telemetry::layer`] is the
//! `tracing-subscriber` layer that turns them into OpenTelemetry spans;
//! the program adds it to its subscriber, and calls
//! [`Telemetry::shutdown`] on its way out so that the last spans are sent.

use std::time::Duration;

use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;
use tracing::field::Empty;
use tracing::{Level, Metadata, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, FilterFn, Filtered};
use tracing_subscriber::layer::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The standard variable naming the collector's base URL, used when the
/// config names none.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The standard variable naming the service, used when the config names
/// none.
pub const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";

/// The service name traces carry unless configured.
pub const DEFAULT_SERVICE_NAME: &str = "gate402";

/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[telemetry]`: where traces go.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`); spans
    /// are posted to `<otlp_endpoint>/v1/traces`. Unset (and no
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`): no traces.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of every span (default: `OTEL_SERVICE_NAME`, else
    /// `gate402`).
    #[serde(default)]
    pub service_name: Option<String>,
    /// The share of requests traced, 0.0 to 1.0 (default 1.0), decided
    /// per trace.
    #[serde(default = "TelemetryConfig::default_sample_ratio")]
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: None,
            sample_ratio: Self::default_sample_ratio(),
        }
    }
}

impl TelemetryConfig {
    fn default_sample_ratio() -> f64 {
        1.0
    }

    /// The service name spans carry.
    pub fn service_name(&self) -> &str {
        self.service_name.as_deref().unwrap_or(DEFAULT_SERVICE_NAME)
    }

    /// Takes the endpoint and service name from the standard variables
    /// (read through `env`) where the config names none.
    ///
    /// # Errors
    ///
    /// The message for a variable whose value [`check_endpoint`] or
    /// [`check_service_name`] refuses, prefixed with its name.
    pub fn inherit_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        let set = |name| env(name).filter(|v: &String| !v.is_empty());
        if self.otlp_endpoint.is_none() {
            if let Some(endpoint) = set(ENDPOINT_ENV) {
                check_endpoint(&endpoint).map_err(|e| format!("{ENDPOINT_ENV}: {e}"))?;
                self.otlp_endpoint = Some(endpoint);
            }
        }
        if self.service_name.is_none() {
            if let Some(name) = set(SERVICE_NAME_ENV) {
                check_service_name(&name).map_err(|e| format!("{SERVICE_NAME_ENV}: {e}"))?;
                self.service_name = Some(name);
            }
        }
        Ok(())
    }

    /// The URL spans are posted to: the OTLP/HTTP traces path under the
    /// endpoint, as for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?;
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }
}

/// Whether `endpoint` is an `http://` or `https://` URL with a host.
///
/// # Errors
///
/// What is wrong with it.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: axum::http::Uri = endpoint
        .parse()
        .map_err(|_| format!("{endpoint:?} is not a URL like http://127.0.0.1:4318"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => {}
        _ => return Err(format!("{endpoint:?} is not an http(s) URL with a host")),
    }
    if uri
        .authority()
        .is_some_and(|a| !crate::config::port_is_valid(a))
    {
        return Err(crate::config::no_valid_port(endpoint));
    }
    if uri.query().is_some() {
        return Err(format!(
            "{endpoint:?}: a base URL takes no query (/v1/traces is added to its path)"
        ));
    }
    Ok(())
}

/// Whether `name` can be a `service.name`: 1 to 255 characters, none a
/// control character.
///
/// # Errors
///
/// What is wrong with it.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err("must be 1 to 255 characters, none of them control characters".into());
    }
    Ok(())
}

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (its HTTP client, its URL).
    #[error("telemetry: the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The last spans could not be sent on the way out.
    #[error("telemetry: sending the last spans: {0}")]
    Shutdown(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// Traces being exported: the tracer provider, whose batch exporter runs
/// on a thread of its own (no async runtime needed, none blocked).
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

/// The filter of [`Telemetry::layer`]: gate402's spans and events at INFO
/// and above, so that no library's (nor the exporter's own HTTP client's)
/// reach the exporter.
pub type OwnSpans = FilterFn<fn(&Metadata<'_>) -> bool>;

fn own_spans(metadata: &Metadata<'_>) -> bool {
    metadata.target().starts_with("gate402") && *metadata.level() <= Level::INFO
}

impl Telemetry {
    /// Starts exporting as `config` says; `None` when it names no
    /// endpoint (telemetry off: nothing is built, nothing sent).
    ///
    /// # Errors
    ///
    /// [`TelemetryError::Exporter`].
    pub fn start(config: &TelemetryConfig) -> Result<Option<Self>, TelemetryError> {
        let Some(url) = config.traces_url() else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        let ratio = config.sample_ratio.clamp(0.0, 1.0);
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            // By trace id alone, so that a caller's `traceparent` cannot
            // have a trace kept against the ratio.
            .with_sampler(Sampler::TraceIdRatioBased(ratio))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name().to_owned())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("gate402");
        Ok(Some(Self { provider, tracer }))
    }

    /// The layer that turns gate402's `tracing` spans into OpenTelemetry
    /// spans, filtered to them ([`OwnSpans`]).
    pub fn layer<S>(
        &self,
    ) -> Filtered<tracing_opentelemetry::OpenTelemetryLayer<S, Tracer>, OwnSpans, S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            // Where in the source, in which module and on which thread is
            // noise here; and busy/idle times are the span's own duration,
            // split.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            .with_filter(filter_fn(own_spans as fn(&Metadata<'_>) -> bool))
    }

    /// Sends the spans not sent yet and stops the exporter. Blocks until
    /// they are sent or the export times out: call it outside the async
    /// runtime, or from a blocking task.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::Shutdown`].
    pub fn shutdown(self) -> Result<(), TelemetryError> {
        self.provider.shutdown()?;
        Ok(())
    }
}

/// The span of a call to an upstream, client kind, named after its method
/// as OpenTelemetry's HTTP client conventions say, with `server.address`,
/// `server.port`, `url.full` (its query left out: it may carry keys) and
/// the service it serves. Only inside a traced request (its child): a
/// call made for a paid MCP tool, outside any, starts no trace of its own.
pub(crate) fn upstream_span(
    method: &Method,
    scheme: &Scheme,
    authority: &Authority,
    path: &str,
    service: Option<&str>,
) -> Span {
    let request = Span::current();
    if request.is_none() {
        return Span::none();
    }
    let span = tracing::info_span!(
        parent: &request,
        "upstream",
        otel.name = method.as_str(),
        otel.kind = "client",
        otel.status_code = Empty,
        error.type = Empty,
        http.request.method = method.as_str(),
        http.response.status_code = Empty,
        server.address = authority.host(),
        server.port = authority
            .port_u16()
            .unwrap_or(if *scheme == Scheme::HTTPS { 443 } else { 80 }),
        url.full = Empty,
        gate402.service = service,
    );
    if !span.is_disabled() {
        span.record("url.full", url_full(scheme, authority, path).as_str());
    }
    span
}

/// A URL as `url.full` records it: scheme, host, port and path; no user
/// name or password (an upstream URL may carry them), no query.
fn url_full(scheme: &Scheme, authority: &Authority, path: &str) -> String {
    let host = authority.host();
    match authority.port() {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    }
}

/// Puts `span`'s trace context into `headers` (W3C `traceparent`), so
/// that an upstream that traces joins the request's trace. Nothing when
/// the span is not traced.
pub(crate) fn propagate(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}

/// The upstream's answer on its span: its status, an error for a 4xx or
/// 5xx (a client span's rule), or `failure` when there was no answer.
pub(crate) fn upstream_answered(span: &Span, answer: Result<StatusCode, &'static str>) {
    if span.is_disabled() {
        return;
    }
    match answer {
        Ok(status) => {
            span.record("http.response.status_code", status.as_u16());
            if status.is_client_error() || status.is_server_error() {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", status.as_str());
            }
        }
        Err(failure) => {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", failure);
        }
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GatewayConfig;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<GatewayConfig, Vec<String>> {
        GatewayConfig::parse(text, |name| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .map_err(|e| e.0)
    }

    #[test]
    fn an_upstream_url_is_recorded_without_its_user_or_query() {
        use axum::http::Uri;
        let uri: Uri = "https://user:secret@api.example:8443/v1/x?key=k"
            .parse()
            .unwrap();
        let full =
            |uri: &Uri| url_full(uri.scheme().unwrap(), uri.authority().unwrap(), uri.path());
        assert_eq!(full(&uri), "https://api.example:8443/v1/x");
        let uri: Uri = "http://[::1]/a".parse().unwrap();
        assert_eq!(full(&uri), "http://[::1]/a");
    }

    #[test]
    fn off_unless_an_endpoint_is_named() {
        let config = parse("", &[]).unwrap();
        assert_eq!(config.telemetry, TelemetryConfig::default());
        assert_eq!(config.telemetry.traces_url(), None);
        assert!(Telemetry::start(&config.telemetry).unwrap().is_none());
    }

    #[test]
    fn the_table_is_read_and_defaults_filled() {
        let config = parse(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/\"\nsample_ratio = 0.25\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.telemetry.traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(config.telemetry.sample_ratio, 0.25);
        assert_eq!(config.telemetry.service_name(), "gate402");
    }

    #[test]
    fn the_standard_variables_apply_where_the_config_is_silent() {
        let env = [
            (ENDPOINT_ENV, "https://collector.example:4318/otlp"),
            (SERVICE_NAME_ENV, "paid-api"),
        ];
        let config = parse("", &env).unwrap();
        assert_eq!(
            config.telemetry.traces_url().as_deref(),
            Some("https://collector.example:4318/otlp/v1/traces")
        );
        assert_eq!(config.telemetry.service_name(), "paid-api");
        let config = parse(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nservice_name = \"mine\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(
            config.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(config.telemetry.service_name(), "mine");
    }

    #[test]
    fn bad_values_are_named_by_their_key_path() {
        let errors = parse(
            "[telemetry]\notlp_endpoint = \"grpc://x\"\nsample_ratio = 1.5\nservice_name = \"\"\ncolor = 1\n",
            &[],
        )
        .unwrap_err();
        for key in [
            "telemetry.otlp_endpoint",
            "telemetry.sample_ratio",
            "telemetry.service_name",
            "telemetry.color",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key} not in {errors:?}"
            );
        }
        let errors = parse("", &[(ENDPOINT_ENV, "not a url")]).unwrap_err();
        assert!(errors[0].starts_with(ENDPOINT_ENV), "{errors:?}");
        let errors = parse("[telemetry]\nsample_ratio = \"all\"\n", &[]).unwrap_err();
        assert!(
            errors[0].starts_with("telemetry.sample_ratio"),
            "{errors:?}"
        );
    }
}
