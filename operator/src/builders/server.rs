//! Pieces every `hearth-server` pod shares, whether it serves a model or routes a cascade:
//! the HTTP port and its Service, probes, draining on shutdown, scratch space, the mounted
//! configuration and the annotation that rolls pods when it changes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, Lifecycle, LifecycleHandler, Probe,
    Service, ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::metadata::{HTTP_PORT, Owner};

/// Where the configuration ConfigMap is mounted.
pub(crate) const CONFIG_DIR: &str = "/etc/hearth";
/// Pod-template annotation holding the SHA-256 of the configuration the pod reads, so a
/// configuration change rolls the Deployment.
pub(crate) const CONFIG_HASH_ANNOTATION: &str = "hearth.dev/config-sha256";
/// Seconds a terminating pod keeps serving before SIGTERM, so that endpoints controllers and
/// kube-proxy stop sending it new requests first.
pub(crate) const PRE_STOP_SECONDS: i64 = 5;
const PORT_NAME: &str = "http";

pub(crate) fn quantity(text: &str) -> Quantity {
    Quantity(text.to_owned())
}

/// The server's one port: API, health and metrics.
pub(crate) fn http_port() -> ContainerPort {
    ContainerPort {
        name: Some(PORT_NAME.into()),
        container_port: HTTP_PORT,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// An HTTP GET probe on the server port.
pub(crate) fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Sleeps before SIGTERM so endpoints drain (the kubelet's sleep action: the image needs no
/// shell).
pub(crate) fn drain_lifecycle() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction { seconds: PRE_STOP_SECONDS }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// Prometheus scrape annotations and the configuration hash, for a pod template.
pub(crate) fn pod_annotations(config_hash: String) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), HTTP_PORT.to_string()),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
        (CONFIG_HASH_ANNOTATION.to_owned(), config_hash),
    ])
}

/// Scratch space at /tmp, the only writable path besides mounted volumes.
pub(crate) fn tmp_volume() -> (Volume, VolumeMount) {
    let volume = Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(quantity("1Gi")), medium: None }),
        ..Volume::default()
    };
    (volume, mount("tmp", "/tmp", false))
}

/// The configuration ConfigMap as a volume (mount it at [`CONFIG_DIR`]).
pub(crate) fn config_volume(config_map: &str) -> Volume {
    Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource { name: config_map.to_owned(), ..ConfigMapVolumeSource::default() }),
        ..Volume::default()
    }
}

pub(crate) fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// Start one new pod before stopping an old one, never dropping below the desired count.
pub(crate) fn rolling_update() -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(0)),
        }),
    }
}

/// A ClusterIP Service on port 8080 (named `http`) selecting the owner's pods.
pub(crate) fn desired_service(owner: &Owner, name: String, component: &str) -> Service {
    Service {
        metadata: owner.meta(name, component),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(owner.selector_labels(component)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
