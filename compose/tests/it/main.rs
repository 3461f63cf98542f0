//! The deployment files tested without Docker (docs/deploy.md, "Compose: CoreDNS, named and
//! the whole pipeline"):
//! [`compose`] checks the compose stack statically and loads every tapbus config it mounts
//! with the real binaries; [`named`] runs Debian's named with `named/`'s configs and
//! follows their dnstap through the broker to NATS; [`demo`] runs `scripts/demo.sh`, the
//! whole pipeline, and checks every store against what was sent; [`exact`] runs the
//! JetStream pipeline through nats-server crashes, consumer restarts and any start order,
//! and checks every store is exact; [`package`] builds the Debian package, installs it,
//! runs its broker as its unit does with a real unbound, and removes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tapbus_deploy_tests::services;

mod compose;
mod demo;
mod exact;
mod named;
mod package;

pub fn compose_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn root() -> PathBuf {
    compose_dir().join("..")
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub fn toml_file(p: &Path) -> toml::Table {
    read(p)
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn tstr<'a>(t: &'a toml::Table, path: &[&str]) -> &'a str {
    let mut v: Option<&toml::Value> = None;
    let mut table = Some(t);
    for k in path {
        v = table.and_then(|t| t.get(*k));
        table = v.and_then(toml::Value::as_table);
    }
    v.and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("no string at {}", path.join(".")))
}

/// The compose file, parsed once.
pub fn main_doc() -> &'static serde_json::Value {
    static D: OnceLock<serde_json::Value> = OnceLock::new();
    D.get_or_init(|| {
        tapbus_deploy_tests::load(&read(&compose_dir().join("docker-compose.yml")))
            .expect("docker-compose.yml")
    })
}

/// `(member dir, package name)` of the workspace.
pub fn workspace_members() -> Vec<(String, String)> {
    let t = toml_file(&root().join("Cargo.toml"));
    t["workspace"]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(toml::Value::as_str)
        .map(|m| {
            let p = toml_file(&root().join(m).join("Cargo.toml"));
            (m.to_string(), tstr(&p, &["package", "name"]).to_string())
        })
        .collect()
}

/// The tapbus binaries of the compose file, built once (a stale binary from before a
/// change would test the old code), from this test binary's own target directory.
pub fn binaries() -> &'static BTreeMap<String, PathBuf> {
    static B: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    B.get_or_init(|| {
        let members: BTreeSet<String> = workspace_members().into_iter().map(|(_, n)| n).collect();
        // The compose services' binaries, and what scripts/demo.sh runs beside them.
        let wanted: BTreeSet<String> = services(main_doc())
            .expect("services")
            .iter()
            .filter_map(|s| s.command().first().cloned())
            .chain(["tapbus-top".to_string(), "tapbus-tail".to_string()])
            .filter(|c| c.starts_with("tapbus-") && members.contains(c))
            .collect();
        // target/debug/deps/<this test> -> target/debug
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir");
        let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        cmd.arg("build").arg("--target-dir").arg(target_dir);
        // The variables cargo sets for this test (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...)
        // are build-script inputs (ring's): inherited, they would make every build dirty.
        for (k, _) in std::env::vars() {
            if k.starts_with("CARGO_") && k != "CARGO_HOME" {
                cmd.env_remove(k);
            }
        }
        for b in &wanted {
            cmd.args(["-p", b, "--bin", b]);
        }
        // The paced Frame Streams writer of [`exact`] (found beside the broker by
        // `testsupport::bench::Paced`).
        cmd.args(["--example", "fstrm_blast"]);
        let st = cmd.current_dir(root()).status().expect("cargo build");
        assert!(st.success(), "building {wanted:?} failed");
        wanted
            .into_iter()
            .map(|b| {
                let p = profile_dir.join(&b);
                (b, p)
            })
            .collect()
    })
}
