//! The dependency rules of ARCHITECTURE.md, checked (like rust-analyzer's tidy tests): which
//! module may import which, who may touch processes, containers, sockets and SQL, who builds
//! HTTP responses, and that the pure-decision crate has no IO dependency at all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::rust_files;

/// Module → the other modules of the warden crate it may import (`crate::X`). A module may
/// always import itself and the `warden-policy` crate.
const MAY_IMPORT: &[(&str, &[&str], &str)] = &[
    ("base", &[], "base is the bottom: everyone may import it, it imports no one"),
    ("config", &[], "config is read and validated on its own"),
    ("account", &["base", "config"], "accounting records usage; it knows nothing of requests or services"),
    ("cache", &["base", "config"], "the response cache stores answers by key; what to cache is the pipeline's"),
    ("coalesce", &["base", "config"], "who waits for whom in a coalesced call; sending it is the pipeline's"),
    ("batch", &["base"], "files, batches and lines as stored; running a batch's lines is the server's"),
    (
        "shared",
        &["base", "config", "account", "cache"],
        "the counts replicas share (Redis); what to count is admission's, what to cache the pipeline's",
    ),
    ("admission", &["base", "config", "account", "shared"], "admission knows no HTTP, no services, no pipeline"),
    ("driver", &["base", "config"], "drivers touch the outside and nothing of warden's state"),
    ("service", &["base", "config", "driver"], "services know drivers, never admission, memory or the server"),
    ("resources", &["base", "config", "driver", "service"], "the coordinator sits above services"),
    ("jobs", &["base"], "the job table holds outcomes; what a job runs is the server's business"),
    (
        "pressure",
        &["base", "config", "account", "admission", "resources", "service"],
        "the monitor measures and tells admission; it knows no HTTP and no pipeline",
    ),
    (
        "app",
        &[
            "base",
            "config",
            "account",
            "admission",
            "service",
            "resources",
            "jobs",
            "pressure",
            "cache",
            "coalesce",
            "batch",
        ],
        "App only holds handles",
    ),
    ("idle", &["base", "config", "service", "app"], "the idle monitor reads services through App"),
    ("reload", &["base", "config", "service", "app"], "a reload puts a new config in force through App's handles"),
    (
        "pipeline",
        &["base", "config", "account", "admission", "service", "app", "pressure", "cache", "coalesce", "shared"],
        "the pipeline knows no routes",
    ),
    (
        "server",
        &[
            "base",
            "config",
            "account",
            "admission",
            "driver",
            "service",
            "resources",
            "jobs",
            "app",
            "idle",
            "pipeline",
            "pressure",
            "reload",
            "cache",
            "coalesce",
            "batch",
        ],
        "the server is the top: everything but the CLI",
    ),
    ("cli", &["base"], "the CLI is a client of the admin API"),
];

/// Code patterns that only some modules may use, and why.
const ONLY_IN: &[(&str, &[&str], &str)] = &[
    ("bollard", &["driver/"], "drivers are the only code touching containers"),
    ("nix::", &["driver/"], "drivers are the only code touching processes"),
    ("libc::", &["driver/"], "drivers are the only code touching processes"),
    ("std::process::Command", &["driver/"], "drivers are the only code touching processes"),
    ("std::process::Child", &["driver/"], "drivers are the only code touching processes"),
    ("std::process::Stdio", &["driver/"], "drivers are the only code touching processes"),
    ("tokio::process", &["driver/"], "drivers are the only code touching processes"),
    (
        "TcpStream",
        &["driver/", "server/listen.rs", "base/pool.rs"],
        "drivers open sockets to services, and the proxy its connections to them; the front door accepts clients'",
    ),
    (
        "TcpListener",
        &["driver/", "server/mod.rs", "server/listen.rs"],
        "only the front door listens (drivers probe ports)",
    ),
    (
        "rusqlite",
        &["account/store.rs", "cache.rs", "batch.rs"],
        "only the usage store, the cache and the batch store run SQL",
    ),
    ("redis::", &["shared/"], "only the shared state talks to Redis"),
    ("IntoResponse", &["server/", "base/errors.rs"], "only server/ builds HTTP responses (and the one error mapping)"),
    ("into_response", &["server/", "base/errors.rs"], "only server/ builds HTTP responses (and the one error mapping)"),
    ("Json(", &["server/", "base/errors.rs"], "only server/ builds HTTP responses (and the one error mapping)"),
    ("axum::", &["server/", "pipeline/", "base/", "driver/", "cli/"], "admission, services and memory know no HTTP"),
    ("hyper::", &["server/", "pipeline/", "base/", "driver/", "cli/"], "admission, services and memory know no HTTP"),
];

fn src_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The file's code without comments (line comments and doc comments; warden has no block
/// comments), so prose may name anything.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| {
            // A "//" inside a string literal ("http://…") is not a comment.
            let comment = l.match_indices("//").map(|(i, _)| i).find(|&i| l[..i].matches('"').count() % 2 == 0);
            &l[..comment.unwrap_or(l.len())]
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to ("service/owner.rs" → "service", "app.rs" → "app").
fn module_of(rel: &str) -> &str {
    rel.split('/').next().unwrap().trim_end_matches(".rs")
}

/// `code` names `pattern` as a whole word ("unix::" is not "nix::", "BadJson(" not "Json(").
fn uses(code: &str, pattern: &str) -> bool {
    code.match_indices(pattern).any(|(i, _)| !code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
}

/// Every rule `code` (the file at `rel`, relative to src/) breaks.
fn violations(rel: &str, code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let module = module_of(rel);
    if let Some((_, allowed, why)) = MAY_IMPORT.iter().find(|(m, _, _)| *m == module) {
        let mut seen = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if name != module && !allowed.contains(&name.as_str()) && seen.insert(name.clone()) {
                found.push(format!("{rel} imports crate::{name}: {why}"));
            }
        }
    }
    for (pattern, places, why) in ONLY_IN {
        if uses(code, pattern) && !places.iter().any(|p| rel.starts_with(p)) {
            found.push(format!("{rel} uses {pattern}: {why}"));
        }
    }
    if code.contains("super::super") {
        found.push(format!("{rel} reaches up with super::super: name the module by its crate:: path"));
    }
    found
}

#[test]
fn modules_import_only_what_their_rule_allows() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    let mut modules = BTreeMap::new();
    for path in &files {
        let rel = path.strip_prefix(&src).unwrap().to_str().unwrap().to_string();
        if rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        *modules.entry(module_of(&rel).to_string()).or_insert(0) += 1;
        broken.extend(violations(&rel, &code_of(&std::fs::read_to_string(path).unwrap())));
    }
    // Every module has a rule: a new one must say what it may depend on.
    for module in modules.keys() {
        assert!(MAY_IMPORT.iter().any(|(m, _, _)| m == module), "module {module} has no rule in MAY_IMPORT");
    }
    assert!(broken.is_empty(), "dependency rules broken:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_catches_what_it_should() {
    // The rules above would fail on these: the test is not vacuous.
    assert_eq!(
        violations("admission/gate/mod.rs", "use crate::server::api::Thing;"),
        vec!["admission/gate/mod.rs imports crate::server: admission knows no HTTP, no services, no pipeline"]
    );
    assert_eq!(violations("service/owner.rs", "let x = crate::resources::coordinator::X;").len(), 1);
    assert_eq!(violations("resources/coordinator.rs", "use std::process::Command;").len(), 1);
    assert_eq!(violations("admission/gate/admit.rs", "use axum::http::HeaderMap;").len(), 1);
    assert_eq!(violations("pipeline/mod.rs", "Json(value).into_response()").len(), 2);
    assert!(
        violations("service/owner.rs", &code_of("use crate::driver::Running; // crate::server in prose")).is_empty()
    );
    assert!(violations("driver/process.rs", "let c = std::process::Command::new(\"x\");").is_empty());
    assert!(violations("server/mod.rs", "use tokio::signal::unix::signal; Err(ApiError::BadJson(e))").is_empty());
    // Comments and URLs in strings are not code.
    assert_eq!(code_of("let u = \"http://x\"; // crate::server"), "let u = \"http://x\"; ");
}

#[test]
fn the_policy_crate_has_no_io_dependencies() {
    // Walk warden-policy's dependencies (normal and dev) through Cargo.lock.
    let lock = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock")).unwrap();
    let lock: toml::Value = toml::from_str(&lock).unwrap();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in lock["package"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_string();
        let list = p.get("dependencies").and_then(|d| d.as_array()).cloned().unwrap_or_default();
        let entry = deps.entry(name).or_default();
        // An entry is "name" or "name version" when two versions are locked.
        entry.extend(list.iter().map(|d| d.as_str().unwrap().split(' ').next().unwrap().to_string()));
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec!["warden-policy".to_string()];
    while let Some(name) = todo.pop() {
        if seen.insert(name.clone()) {
            todo.extend(deps.get(&name).cloned().unwrap_or_default());
        }
    }
    assert!(seen.contains("time"), "the walk found warden-policy's dependencies: {seen:?}");
    for io in ["tokio", "axum", "hyper", "hyper-util", "bollard", "rusqlite", "mio", "reqwest", "warden"] {
        assert!(!seen.contains(io), "warden-policy depends on {io}: decisions must stay pure");
    }
}
