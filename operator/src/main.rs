//! `hearth-operator`: parse flags, set up logging, elect a leader, run the controllers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use hearth_operator::builders::BuildContext;
use hearth_operator::controller::{self, Context};
use hearth_operator::leader::{self, LeaseConfig};
use hearth_operator::metrics::Metrics;
use hearth_operator::web::{self, Health};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

/// Hearth's Kubernetes operator.
#[derive(Debug, Parser)]
#[command(name = "hearth-operator", version)]
struct Flags {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Skip leader election (one replica only).
    #[arg(long)]
    no_leader_election: bool,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "hearth-system")]
    lease_namespace: String,
    /// This replica's identity in the election.
    #[arg(long, env = "POD_NAME", default_value = "hearth-operator")]
    identity: String,
    /// Image of hearth-server for CPU and Apple models.
    #[arg(long, env = "HEARTH_SERVER_IMAGE")]
    server_image: Option<String>,
    /// Image of hearth-server built with CUDA, for nvidia models.
    #[arg(long, env = "HEARTH_SERVER_IMAGE_CUDA")]
    server_image_cuda: Option<String>,
    /// StorageClass of model caches and managed Qdrant storage (default: the cluster's default).
    #[arg(long)]
    storage_class: Option<String>,
    /// Image of the managed Qdrant run for KnowledgeBases that name no external one.
    #[arg(long, env = "HEARTH_QDRANT_IMAGE")]
    qdrant_image: Option<String>,
    /// Storage claimed by each managed Qdrant (a quantity, e.g. 10Gi).
    #[arg(long)]
    qdrant_storage_size: Option<String>,
    /// A ConfigMap in the operator's namespace whose `profiles.yaml` adds or replaces
    /// hardware profiles (read at start).
    #[arg(long)]
    profiles_configmap: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    init_logging();
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (KUBECONFIG or in-cluster config)")?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(flags.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", flags.metrics_addr))?;
    tokio::spawn(
        axum::serve(listener, web::router(Health { metrics: metrics.clone(), ready: ready.clone() })).into_future(),
    );

    let mut build = BuildContext::new();
    if let Some(image) = flags.server_image {
        build.server_image = image;
    }
    if let Some(image) = flags.server_image_cuda {
        build.server_image_cuda = image;
    }
    build.storage_class = flags.storage_class;
    if let Some(image) = flags.qdrant_image {
        build.qdrant_image = image;
    }
    if let Some(size) = flags.qdrant_storage_size {
        build.qdrant_storage_size = size;
    }
    build.operator_namespace = Some(flags.lease_namespace.clone());
    if let Some(name) = &flags.profiles_configmap {
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &flags.lease_namespace);
        let cm = cms.get(name).await.with_context(|| format!("cannot read the profiles ConfigMap {name}"))?;
        let yaml = cm
            .data
            .and_then(|d| d.get("profiles.yaml").cloned())
            .with_context(|| format!("ConfigMap {name} has no profiles.yaml"))?;
        build.profiles = hearth_operator::sizing::profiles_with_overrides(&yaml).map_err(anyhow::Error::msg)?;
    }
    build.keda_available = Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt("scaledobjects.keda.sh")
        .await
        .ok()
        .flatten()
        .is_some();
    tracing::info!(keda = build.keda_available, "starting");

    let ctx = Arc::new(Context::new(client.clone(), build, metrics));
    ready.store(true, Ordering::Release);
    if flags.no_leader_election {
        controller::run(ctx, flags.namespace, shutdown_signal()).await;
        return Ok(());
    }
    let lease = LeaseConfig {
        name: "hearth-operator".into(),
        namespace: flags.lease_namespace.clone(),
        identity: flags.identity,
        duration: Duration::from_secs(15),
    };
    let leases: Api<Lease> = Api::namespaced(client, &lease.namespace);
    tokio::select! {
        _ = leader::acquire(&leases, &lease, Duration::from_secs(2)) => {}
        _ = shutdown_signal() => return Ok(()),
    }
    tracing::info!(identity = %lease.identity, "leading: controllers start");
    let lost = {
        let leases = leases.clone();
        let lease = lease.clone();
        async move { leader::hold(&leases, &lease, Duration::from_secs(5)).await }
    };
    let stop = async move {
        tokio::select! {
            _ = lost => tracing::warn!("leadership lost: stopping"),
            _ = shutdown_signal() => {}
        }
    };
    controller::run(ctx, flags.namespace, stop).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
