//! The real KServe/Triton Python client (`tritonclient[grpc]`) against `policyserve-agent
//! serve`: wire compatibility, metadata, both content forms, errors, concurrency. Needs the
//! virtualenv `make deps` installs (POLICYSERVE_PYTHON).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn tritonclient_works_unchanged_against_the_agent() {
    let python = std::env::var("POLICYSERVE_PYTHON").expect(
        "POLICYSERVE_PYTHON names the virtualenv's python (run `make deps`, source env.sh)",
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = root.join("models/policy-mlp.onnx");
    let mut server = Command::new(env!("CARGO_BIN_EXE_policyserve-agent"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--model")
        .arg(format!("policy={}", model.display()))
        .env("POLICYSERVE_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The server logs the address it bound; port 0 picks a free one.
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let address = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "server exited before listening"
        );
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));

    let descriptors =
        std::env::temp_dir().join(format!("policyserve-v2-{}.pb", std::process::id()));
    std::fs::write(
        &descriptors,
        policyserve_agent::grpc::proto::FILE_DESCRIPTOR_SET,
    )
    .unwrap();
    let status = Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root.join("tests/python/test_kserve_v2.py"))
        .env("POLICYSERVE_GRPC", &address)
        .env("POLICYSERVE_MODEL", &model)
        .env("POLICYSERVE_DESCRIPTORS", &descriptors)
        .status()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&descriptors);
    assert!(
        status.success(),
        "tritonclient tests failed against {address}"
    );
}
