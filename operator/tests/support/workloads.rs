//! The parts of a cluster the operator relies on but does not run, played by the test: the
//! Deployment, StatefulSet and Job controllers and the kubelet, writing the status they would.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Whether a Deployment's status reports its current spec rolled out and every replica ready.
pub fn deployment_ready(d: &Deployment) -> bool {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    status.observed_generation == d.metadata.generation
        && [status.replicas, status.ready_replicas, status.updated_replicas, status.available_replicas]
            .iter()
            .all(|n| *n == Some(replicas))
}

/// Marks a Deployment rolled out and ready, as the Deployment controller would.
pub async fn make_ready(deployments: &Api<Deployment>, name: &str) -> Result<(), kube::Error> {
    let d = deployments.get(name).await?;
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = json!({"status": {
        "observedGeneration": d.metadata.generation,
        "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas,
    }});
    deployments.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await?;
    Ok(())
}

/// Whether a StatefulSet's status reports every replica ready.
pub fn stateful_set_ready(set: &StatefulSet) -> bool {
    let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = set.status.clone().unwrap_or_default();
    status.observed_generation == set.metadata.generation
        && status.replicas == replicas
        && status.ready_replicas == Some(replicas)
        && status.available_replicas == Some(replicas)
}

/// Marks a StatefulSet's replicas ready, as the StatefulSet controller would.
pub async fn make_stateful_set_ready(sets: &Api<StatefulSet>, name: &str) -> Result<(), kube::Error> {
    let set = sets.get(name).await?;
    let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = json!({"status": {
        "observedGeneration": set.metadata.generation,
        "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
    }});
    sets.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await?;
    Ok(())
}

/// Whether a Job has finished (Complete or Failed).
pub fn job_finished(job: &Job) -> bool {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.into_iter().flatten().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// Finishes an ingestion Job as the Job controller and kubelet would: a pod (owned by the Job)
/// whose `ingest` container left `message` as its termination message, then the Job's status.
/// A pod left by an earlier call is reused.
pub async fn finish_job(
    jobs: &Api<Job>,
    pods: &Api<Pod>,
    job: &str,
    succeeded: bool,
    message: &str,
    at: &str,
) -> Result<(), kube::Error> {
    let owner = jobs.get(job).await?.controller_owner_ref(&()).unwrap();
    let pod_name = format!("{job}-abcde");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod_name, "labels": {"job-name": job}, "ownerReferences": [owner]},
        "spec": {"containers": [{"name": "ingest", "image": "hearth-server"}], "restartPolicy": "Never"},
    }))
    .unwrap();
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e),
    }
    let status = json!({"status": {
        "phase": if succeeded { "Succeeded" } else { "Failed" },
        "containerStatuses": [{
            "name": "ingest", "image": "hearth-server", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": if succeeded { 0 } else { 1 }, "finishedAt": at, "message": message}},
        }],
    }});
    pods.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(status)).await?;
    let condition = if succeeded { "Complete" } else { "Failed" };
    let mut status =
        json!({"status": {"conditions": [{"type": condition, "status": "True", "lastTransitionTime": at}]}});
    if succeeded {
        status["status"]["succeeded"] = json!(1);
        status["status"]["completionTime"] = json!(at);
    } else {
        status["status"]["failed"] = json!(3);
    }
    jobs.patch_status(job, &PatchParams::default(), &Patch::Merge(status)).await?;
    Ok(())
}
