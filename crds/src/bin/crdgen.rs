//! Rewrites `charts/policyserve/crds/*.yaml` from the types.

use std::path::Path;

use policyserve_crds::manifests::{CRD_DIR, crd_files};

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CRD_DIR);
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in crd_files() {
        std::fs::write(dir.join(&file), yaml)?;
        println!("wrote {CRD_DIR}/{file}");
    }
    Ok(())
}
