//! crustd's own Prometheus metrics on `/metrics` (off unless
//! `[metrics] address` is set): per-RPC requests, errors by gRPC code and
//! latency; what pulls downloaded; sandboxes and containers by state;
//! running shims; crustd's resident memory and open file descriptors.
//!
//! RPC figures are counted as calls happen (by the one RPC wrapper); the
//! rest is read from the runtime when a scrape arrives.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use crust_runtime::Runtime;
use crust_runtime::container::{ContainerFilter, ContainerState};
use crust_runtime::sandbox::{SandboxFilter, SandboxState};
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::stream::http::{plain, serve_http1};

/// The content type of the OpenMetrics text format prometheus-client writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 65 s.
    Histogram::new(exponential_buckets(0.00025, 4.0, 10))
}

/// Every metric, registered once.
struct Metrics {
    registry: Registry,
    requests: Family<MethodLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<MethodLabel, Histogram, fn() -> Histogram>,
    scraped: Mutex<Scraped>,
}

/// What is read from the runtime at each scrape.
struct Scraped {
    pulled_bytes: Counter,
    pulled_layers: Counter,
    sandboxes: Family<StateLabel, Gauge>,
    containers: Family<StateLabel, Gauge>,
    shims: Gauge,
    rss: Gauge,
    fds: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<MethodLabel, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency = Family::<MethodLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let scraped = Scraped {
            pulled_bytes: Counter::default(),
            pulled_layers: Counter::default(),
            sandboxes: Family::default(),
            containers: Family::default(),
            shims: Gauge::default(),
            rss: Gauge::default(),
            fds: Gauge::default(),
        };
        {
            let crust = registry.sub_registry_with_prefix("crust");
            crust.register(
                "grpc_requests",
                "CRI calls served, by method",
                requests.clone(),
            );
            crust.register(
                "grpc_errors",
                "CRI calls that failed, by method and gRPC status code",
                errors.clone(),
            );
            crust.register(
                "grpc_request_duration_seconds",
                "How long CRI calls took, by method",
                latency.clone(),
            );
            crust.register(
                "image_pulled_bytes",
                "Layer bytes downloaded from registries",
                scraped.pulled_bytes.clone(),
            );
            crust.register(
                "image_pulled_layers",
                "Layers downloaded and unpacked",
                scraped.pulled_layers.clone(),
            );
            crust.register(
                "sandboxes",
                "Pod sandboxes, by state",
                scraped.sandboxes.clone(),
            );
            crust.register(
                "containers",
                "Containers, by state",
                scraped.containers.clone(),
            );
            crust.register(
                "shims_running",
                "crust-shim processes alive",
                scraped.shims.clone(),
            );
        }
        registry.register(
            "process_resident_memory_bytes",
            "crustd's resident memory",
            scraped.rss.clone(),
        );
        registry.register(
            "process_open_fds",
            "crustd's open file descriptors",
            scraped.fds.clone(),
        );
        Metrics {
            registry,
            requests,
            errors,
            latency,
            scraped: Mutex::new(scraped),
        }
    }
}

/// Counts one CRI call: `code` is `None` when it succeeded.
pub fn record_rpc(method: &str, elapsed: Duration, code: Option<tonic::Code>) {
    let m = &*METRICS;
    let label = MethodLabel {
        method: method.to_string(),
    };
    m.requests.get_or_create(&label).inc();
    m.latency
        .get_or_create(&label)
        .observe(elapsed.as_secs_f64());
    if let Some(code) = code {
        m.errors
            .get_or_create(&ErrorLabels {
                method: method.to_string(),
                code: format!("{code:?}"),
            })
            .inc();
    }
}

/// The current figures in Prometheus text format (blocking: it reads /proc).
pub fn render(runtime: &Runtime) -> String {
    let m = &*METRICS;
    {
        let s = m.scraped.lock().unwrap_or_else(|p| p.into_inner());
        let (bytes, layers) = runtime.images().pull_totals();
        catch_up(&s.pulled_bytes, bytes);
        catch_up(&s.pulled_layers, layers);
        let sandboxes = runtime.list_sandboxes(&SandboxFilter::default());
        for (state, word) in [
            (SandboxState::Ready, "ready"),
            (SandboxState::NotReady, "notready"),
        ] {
            let n = sandboxes.iter().filter(|sb| sb.state == state).count();
            set(&s.sandboxes, word, n);
        }
        let containers = runtime.list_containers(&ContainerFilter::default());
        for (state, word) in [
            (ContainerState::Created, "created"),
            (ContainerState::Running, "running"),
            (ContainerState::Exited, "exited"),
            (ContainerState::Unknown, "unknown"),
        ] {
            let n = containers.iter().filter(|c| c.state == state).count();
            set(&s.containers, word, n);
        }
        let shims = containers
            .iter()
            .filter(|c| crust_runtime::sys::process::alive(c.shim_pid, "crust-shim"))
            .count();
        s.shims.set(i64::try_from(shims).unwrap_or(i64::MAX));
        let (rss, fds) = crust_runtime::sys::process::own_rss_and_fds();
        s.rss.set(i64::try_from(rss).unwrap_or(i64::MAX));
        s.fds.set(i64::try_from(fds).unwrap_or(i64::MAX));
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &m.registry) {
        tracing::warn!(error = %e, "encoding the metrics failed");
    }
    out
}

/// Moves a counter up to `total` (read from a running count elsewhere).
fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

fn set(family: &Family<StateLabel, Gauge>, state: &str, n: usize) {
    family
        .get_or_create(&StateLabel {
            state: state.to_string(),
        })
        .set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// Serves `/metrics` on `address` (`host:port`) from now on.
pub async fn start(address: &str, runtime: Arc<Runtime>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics server to {address}"))?;
    let addr = listener
        .local_addr()
        .context("the metrics server's address")?;
    tracing::info!(address = %addr, "serving Prometheus metrics on /metrics");
    tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let runtime = runtime.clone();
            tokio::spawn(serve_http1(tcp, move |req| {
                if req.uri().path() != "/metrics" {
                    return plain(StatusCode::NOT_FOUND, "not found; metrics are on /metrics");
                }
                if req.method() != Method::GET {
                    return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET");
                }
                let text = tokio::task::block_in_place(|| render(&runtime));
                let mut reply = plain(StatusCode::OK, "");
                *reply.body_mut() = text.into();
                reply
                    .headers_mut()
                    .insert("content-type", HeaderValue::from_static(CONTENT_TYPE));
                reply
            }));
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_figures_are_counted() {
        record_rpc("Version", Duration::from_millis(1), None);
        record_rpc(
            "Version",
            Duration::from_millis(2),
            Some(tonic::Code::NotFound),
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &METRICS.registry).unwrap();
        assert!(
            out.contains("crust_grpc_requests_total{method=\"Version\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("crust_grpc_errors_total{method=\"Version\",code=\"NotFound\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("crust_grpc_request_duration_seconds_count{method=\"Version\"} 2"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
