//! The workspace layout is what docs/adr/0023-workspace-layout.md says: its
//! table names every workspace member once, and each member's
//! `[dependencies]` on our crates are exactly those of its row (so no crate
//! depends on one above it without the record saying so). Dev-dependencies
//! are not checked: a test may start anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use warmhouse_devstack::api_checks::repo_root;

const RECORD: &str = "docs/adr/0023-workspace-layout.md";

fn read(root: &Path, relative: &str) -> String {
    std::fs::read_to_string(root.join(relative)).unwrap_or_else(|err| panic!("{relative}: {err}"))
}

/// The quoted strings of the root manifest's `members = [...]`.
fn workspace_members(manifest: &str) -> BTreeSet<String> {
    let start = manifest
        .find("members = [")
        .expect("the root Cargo.toml lists its members");
    let list = &manifest[start..];
    let end = list.find(']').expect("members list is closed");
    list[..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// `warmhouse-x = { path = "dir" }` lines of `[workspace.dependencies]`:
/// package name to member path.
fn paths_by_package(manifest: &str) -> BTreeMap<String, String> {
    manifest
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once('=')?;
            let name = name.trim();
            let path = rest.split("path = \"").nth(1)?.split('"').next()?;
            name.starts_with("warmhouse-")
                .then(|| (name.to_string(), path.to_string()))
        })
        .collect()
}

/// Names of our packages in the `[dependencies]` section of a member's
/// manifest (`warmhouse-x.workspace = true` or `warmhouse-x = {...}`).
fn our_dependencies(manifest: &str) -> BTreeSet<String> {
    let mut in_dependencies = false;
    let mut found = BTreeSet::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if !in_dependencies || !line.starts_with("warmhouse-") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        found.insert(name);
    }
    found
}

fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The record's table: crate path to the paths of the crates it depends on.
fn record_table(record: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut rows = BTreeMap::new();
    for line in record.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", crate, job, depends on, ""
        assert_eq!(cells.len(), 5, "{RECORD}: a row has three cells: {line}");
        let member = code_spans(cells[1])
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{RECORD}: no crate in {line}"));
        let allowed: BTreeSet<String> = code_spans(cells[3]).into_iter().collect();
        assert!(
            !allowed.is_empty() || cells[3] == "none",
            "{RECORD}: `{member}` depends on nothing of ours? Say `none`: {line}"
        );
        assert!(
            rows.insert(member.clone(), allowed).is_none(),
            "{RECORD}: `{member}` has two rows"
        );
    }
    rows
}

#[test]
fn every_crate_depends_on_what_the_layout_record_says() {
    let root = repo_root();
    let manifest = read(&root, "Cargo.toml");
    let members = workspace_members(&manifest);
    let paths = paths_by_package(&manifest);
    let table = record_table(&read(&root, RECORD));

    let rows: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        rows, members,
        "{RECORD}'s table and the workspace's members differ"
    );

    let mut differences = Vec::new();
    for (member, allowed) in &table {
        let actual: BTreeSet<String> =
            our_dependencies(&read(&root, &format!("{member}/Cargo.toml")))
                .into_iter()
                .map(|package| {
                    paths
                        .get(&package)
                        .cloned()
                        .unwrap_or_else(|| panic!("{package} is not in [workspace.dependencies]"))
                })
                .collect();
        if &actual != allowed {
            differences.push(format!(
                "{member}: depends on {actual:?}, the record says {allowed:?}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "crate dependencies differ from {RECORD} (change the record with the dependency):\n{}",
        differences.join("\n")
    );
}

#[test]
fn reads_dependencies_of_the_dependencies_section_only() {
    let manifest = "[package]\nname = \"warmhouse-x\"\n\n[dependencies]\nanyhow.workspace = true\nwarmhouse-contracts.workspace = true\nwarmhouse-ingest = { path = \"../ingest\" }\n\n[dev-dependencies]\nwarmhouse-devstack.workspace = true\n";
    assert_eq!(
        our_dependencies(manifest),
        BTreeSet::from([
            "warmhouse-contracts".to_string(),
            "warmhouse-ingest".to_string()
        ])
    );
}
