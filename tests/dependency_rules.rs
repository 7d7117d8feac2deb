//! The "must never depend on" rules of the crate docs, checked: the manifests through
//! `cargo metadata`, and the sources for the modules that alone may name a dependency.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Crates of the HTTP and GraphQL edge, which only the `annals` package may use.
const EDGE: &[&str] = &[
    "axum",
    "async-graphql",
    "async-graphql-axum",
    "tower",
    "tower-http",
    "hyper",
    "reqwest",
    "governor",
    "metrics-exporter-prometheus",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn metadata() -> Value {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// The dependencies of `package` of every kind (normal, dev, build), by name.
fn dependencies(metadata: &Value, package: &str) -> Vec<(String, String)> {
    let package = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == package)
        .unwrap_or_else(|| panic!("package {package} is in the workspace"));
    package["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let kind = d["kind"].as_str().unwrap_or("normal").to_string();
            (d["name"].as_str().unwrap().to_string(), kind)
        })
        .collect()
}

#[test]
fn the_store_depends_on_no_other_annals_crate_and_nothing_of_the_edge() {
    let metadata = metadata();
    for (name, kind) in dependencies(&metadata, "annals-store") {
        assert!(
            !name.starts_with("annals"),
            "annals-store depends on {name} ({kind})"
        );
        assert!(
            !EDGE.contains(&name.as_str()),
            "annals-store depends on {name} ({kind})"
        );
    }
}

#[test]
fn the_projections_depend_on_the_store_only_among_annals_crates() {
    let metadata = metadata();
    for (name, kind) in dependencies(&metadata, "annals-projections") {
        assert!(
            !name.starts_with("annals") || name == "annals-store",
            "annals-projections depends on {name} ({kind})"
        );
        assert!(
            !EDGE.contains(&name.as_str()),
            "annals-projections depends on {name} ({kind})"
        );
    }
}

#[test]
fn the_cluster_crate_depends_on_the_store_only_among_annals_crates() {
    let metadata = metadata();
    for (name, kind) in dependencies(&metadata, "annals-cluster") {
        assert!(
            !name.starts_with("annals") || name == "annals-store",
            "annals-cluster depends on {name} ({kind})"
        );
        assert!(
            !EDGE.contains(&name.as_str()) && !matches!(name.as_str(), "rocksdb" | "bincode"),
            "annals-cluster depends on {name} ({kind})"
        );
    }
}

#[test]
fn the_annals_package_does_not_depend_on_rocksdb_or_bincode() {
    let metadata = metadata();
    for (name, kind) in dependencies(&metadata, "annals") {
        assert!(
            !matches!(name.as_str(), "rocksdb" | "librocksdb-sys" | "bincode"),
            "the annals package depends on {name} ({kind}): only the engine crates may"
        );
    }
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The files under `dir` whose code names `needle` (comments aside).
fn files_naming(dir: &Path, needle: &str) -> Vec<String> {
    sources(dir)
        .into_iter()
        .filter(|file| {
            std::fs::read_to_string(file).unwrap().lines().any(|line| {
                let code = line.split("//").next().unwrap_or("");
                code.contains(needle)
            })
        })
        .map(|file| {
            file.strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect()
}

#[test]
fn bincode_is_named_only_by_the_codec() {
    let src = root().join("store/src");
    assert_eq!(
        files_naming(&src, "bincode::"),
        vec!["codec.rs".to_string()]
    );
}

#[test]
fn rocksdb_is_named_only_by_the_rocks_module_and_the_modules_that_wrap_its_errors() {
    let src = root().join("store/src");
    let mut naming = files_naming(&src, "rocksdb::");
    naming.retain(|file| !file.starts_with("rocks/"));
    naming.sort();
    // The error type wraps RocksDB's error; the test kit makes one; the raw baseline of
    // the benchmarks measures RocksDB itself.
    let allowed = ["baseline.rs", "error.rs", "testkit.rs"];
    for file in &naming {
        assert!(
            allowed.contains(&file.as_str()),
            "store/src/{file} names rocksdb outside the rocks module"
        );
    }
}

#[test]
fn the_engine_crates_never_name_the_edge_or_the_domain() {
    for dir in ["store/src", "projections/src", "cluster/src"] {
        let dir = root().join(dir);
        for needle in [
            "axum::",
            "async_graphql",
            "annals::",
            "annals_projections::",
            "rocksdb::",
        ] {
            if needle == "rocksdb::" && !dir.ends_with("cluster/src") {
                continue;
            }
            if needle == "annals_projections::" && dir.ends_with("projections/src") {
                continue;
            }
            let naming = files_naming(&dir, needle);
            assert!(
                naming.is_empty(),
                "{} names {needle} in {naming:?}",
                dir.display()
            );
        }
    }
}
