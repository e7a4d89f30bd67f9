//! Writes Hearth's CRDs as YAML to manifests/crds/ and helm/hearth/crds/.
//!
//! Usage: `crdgen [REPO_ROOT]` (defaults to the current directory).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let files = hearth_crds::crd_files()?;
    for dir in ["manifests/crds", "helm/hearth/crds"] {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir)?;
        for (name, body) in &files {
            let path = dir.join(name);
            std::fs::write(&path, body)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
