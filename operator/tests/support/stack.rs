//! The quickstart stack (`manifests/examples/quickstart.yaml`) and its resources by name.

use hearth_crds::{Agent, Cascade, KnowledgeBase, Model, Resource as StackResource, parse_stack};
use kube::ResourceExt;

/// Every resource of the quickstart, in file order.
pub fn quickstart() -> Vec<StackResource> {
    let text = include_str!("../../../manifests/examples/quickstart.yaml");
    parse_stack(text, "quickstart.yaml").unwrap()
}

/// The quickstart's Model `name`.
pub fn model(name: &str) -> Model {
    quickstart()
        .into_iter()
        .find_map(|r| match r {
            StackResource::Model(m) if m.name_any() == name => Some(*m),
            _ => None,
        })
        .unwrap()
}

/// The quickstart's Cascade.
pub fn cascade() -> Cascade {
    quickstart()
        .into_iter()
        .find_map(|r| match r {
            StackResource::Cascade(c) => Some(*c),
            _ => None,
        })
        .unwrap()
}

/// The quickstart's KnowledgeBase `name`.
pub fn knowledge_base(name: &str) -> KnowledgeBase {
    quickstart()
        .into_iter()
        .find_map(|r| match r {
            StackResource::KnowledgeBase(kb) if kb.name_any() == name => Some(*kb),
            _ => None,
        })
        .unwrap()
}

/// The quickstart's Agent `name`.
pub fn agent(name: &str) -> Agent {
    quickstart()
        .into_iter()
        .find_map(|r| match r {
            StackResource::Agent(a) if a.name_any() == name => Some(*a),
            _ => None,
        })
        .unwrap()
}
