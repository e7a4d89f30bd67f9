//! Reconcile throughput: 1,000 Models and 100 Cascades against the in-memory API server.
//! Prints wall time until every resource has a status for its generation, reconciles per
//! second, and the process's peak RSS (operator and in-memory API server together).
//!
//!   cargo bench -p hearth-operator --bench reconcile [-- MODELS CASCADES]

use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_crds::{Cascade, Model, Resource as StackResource, parse_stack};
use hearth_operator::builders::BuildContext;
use hearth_operator::controller::{self, Context};
use hearth_operator::metrics::Metrics;
use hearth_test_apiserver::FakeApiServer;
use kube::api::{Api, PostParams};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn templates() -> (Model, Cascade) {
    let stack =
        parse_stack(include_str!("../../manifests/examples/quickstart.yaml"), "quickstart").expect("quickstart");
    let mut model = None;
    let mut cascade = None;
    for r in stack {
        match r {
            StackResource::Model(m) if m.metadata.name.as_deref() == Some("gemma3-270m") => model = Some(*m),
            StackResource::Cascade(c) => cascade = Some(*c),
            _ => {}
        }
    }
    (model.expect("model"), cascade.expect("cascade"))
}

/// How many objects have a status written for some generation.
async fn count<K>(api: &Api<K>, observed: impl Fn(&K) -> Option<i64>) -> usize
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&Default::default()).await.expect("list").items.iter().filter(|k| observed(k).is_some()).count()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let models = args.first().copied().unwrap_or(1000);
    let cascades = args.get(1).copied().unwrap_or(100);
    let server = FakeApiServer::start().await;
    let client = server.client();
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(Context::new(client.clone(), BuildContext::new(), metrics.clone()));
    tokio::spawn(controller::run(ctx, None, std::future::pending()));

    let (model, cascade) = templates();
    let model_api: Api<Model> = Api::namespaced(client.clone(), "bench");
    let cascade_api: Api<Cascade> = Api::namespaced(client.clone(), "bench");
    let started = Instant::now();
    for i in 0..models {
        let mut m = model.clone();
        m.metadata.name = Some(format!("m{i}"));
        model_api.create(&PostParams::default(), &m).await.expect("create model");
    }
    for i in 0..cascades {
        let mut c = cascade.clone();
        c.metadata.name = Some(format!("c{i}"));
        c.spec.stages[0].model = format!("m{}", (2 * i) % models.max(1));
        c.spec.stages[1].model = format!("m{}", (2 * i + 1) % models.max(1));
        cascade_api.create(&PostParams::default(), &c).await.expect("create cascade");
    }
    let created = started.elapsed();
    loop {
        let done_models = count(&model_api, |m: &Model| m.status.as_ref().and_then(|s| s.observed_generation)).await;
        let done_cascades =
            count(&cascade_api, |c: &Cascade| c.status.as_ref().and_then(|s| s.observed_generation)).await;
        if done_models == models && done_cascades == cascades {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not converged: {done_models}/{models} models, {done_cascades}/{cascades} cascades"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let text = metrics.encode();
    let reconciles: f64 = text
        .lines()
        .filter(|l| l.starts_with("hearth_operator_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("models: {models}, cascades: {cascades}");
    println!("created in {:.2} s; converged (every status written) in {wall:.2} s", created.as_secs_f64());
    println!("reconciles: {reconciles} ({:.0}/s)", reconciles / wall);
    println!("peak RSS (operator + in-memory API server): {:.1} MiB", peak_rss_mib());
    println!("API writes recorded by the server: {}", server.writes().len());
}
