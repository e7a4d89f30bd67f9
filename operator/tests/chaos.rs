//! Operator faults, in the spirit of Sieve's chaos testing of controllers: each controller's
//! scenario is crashed right after every API write the operator makes, restarted, and must
//! converge to the objects (and Qdrant collections) of a run without crashes, with nothing
//! duplicated and no collection leaked. Random conflicts, throttling, server errors and
//! timeouts, with fixed seeds, must converge to the same objects too.
//!
//! The operator talks to the fake API server as the client `operator`. The server crashes that
//! client after its k-th accepted write (`Faults::crash_after_writes`): the write is committed,
//! then every request from it fails and its watches close; the fake Qdrant refuses it too. The
//! test aborts the operator's task (no graceful shutdown), revives the client and starts a new
//! operator. Meanwhile a "cluster" task with its own client plays the Deployment, StatefulSet and
//! Job controllers. Every test prints the fault points it exercised.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hearth_crds::model::ModelTask;
use hearth_crds::router::RouterReport;
use hearth_crds::runtime::IngestSummary;
use hearth_crds::{Agent, Cascade, KnowledgeBase, Model, Resource as StackResource};
use hearth_operator::builders::{BuildContext, KNOWLEDGE_BASE_LABEL};
use hearth_operator::controller::{self, Context, RouterProbe};
use hearth_operator::metrics::Metrics;
use hearth_operator::qdrant::QdrantAdmin;
use hearth_test_apiserver::{FakeApiServer, Fault, ResourceInfo, Verb, Write};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use support::qdrant::{Collections, FakeQdrant};
use support::{stack, workloads};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

const NS: &str = "ai";
/// The operator's client name on the fake API server.
const OPERATOR: &str = "operator";
/// The client of the cluster's own controllers, played by the test.
const CLUSTER: &str = "cluster";
/// How often the test and the cluster look at the store.
const TICK: Duration = Duration::from_millis(25);
/// How long the operator must make no write for its work to count as done.
const QUIET: Duration = Duration::from_millis(1000);
/// How long a converged state must hold (and the operator stay quiet) to count.
const HOLD: Duration = Duration::from_millis(300);
/// The most a run may take to settle or converge.
const BOUND: Duration = Duration::from_secs(30);
/// Crash runs at once (each with its own API server, operator and cluster).
const PARALLEL: usize = 4;
/// When the ingestion Jobs the cluster finishes end.
const INGESTED_AT: &str = "2025-06-01T03:00:00Z";

/// One controller's scenario: the resources a user creates. Once settled, every one is Ready.
struct Scenario {
    name: &'static str,
    inputs: Vec<StackResource>,
}

fn model_scenario() -> Scenario {
    Scenario { name: "model", inputs: vec![StackResource::Model(Box::new(stack::model("gemma3-270m")))] }
}

fn cascade_scenario() -> Scenario {
    let inputs = vec![
        StackResource::Model(Box::new(stack::model("gemma3-270m"))),
        StackResource::Model(Box::new(stack::model("qwen-coder-1-5b"))),
        StackResource::Cascade(Box::new(stack::cascade())),
    ];
    Scenario { name: "cascade", inputs }
}

fn knowledge_base_scenario() -> Scenario {
    let inputs = vec![
        StackResource::Model(Box::new(stack::model("minilm"))),
        StackResource::KnowledgeBase(Box::new(stack::knowledge_base("handbook"))),
    ];
    Scenario { name: "knowledgebase", inputs }
}

/// The whole quickstart: the Agent uses the Cascade and the KnowledgeBase, so all four
/// controllers run together.
fn agent_scenario() -> Scenario {
    Scenario { name: "agent", inputs: stack::quickstart() }
}

/// Every namespaced kind the operator writes (Events aside) and the Pods the cluster makes.
fn snapshot_kinds() -> Vec<ApiResource> {
    fn erase<K: Resource<DynamicType = ()>>() -> ApiResource {
        ApiResource::erase::<K>(&())
    }
    vec![
        erase::<ConfigMap>(),
        erase::<Secret>(),
        erase::<Service>(),
        erase::<PersistentVolumeClaim>(),
        erase::<Deployment>(),
        erase::<StatefulSet>(),
        erase::<Job>(),
        erase::<CronJob>(),
        erase::<HorizontalPodAutoscaler>(),
        erase::<PodDisruptionBudget>(),
        erase::<NetworkPolicy>(),
        erase::<Pod>(),
        erase::<Model>(),
        erase::<Cascade>(),
        erase::<KnowledgeBase>(),
        erase::<Agent>(),
    ]
}

/// Fields that differ between any two runs: server-assigned identity and wall-clock times.
const VOLATILE_METADATA: [&str; 4] = ["resourceVersion", "uid", "creationTimestamp", "managedFields"];
const VOLATILE_FIELDS: [&str; 4] =
    ["lastTransitionTime", "lastUpdateTime", "lastIndexedTime", "lastIndexDurationSeconds"];

/// An object without what differs between servers and runs; owner references keep the owner's
/// kind and name, not its uid; conditions are in type order.
fn normalize(mut object: Value) -> Value {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                VOLATILE_FIELDS.iter().for_each(|key| {
                    map.remove(*key);
                });
                // Conditions are a map keyed by type: where a type sits in the list depends on
                // when it first appeared, not on the state.
                if let Some(conditions) = map.get_mut("conditions").and_then(Value::as_array_mut) {
                    conditions.sort_by(|a, b| a["type"].as_str().cmp(&b["type"].as_str()));
                }
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        VOLATILE_METADATA.iter().for_each(|key| {
            meta.remove(*key);
        });
        for owner in meta.get_mut("ownerReferences").and_then(Value::as_array_mut).into_iter().flatten() {
            owner.as_object_mut().map(|o| o.remove("uid"));
        }
    }
    strip(&mut object);
    object
}

/// What the operator manages, normalized: every object by `Kind/name`, and the collections.
#[derive(Clone, Debug, PartialEq)]
struct Snapshot {
    objects: BTreeMap<String, Value>,
    collections: Collections,
}

impl Snapshot {
    /// How many objects of each kind.
    fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for key in self.objects.keys() {
            *counts.entry(key.split('/').next().unwrap_or_default().to_owned()).or_default() += 1;
        }
        counts
    }

    /// What differs from `reference`, for a failure message.
    fn diff(&self, reference: &Snapshot) -> String {
        let mut out = String::new();
        if self.counts() != reference.counts() {
            let _ = writeln!(out, "object counts: {:?}, reference {:?}", self.counts(), reference.counts());
        }
        let keys: std::collections::BTreeSet<&String> = self.objects.keys().chain(reference.objects.keys()).collect();
        for key in keys.into_iter().filter(|k| self.objects.get(*k) != reference.objects.get(*k)).take(3) {
            let show = |o: Option<&Value>| o.map_or("(none)".to_owned(), |o| o.to_string());
            let _ = writeln!(
                out,
                "{key}:\n  now:       {}\n  reference: {}",
                show(self.objects.get(key)),
                show(reference.objects.get(key))
            );
        }
        if self.collections != reference.collections {
            let _ = writeln!(out, "collections: {:?}\n  reference: {:?}", self.collections, reference.collections);
        }
        out
    }
}

/// What the routers report when the operator reads them.
fn router_report() -> RouterReport {
    RouterReport {
        name: "support".into(),
        stages: vec!["gemma3-270m".into(), "qwen-coder-1-5b".into()],
        escalation_ratio: 0.25,
        window_requests: 200,
        escalation_window: 1000,
        max_escalation_ratio: Some(0.5),
        budget_exceeded: false,
    }
}

/// The termination message of a successful ingestion of `knowledge_base`.
fn ingest_message(knowledge_base: &str) -> String {
    let summary = IngestSummary {
        knowledge_base: knowledge_base.into(),
        documents: 3,
        chunks: 12,
        added: 12,
        removed: 0,
        skipped: 1,
        seconds: 4.23,
        error: None,
    };
    format!("{}\n", serde_json::to_string(&summary).unwrap())
}

/// Plays the cluster's controllers and kubelet until aborted: Deployments and StatefulSets
/// become ready, ingestion Jobs succeed with a summary (the API server collects pods of deleted Jobs).
/// Reads the store directly; writes through the API as the client `cluster`. Its errors (an
/// object deleted meanwhile) are retried on the next tick.
async fn play_cluster(server: Arc<FakeApiServer>) {
    let client = server.client_named(CLUSTER);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client, NS);
    loop {
        for d in server.list::<Deployment>(NS).iter().filter(|d| !workloads::deployment_ready(d)) {
            let _ = workloads::make_ready(&deployments, &d.name_any()).await;
        }
        for s in server.list::<StatefulSet>(NS).iter().filter(|s| !workloads::stateful_set_ready(s)) {
            let _ = workloads::make_stateful_set_ready(&sets, &s.name_any()).await;
        }
        for job in server.list::<Job>(NS).iter().filter(|j| !workloads::job_finished(j)) {
            if let Some(kb) = job.labels().get(KNOWLEDGE_BASE_LABEL) {
                let message = ingest_message(kb);
                let _ = workloads::finish_job(&jobs, &pods, &job.name_any(), true, &message, INGESTED_AT).await;
            }
        }
        sleep(TICK).await;
    }
}

/// One fresh cluster: an API server holding a scenario's inputs, the cluster's controllers, a
/// fake Qdrant, and (when started) the operator.
struct World {
    server: Arc<FakeApiServer>,
    qdrant: Arc<FakeQdrant>,
    /// The test's own client, as a user with kubectl.
    client: Client,
    cluster: JoinHandle<()>,
    /// The operator's task, and what ends its shutdown watcher once the task is gone.
    operator: Option<(JoinHandle<()>, oneshot::Sender<()>)>,
    /// The operator client's read timeout: how long it waits for an answer.
    patience: Option<Duration>,
}

impl World {
    async fn new(scenario: &Scenario) -> Self {
        let pods = ResourceInfo::namespaced(ApiResource::erase::<Pod>(&())).with_status();
        let server = Arc::new(FakeApiServer::builder().operator_kinds().resource(pods).start().await);
        let client = server.client_named("user");
        let pp = PostParams::default();
        for input in &scenario.inputs {
            match input {
                StackResource::Model(m) => {
                    let models = Api::<Model>::namespaced(client.clone(), NS);
                    models.create(&pp, m).await.unwrap();
                    // What the weights fetch reports for an embedding model: its dimension.
                    if m.spec.task == ModelTask::Embedding {
                        let status = Patch::Merge(json!({"status": {"embeddingDimension": 384}}));
                        models.patch_status(&m.name_any(), &PatchParams::default(), &status).await.unwrap();
                    }
                }
                StackResource::Cascade(c) => {
                    Api::<Cascade>::namespaced(client.clone(), NS).create(&pp, c).await.unwrap();
                }
                StackResource::KnowledgeBase(kb) => {
                    Api::<KnowledgeBase>::namespaced(client.clone(), NS).create(&pp, kb).await.unwrap();
                }
                StackResource::Agent(a) => {
                    Api::<Agent>::namespaced(client.clone(), NS).create(&pp, a).await.unwrap();
                }
            }
        }
        let qdrant = Arc::new(FakeQdrant::gated(server.faults(), OPERATOR));
        let cluster = tokio::spawn(play_cluster(Arc::clone(&server)));
        Self { server, qdrant, client, cluster, operator: None, patience: None }
    }

    /// Starts an operator, as a new process would.
    fn start_operator(&mut self) {
        let mut config = self.server.config_named(OPERATOR);
        config.read_timeout = self.patience;
        let client = Client::try_from(config).unwrap();
        let qdrant: Arc<dyn QdrantAdmin> = self.qdrant.clone();
        let probe: RouterProbe = Arc::new(|_url: String| Box::pin(async { Some(vec![router_report()]) }));
        let ctx = Context::new(client, BuildContext::new(), Arc::new(Metrics::default()))
            .with_router_probe(probe)
            .with_qdrant_admin(qdrant);
        // Never shut down gracefully: the operator ends by being aborted, as a crash ends it.
        // The sender is dropped only after that, to end `run`'s shutdown watcher.
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        self.operator = Some((tokio::spawn(controller::run(Arc::new(ctx), None, shutdown)), stop));
    }

    /// Kills the operator: its task is dropped wherever it was.
    async fn kill_operator(&mut self) {
        if let Some((task, stop)) = self.operator.take() {
            task.abort();
            let _ = task.await;
            drop(stop);
        }
    }

    /// How many writes the server accepted from the operator.
    fn writes(&self) -> u64 {
        self.server.faults().writes_from(OPERATOR)
    }

    /// The operator's writes, in order.
    fn operator_writes(&self) -> Vec<Write> {
        self.server.writes().into_iter().filter(|w| w.client.as_deref() == Some(OPERATOR)).collect()
    }

    fn snapshot(&self) -> Snapshot {
        let mut objects = BTreeMap::new();
        for kind in snapshot_kinds() {
            for object in self.server.objects(&kind, NS) {
                let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                objects.insert(format!("{}/{name}", kind.kind), normalize(object));
            }
        }
        Snapshot { objects, collections: self.qdrant.collections() }
    }

    /// The inputs that are not Ready (or are gone).
    fn not_ready(&self, scenario: &Scenario) -> Vec<String> {
        let mut waiting = Vec::new();
        for input in &scenario.inputs {
            let (kind, name) = match input {
                StackResource::Model(m) => (ApiResource::erase::<Model>(&()), m.name_any()),
                StackResource::Cascade(c) => (ApiResource::erase::<Cascade>(&()), c.name_any()),
                StackResource::KnowledgeBase(kb) => (ApiResource::erase::<KnowledgeBase>(&()), kb.name_any()),
                StackResource::Agent(a) => (ApiResource::erase::<Agent>(&()), a.name_any()),
            };
            let ready = self.server.object(&kind, NS, &name).is_some_and(|o| {
                o.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
            });
            if !ready {
                waiting.push(format!("{}/{name}", kind.kind));
            }
        }
        waiting
    }

    /// Waits until the operator has made no write for `quiet`; false when `bound` passes first.
    async fn quiet(&self, quiet: Duration, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        let (mut last, mut since) = (self.writes(), Instant::now());
        while Instant::now() < deadline {
            sleep(TICK).await;
            let now = self.writes();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                return true;
            }
        }
        false
    }

    /// Waits until every input is Ready and the operator is quiet.
    async fn settle(&self, scenario: &Scenario) {
        let deadline = Instant::now() + BOUND;
        loop {
            if self.not_ready(scenario).is_empty()
                && self.quiet(QUIET, QUIET * 3).await
                && self.not_ready(scenario).is_empty()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never settled; not Ready: {:?}",
                scenario.name,
                self.not_ready(scenario)
            );
            sleep(TICK).await;
        }
    }

    /// Waits until the snapshot equals `reference` and holds while the operator is quiet;
    /// the difference when `BOUND` passes first.
    async fn converge(&self, reference: &Snapshot) -> Result<Duration, String> {
        self.converge_within(reference, BOUND).await
    }

    /// [`World::converge`] with another bound.
    async fn converge_within(&self, reference: &Snapshot, bound: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            if self.snapshot() == *reference && self.quiet(HOLD, bound).await && self.snapshot() == *reference {
                return Ok(started.elapsed());
            }
            if started.elapsed() > bound {
                return Err(self.snapshot().diff(reference));
            }
            sleep(TICK).await;
        }
    }

    /// Waits until the snapshot satisfies `done`, failing after `BOUND`.
    async fn converge_on(&self, done: impl Fn(&Snapshot) -> bool) {
        let deadline = Instant::now() + BOUND;
        while !done(&self.snapshot()) {
            assert!(Instant::now() < deadline, "timed out; now:\n{:?}", self.snapshot().objects.keys());
            sleep(TICK).await;
        }
    }

    /// Waits for the operator's crash; false when `done` came first (the run made fewer
    /// writes), and then the crash is disarmed so the run goes on without one.
    async fn crashed_before(&self, done: impl std::future::Future<Output = ()>) -> bool {
        let crashed = tokio::select! {
            () = self.server.faults().crashed(OPERATOR) => true,
            () = done => false,
        };
        if !crashed {
            self.server.faults().revive(OPERATOR);
        }
        crashed
    }

    /// Deletes the KnowledgeBase `name`, as a user would.
    async fn delete_knowledge_base(&self, name: &str) {
        let kbs: Api<KnowledgeBase> = Api::namespaced(self.client.clone(), NS);
        kbs.delete(name, &DeleteParams::default()).await.unwrap();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.cluster.abort();
        if let Some((operator, _)) = &self.operator {
            operator.abort();
        }
    }
}

/// A write as a crash point reads: `patch deployments/gemma3-270m-server (Apply)`.
fn describe(write: &Write) -> String {
    let status = if write.subresource.is_some() { "/status" } else { "" };
    let patch = write.patch.map(|p| format!(" ({p:?})")).unwrap_or_default();
    let noop = if write.changed { "" } else { ", no-op" };
    format!("{:?} {}/{}{status}{patch}{noop}", write.verb, write.resource, write.name).to_lowercase()
}

/// A reference run: settled without faults.
struct Reference {
    snapshot: Snapshot,
    /// The operator's writes, the crash points.
    writes: Vec<Write>,
    took: Duration,
}

async fn reference(scenario: &Scenario) -> Reference {
    let started = Instant::now();
    let mut world = World::new(scenario).await;
    world.start_operator();
    world.settle(scenario).await;
    let snapshot = world.snapshot();
    let writes = world.operator_writes();
    assert_eq!(writes.len() as u64, world.writes());
    Reference { snapshot, writes, took: started.elapsed() }
}

/// How one crash point went.
enum Point {
    /// The crash fired after this write; the restarted operator converged in this long.
    Recovered(Box<Write>, Duration),
    /// The run settled after fewer writes (the operator's write order varies between runs).
    NotReached(u64),
}

/// The operator crashed (its `k`-th write from `offset` on was the last): kills it, lets
/// `while_down` happen, starts a new one and requires convergence to `reference`.
async fn recover(
    world: &mut World,
    reference: &Snapshot,
    label: &str,
    offset: u64,
    k: u64,
    while_down: Option<&str>,
) -> Point {
    let mut writes = world.operator_writes();
    assert_eq!(writes.len() as u64, offset + k, "{label}: the crash after write {k} let no other write through");
    let last = writes.pop().expect("the crash follows a write");
    world.kill_operator().await;
    if let Some(kb) = while_down {
        world.delete_knowledge_base(kb).await;
    }
    world.server.faults().revive(OPERATOR);
    world.start_operator();
    match world.converge(reference).await {
        Ok(took) => Point::Recovered(Box::new(last), took),
        Err(diff) => panic!(
            "{label}: after a crash right after write {k} ({}), the restarted operator did not converge:\n{diff}",
            describe(&last)
        ),
    }
}

/// Crashes the operator after its `k`-th write of the scenario, deletes the KnowledgeBase
/// `while_down` (if any) while it is down, restarts it and requires convergence to `reference`.
async fn crash_at(scenario: &Scenario, reference: &Snapshot, k: u64, while_down: Option<&str>) -> Point {
    let mut world = World::new(scenario).await;
    world.server.faults().crash_after_writes(OPERATOR, k);
    world.start_operator();
    if !world.crashed_before(world.settle(scenario)).await {
        let writes = world.writes();
        if let Some(kb) = while_down {
            world.delete_knowledge_base(kb).await;
        }
        // The same run without a crash: it must reach the reference all the same.
        if let Err(diff) = world.converge(reference).await {
            panic!("{}: a run without a crash (it made {writes} writes) did not converge:\n{diff}", scenario.name);
        }
        return Point::NotReached(writes);
    }
    recover(&mut world, reference, scenario.name, 0, k, while_down).await
}

/// Settles the scenario, deletes the KnowledgeBase `kb`, crashes the operator after its `k`-th
/// write from then on, restarts it and requires convergence to `reference` (the deletion done).
async fn crash_during_deletion_at(scenario: &Scenario, reference: &Snapshot, kb: &str, k: u64) -> Point {
    let mut world = World::new(scenario).await;
    world.start_operator();
    world.settle(scenario).await;
    let offset = world.writes();
    world.server.faults().crash_after_writes(OPERATOR, k);
    world.delete_knowledge_base(kb).await;
    let deleted = async {
        world.converge_on(|s| !s.objects.contains_key(&format!("KnowledgeBase/{kb}"))).await;
        world.quiet(QUIET, BOUND).await;
    };
    if !world.crashed_before(deleted).await {
        let writes = world.writes() - offset;
        if let Err(diff) = world.converge(reference).await {
            panic!("{}: a deletion without a crash ({writes} writes) did not converge:\n{diff}", scenario.name);
        }
        return Point::NotReached(writes);
    }
    recover(&mut world, reference, &format!("{} deletion", scenario.name), offset, k, None).await
}

/// Counts of crash points, for the report.
#[derive(Debug, Default)]
struct Tally {
    reached: usize,
    not_reached: Vec<u64>,
    slowest: Duration,
    /// Crash points by what the last write was: `patch deployments`, `patch models/status`.
    by_write: BTreeMap<String, usize>,
}

impl Tally {
    fn of(points: Vec<Point>) -> Self {
        let mut tally = Self::default();
        for point in points {
            match point {
                Point::Recovered(last, took) => {
                    tally.reached += 1;
                    tally.slowest = tally.slowest.max(took);
                    let status = if last.subresource.is_some() { "/status" } else { "" };
                    let kind = format!("{:?} {}{status}", last.verb, last.resource).to_lowercase();
                    *tally.by_write.entry(kind).or_default() += 1;
                }
                Point::NotReached(writes) => tally.not_reached.push(writes),
            }
        }
        tally
    }

    /// Prints the tally and requires most points reached. A run settles with fewer writes than
    /// the reference only when reconciles interleave differently (fewer no-op re-applies), so
    /// it must still have made at least half as many.
    fn assert_mostly_reached(&self, label: &str, points: u64) {
        eprintln!(
            "chaos {label}: {points} crash points, {} reached and recovered (slowest recovery {:?}), {} not reached (those runs settled after {:?} writes); crash points by write: {:?}",
            self.reached,
            self.slowest,
            self.not_reached.len(),
            self.not_reached,
            self.by_write
        );
        assert!(
            self.reached as u64 * 3 >= points * 2,
            "{label}: only {} of {points} crash points were reached",
            self.reached
        );
        assert!(
            self.not_reached.iter().all(|w| w * 2 >= points),
            "{label}: a run settled after far fewer writes than the reference's {points}: {:?}",
            self.not_reached
        );
    }
}

/// Runs `run(k)` for k in 1..=points, `PARALLEL` at a time.
async fn every_point<F, Fut>(points: u64, run: F) -> Vec<Point>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Point>,
{
    futures::stream::iter(1..=points).map(run).buffer_unordered(PARALLEL).collect().await
}

/// A crash after every write the operator makes while reconciling `scenario` from nothing.
async fn crash_after_every_write(scenario: Scenario) {
    let started = Instant::now();
    let reference = reference(&scenario).await;
    let points = reference.writes.len() as u64;
    let changed = reference.writes.iter().filter(|w| w.changed).count();
    eprintln!(
        "chaos {}: the reference run settled in {:?} with {points} operator writes ({changed} changed something), {} objects {:?}, {} collections",
        scenario.name,
        reference.took,
        reference.snapshot.objects.len(),
        reference.snapshot.counts(),
        reference.snapshot.collections.len()
    );
    let snapshot = &reference.snapshot;
    let scenario = &scenario;
    let points_run = every_point(points, |k| crash_at(scenario, snapshot, k, None)).await;
    Tally::of(points_run).assert_mostly_reached(scenario.name, points);
    eprintln!("chaos {}: took {:?}", scenario.name, started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_converges_after_a_crash_at_every_write() {
    crash_after_every_write(model_scenario()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_converges_after_a_crash_at_every_write() {
    crash_after_every_write(cascade_scenario()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowledge_base_converges_after_a_crash_at_every_write() {
    crash_after_every_write(knowledge_base_scenario()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_the_whole_quickstart_converge_after_a_crash_at_every_write() {
    crash_after_every_write(agent_scenario()).await;
}

/// The KnowledgeBase scenario settled, then its KnowledgeBase deleted: the operator's writes
/// while it was deleted, and what is left.
async fn deletion_reference(scenario: &Scenario, kb: &str) -> (Reference, Reference) {
    let started = Instant::now();
    let mut world = World::new(scenario).await;
    world.start_operator();
    world.settle(scenario).await;
    let created = Reference { snapshot: world.snapshot(), writes: world.operator_writes(), took: started.elapsed() };
    assert_eq!(created.snapshot.collections.len(), 1, "the KnowledgeBase has its collection");
    let started = Instant::now();
    world.delete_knowledge_base(kb).await;
    world.converge_on(|s| !s.objects.contains_key(&format!("KnowledgeBase/{kb}"))).await;
    assert!(world.quiet(QUIET, BOUND).await);
    let snapshot = world.snapshot();
    let writes = world.operator_writes().split_off(created.writes.len());
    assert!(snapshot.collections.is_empty(), "the finalizer deleted the collection: {:?}", snapshot.collections);
    let left: Vec<&String> = snapshot.objects.keys().filter(|k| k.contains(kb)).collect();
    assert!(left.is_empty(), "nothing of the KnowledgeBase is left: {left:?}");
    (created, Reference { snapshot, writes, took: started.elapsed() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_knowledge_base_survives_a_crash_at_every_write_and_leaks_no_collection() {
    let started = Instant::now();
    let scenario = knowledge_base_scenario();
    let (_, deleted) = deletion_reference(&scenario, "handbook").await;
    let points = deleted.writes.len() as u64;
    eprintln!(
        "chaos knowledgebase deletion: the reference deletion took {:?} with {points} operator writes: {:?}",
        deleted.took,
        deleted.writes.iter().map(describe).collect::<Vec<_>>()
    );
    assert!(points >= 1, "the finalizer writes at least once");
    let (scenario, snapshot) = (&scenario, &deleted.snapshot);
    let run = every_point(points, |k| crash_during_deletion_at(scenario, snapshot, "handbook", k)).await;
    Tally::of(run).assert_mostly_reached("knowledgebase deletion", points);
    eprintln!("chaos knowledgebase deletion: took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knowledge_base_deleted_while_the_operator_is_down_leaks_no_collection() {
    let started = Instant::now();
    let scenario = knowledge_base_scenario();
    let (created, deleted) = deletion_reference(&scenario, "handbook").await;
    let points = created.writes.len() as u64;
    let (scenario, snapshot) = (&scenario, &deleted.snapshot);
    let run = every_point(points, |k| crash_at(scenario, snapshot, k, Some("handbook"))).await;
    Tally::of(run).assert_mostly_reached("knowledgebase deleted while down", points);
    eprintln!("chaos knowledgebase deleted while down: took {:?}", started.elapsed());
}

/// Conflicts, throttling, server errors and timeouts at random on the operator's requests.
fn inject_random_faults(world: &World, seed: u64) {
    let faults = world.server.faults();
    faults.seed(seed);
    for verb in [Verb::Patch, Verb::Create] {
        faults.inject(Fault::status(409).on(verb).from_client(OPERATOR).probability(0.05));
    }
    faults.inject(Fault::status(429).retry_after(1).from_client(OPERATOR).probability(0.03));
    faults.inject(Fault::status(500).from_client(OPERATOR).probability(0.04));
    // Longer than the operator's patience: its request times out (and is never served).
    faults.inject(Fault::delay(PATIENCE * 2).from_client(OPERATOR).probability(0.01));
    // A gateway that gives up.
    faults.inject(Fault::delay(Duration::from_millis(300)).then_status(504).from_client(OPERATOR).probability(0.02));
}

/// How long the operator's client waits for an answer in the random-fault runs.
const PATIENCE: Duration = Duration::from_millis(1500);
/// The most a random-fault run may take: faults on watches put kube's watcher into its backoff
/// (up to 30 s), so a change can wait for the re-list or the 30 s requeue.
const RANDOM_FAULTS_BOUND: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_conflicts_throttling_errors_and_timeouts_converge() {
    let started = Instant::now();
    let scenario = agent_scenario();
    let reference = reference(&scenario).await;
    let runs = [11, 22, 33].map(|seed| {
        let (scenario, snapshot) = (&scenario, &reference.snapshot);
        async move {
            let mut world = World::new(scenario).await;
            world.patience = Some(PATIENCE);
            inject_random_faults(&world, seed);
            world.start_operator();
            match world.converge_within(snapshot, RANDOM_FAULTS_BOUND).await {
                Ok(took) => (seed, took, world.server.faults().fired_by_kind(), world.writes()),
                Err(diff) => panic!("seed {seed}: the operator did not converge under random faults:\n{diff}"),
            }
        }
    });
    let mut total = 0;
    for (seed, took, fired, writes) in futures::future::join_all(runs).await {
        let count: u64 = fired.values().sum();
        total += count;
        eprintln!(
            "chaos random faults, seed {seed}: {count} faults fired {fired:?}; converged in {took:?} with {writes} operator writes"
        );
        assert!(count > 0, "seed {seed}: no fault fired");
    }
    eprintln!("chaos random faults: {total} faults fired over 3 seeds; took {:?}", started.elapsed());
}
