//! The Pod Security "restricted" profile: the security contexts every Hearth pod runs with,
//! and a checker for any pod spec (the builders' tests and the chart's tests use it).

use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, ContainerPort, PodSecurityContext, PodSpec, SELinuxOptions, SeccompProfile,
    SecurityContext,
};

/// The unprivileged user (and group) Hearth's containers run as: distroless's `nonroot`.
pub const RUN_AS_USER: i64 = 65532;

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }
}

/// Pod-level settings: non-root, the default seccomp profile, and an fsGroup so the
/// unprivileged user can write the model cache volume.
pub(crate) fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        // Re-owning a large model cache on every start would delay it by minutes.
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..PodSecurityContext::default()
    }
}

/// Container-level settings, repeated on every container so each one passes the profile on
/// its own (an admission check may look at containers, not at the pod).
pub(crate) fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// Volume types the restricted profile allows.
fn volume_type_allowed(volume: &k8s_openapi::api::core::v1::Volume) -> bool {
    volume.config_map.is_some()
        || volume.csi.is_some()
        || volume.downward_api.is_some()
        || volume.empty_dir.is_some()
        || volume.ephemeral.is_some()
        || volume.persistent_volume_claim.is_some()
        || volume.projected.is_some()
        || volume.secret.is_some()
}

/// Sysctls the baseline profile treats as safe.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const SELINUX_TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

fn seccomp_allowed(profile: &SeccompProfile) -> bool {
    matches!(profile.type_.as_str(), "RuntimeDefault" | "Localhost")
}

fn app_armor_violation(profile: Option<&AppArmorProfile>) -> Option<&'static str> {
    profile.filter(|p| p.type_ == "Unconfined").map(|_| "AppArmor profile must not be Unconfined")
}

fn selinux_violation(options: Option<&SELinuxOptions>) -> Option<&'static str> {
    let options = options?;
    let type_ok = SELINUX_TYPES.contains(&options.type_.as_deref().unwrap_or_default());
    let user_role_unset = options.user.as_deref().unwrap_or_default().is_empty()
        && options.role.as_deref().unwrap_or_default().is_empty();
    (!type_ok || !user_role_unset).then_some("SELinux options may set only an allowed type")
}

/// Every way `spec` breaks the Pod Security "restricted" profile (which includes
/// "baseline"), one sentence per problem naming the container or volume; empty when it
/// complies. Covers what Hearth's pods could plausibly get wrong: host namespaces, hostPath
/// and other non-restricted volume types, host ports, privileged containers, privilege
/// escalation, running as root, capabilities (drop ALL; add at most NET_BIND_SERVICE),
/// seccomp, AppArmor, SELinux, procMount and unsafe sysctls.
pub fn restricted_profile_violations(spec: &PodSpec) -> Vec<String> {
    let mut violations = Vec::new();
    let pod = spec.security_context.as_ref();

    for (set, field) in [(spec.host_network, "hostNetwork"), (spec.host_pid, "hostPID"), (spec.host_ipc, "hostIPC")] {
        if set == Some(true) {
            violations.push(format!("pod: {field} must not be true"));
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            violations.push(format!("volume \"{}\": hostPath volumes are not allowed", volume.name));
        } else if !volume_type_allowed(volume) {
            violations.push(format!(
                "volume \"{}\": only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected and secret volumes are allowed",
                volume.name
            ));
        }
    }
    if let Some(pod) = pod {
        if pod.run_as_non_root == Some(false) {
            violations.push("pod: runAsNonRoot must not be false".to_owned());
        }
        if pod.run_as_user == Some(0) {
            violations.push("pod: runAsUser must not be 0".to_owned());
        }
        if pod.seccomp_profile.as_ref().is_some_and(|p| !seccomp_allowed(p)) {
            violations.push("pod: seccompProfile.type must be RuntimeDefault or Localhost".to_owned());
        }
        if let Some(message) = app_armor_violation(pod.app_armor_profile.as_ref()) {
            violations.push(format!("pod: {message}"));
        }
        if let Some(message) = selinux_violation(pod.se_linux_options.as_ref()) {
            violations.push(format!("pod: {message}"));
        }
        for sysctl in pod.sysctls.iter().flatten() {
            if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
                violations.push(format!("pod: sysctl {} is not in the safe set", sysctl.name));
            }
        }
    }

    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("init container", &c.name, c.security_context.as_ref(), c.ports.as_deref()))
        .chain(spec.containers.iter().map(|c| ("container", &c.name, c.security_context.as_ref(), c.ports.as_deref())))
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| ("ephemeral container", &c.name, c.security_context.as_ref(), c.ports.as_deref())),
        );
    for (what, name, context, ports) in containers {
        let mut problem = |message: &str| violations.push(format!("{what} \"{name}\": {message}"));
        check_container(context, pod, ports.unwrap_or_default(), &mut problem);
    }
    violations
}

fn check_container(
    context: Option<&SecurityContext>,
    pod: Option<&PodSecurityContext>,
    ports: &[ContainerPort],
    problem: &mut impl FnMut(&str),
) {
    if ports.iter().any(|p| p.host_port.is_some_and(|port| port != 0)) {
        problem("hostPort must not be set");
    }
    let default = SecurityContext::default();
    let c = context.unwrap_or(&default);
    if c.privileged == Some(true) {
        problem("privileged must not be true");
    }
    if c.allow_privilege_escalation != Some(false) {
        problem("allowPrivilegeEscalation must be false");
    }
    let non_root = c.run_as_non_root.or_else(|| pod.and_then(|p| p.run_as_non_root));
    if non_root != Some(true) {
        problem("runAsNonRoot must be true (on the container or the pod)");
    }
    if c.run_as_user == Some(0) {
        problem("runAsUser must not be 0");
    }
    let seccomp = c.seccomp_profile.as_ref().or_else(|| pod.and_then(|p| p.seccomp_profile.as_ref()));
    if !seccomp.is_some_and(seccomp_allowed) {
        problem("seccompProfile.type must be RuntimeDefault or Localhost (on the container or the pod)");
    }
    let capabilities = c.capabilities.as_ref();
    if !capabilities.and_then(|c| c.drop.as_ref()).is_some_and(|drop| drop.iter().any(|d| d == "ALL")) {
        problem("capabilities.drop must include ALL");
    }
    for added in capabilities.and_then(|c| c.add.as_ref()).into_iter().flatten() {
        if added != "NET_BIND_SERVICE" {
            problem(&format!("capability {added} must not be added (only NET_BIND_SERVICE may be)"));
        }
    }
    if c.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        problem("procMount must be Default");
    }
    if let Some(message) = app_armor_violation(c.app_armor_profile.as_ref()) {
        problem(message);
    }
    if let Some(message) = selinux_violation(c.se_linux_options.as_ref()) {
        problem(message);
    }
}
