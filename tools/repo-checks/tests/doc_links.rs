//! Every relative link in our Markdown (README.md, everything under `docs/`:
//! the filled assignment `docs/assignment.ru.md`, the ADRs, the API and
//! deployment notes; the crates', gateway's and chart's READMEs) points to a
//! file or directory that exists in this repository. Links with a scheme (`https:`, `mailto:`) and links to an
//! anchor in the same page are not checked; a link's own `#anchor` is
//! ignored, its path is not. Links that leave the repository are dead on
//! GitHub, so they fail too.

use std::path::{Component, Path, PathBuf};

use warmhouse_devstack::api_checks::repo_root;

/// Every Markdown file of ours: README.md, docs/ (the assignment, ADRs, API
/// and deployment notes), the crates', gateway's and chart's READMEs.
/// Not build output, installed tools, or vendor/ (upstream's documents),
/// except our own notes on the vendored code.
fn documents(root: &Path) -> Vec<PathBuf> {
    const SKIPPED: &[&str] = &[
        "target",
        "vendor",
        "node_modules",
        ".git",
        ".tools",
        ".stack",
    ];
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default();
            if path.is_dir() {
                if !SKIPPED.contains(&name) {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|ext| ext == "md") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    files.push(root.join("vendor/rumqttd/WARMHOUSE-PATCHES.md"));
    files.sort();
    files
}

/// Link targets in a Markdown text, with their line numbers: inline links and
/// images `[text](target "title")`, and reference definitions `[id]: target`.
/// Fenced code blocks and inline code spans are skipped.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    let mut fence: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim_start();
        if let Some(open) = &fence {
            if trimmed.starts_with(open.as_str()) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            let marker: String = trimmed
                .chars()
                .take_while(|c| *c == '`' || *c == '~')
                .collect();
            fence = Some(marker);
            continue;
        }
        let line = without_code_spans(line);
        // Reference definition: `[id]: target`.
        if let Some(rest) = line.trim_start().strip_prefix('[') {
            if let Some(close) = rest.find("]:") {
                if !rest[..close].contains('[') {
                    if let Some(target) = rest[close + 2..].split_whitespace().next() {
                        targets.push((number, unwrap_angle(target).to_string()));
                    }
                    continue;
                }
            }
        }
        // Inline: `](target)`, parentheses inside the target balanced.
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let mut depth = 0usize;
            let mut end = None;
            for (i, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => {
                        end = Some(i);
                        break;
                    }
                    ')' => depth -= 1,
                    _ => {}
                }
            }
            let Some(end) = end else { break };
            let inside = after[..end].trim();
            // Drop an optional title: `target "title"`.
            let target = if let Some(stripped) = inside.strip_prefix('<') {
                stripped.split('>').next().unwrap_or_default()
            } else {
                inside.split_whitespace().next().unwrap_or_default()
            };
            targets.push((number, target.to_string()));
            rest = &after[end + 1..];
        }
    }
    targets
}

fn unwrap_angle(target: &str) -> &str {
    target
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(target)
}

/// The line with `code spans` blanked out.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c != '`' {
            out.push(c);
            continue;
        }
        let mut ticks = 1;
        while chars.peek().is_some_and(|(_, c)| *c == '`') {
            chars.next();
            ticks += 1;
        }
        let delimiter = "`".repeat(ticks);
        let body_start = start + ticks;
        match line[body_start..].find(&delimiter) {
            Some(offset) => {
                let resume = body_start + offset + ticks;
                while chars.peek().is_some_and(|(i, _)| *i < resume) {
                    chars.next();
                }
                out.push(' ');
            }
            // An unmatched backtick is literal text.
            None => out.push_str(&delimiter),
        }
    }
    out
}

fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let byte = u8::from_str_radix(&path[i + 1..i + 3], 16).expect("two hex digits");
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a/./b/../c` to `a/c`, without touching the file system; `None` when the
/// path climbs above where it started.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// What is wrong with one link of `document`, if anything.
fn check(root: &Path, document: &Path, target: &str) -> Option<String> {
    if target.is_empty() || target.starts_with('#') {
        return None;
    }
    // A scheme (`https:`, `mailto:`): not ours to check here.
    if let Some(colon) = target.find(':') {
        let scheme = &target[..colon];
        if !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            && !target[..colon].contains('/')
        {
            return None;
        }
    }
    if target.starts_with("//") {
        return None;
    }
    let path = target.split(['#', '?']).next().unwrap_or_default();
    if path.is_empty() {
        return None;
    }
    let path = percent_decode(path);
    let relative_to_root = match path.strip_prefix('/') {
        // GitHub resolves `/x` from the repository root.
        Some(from_root) => normalize(Path::new(from_root)),
        None => {
            let dir = document
                .parent()
                .expect("a document has a directory")
                .strip_prefix(root)
                .expect("documents are inside the repository");
            normalize(&dir.join(&path))
        }
    };
    let Some(relative_to_root) = relative_to_root else {
        return Some(format!("{target} leaves the repository (dead on GitHub)"));
    };
    let full = root.join(&relative_to_root);
    if full.exists() {
        None
    } else {
        Some(format!(
            "{target} -> {} does not exist",
            relative_to_root.display()
        ))
    }
}

#[test]
fn every_relative_link_in_the_documentation_resolves() {
    let root = repo_root();
    let documents = documents(&root);
    assert!(
        documents
            .iter()
            .any(|path| path.ends_with("docs/assignment.ru.md")),
        "docs/assignment.ru.md is missing"
    );
    let mut dead = Vec::new();
    let mut checked = 0;
    for document in &documents {
        let text = std::fs::read_to_string(document)
            .unwrap_or_else(|err| panic!("reading {}: {err}", document.display()));
        for (line, target) in link_targets(&text) {
            checked += 1;
            if let Some(problem) = check(&root, document, &target) {
                let name = document.strip_prefix(&root).unwrap_or(document);
                dead.push(format!("{}:{line}: {problem}", name.display()));
            }
        }
    }
    assert!(checked > 0, "no links found in {documents:?}");
    assert!(
        dead.is_empty(),
        "{} dead link(s) of {checked}:\n{}",
        dead.len(),
        dead.join("\n")
    );
}

#[test]
fn the_link_scanner_finds_what_it_should_and_only_that() {
    let text = "\
See [ADR](adr/0001-x.md#status) and ![diagram](img/a%20b.png \"title\").
[ref]: ../README.md
`[not a link](nowhere.md)` but [a (paren) link](dir/file_(1).md).
```sh
[not a link](inside-a-fence.md)
```
[web](https://example.com) [anchor](#top) [angle](<with space.md>)
";
    let targets: Vec<String> = link_targets(text).into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        targets,
        [
            "adr/0001-x.md#status",
            "img/a%20b.png",
            "../README.md",
            "dir/file_(1).md",
            "https://example.com",
            "#top",
            "with space.md",
        ]
    );

    let root = Path::new("/repo");
    let doc = Path::new("/repo/docs/page.md");
    assert_eq!(check(root, doc, "https://example.com/x"), None);
    assert_eq!(check(root, doc, "mailto:someone@example.com"), None);
    assert_eq!(check(root, doc, "#anchor"), None);
    assert!(check(root, doc, "../../outside.md")
        .expect("outside the repository")
        .contains("leaves the repository"));
    assert!(check(root, doc, "missing.md#x")
        .expect("missing file")
        .contains("docs/missing.md does not exist"));
    assert_eq!(percent_decode("a%20b%2"), "a b%2");
}
