//! The README and the documents under `docs/` point only at things that exist: every
//! relative link resolves to a file of the repository, every `#anchor` to a heading of its
//! document, and every `*.md` file named in the text is there.

use std::path::{Path, PathBuf};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-`
/// and `_` dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut anchors = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code && let Some(heading) = line.strip_prefix('#') {
            anchors.push(slug(heading.trim_start_matches('#')));
        }
    }
    anchors
}

/// `(target)` of every `[text](target)` outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut links = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            links.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    links
}

fn check(document: &Path, problems: &mut Vec<String>) {
    let text = std::fs::read_to_string(document).expect("document");
    let own = anchors(&text);
    let base = document.parent().expect("directory");
    for link in links(&text) {
        if link.starts_with("http://")
            || link.starts_with("https://")
            || link.starts_with("mailto:")
        {
            continue;
        }
        let (path, anchor) = match link.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (link.as_str(), None),
        };
        if path.is_empty() {
            if let Some(anchor) = anchor
                && !own.contains(&anchor.to_owned())
            {
                problems.push(format!("{}: no heading for #{anchor}", document.display()));
            }
            continue;
        }
        let target = base.join(path);
        if !target.exists() {
            problems.push(format!("{}: {path} does not exist", document.display()));
            continue;
        }
        if let Some(anchor) = anchor {
            let theirs = anchors(&std::fs::read_to_string(&target).unwrap_or_default());
            if !theirs.contains(&anchor.to_owned()) {
                problems.push(format!(
                    "{}: {path} has no heading for #{anchor}",
                    document.display()
                ));
            }
        }
    }
    // Markdown files named in the text (not as links) must exist too.
    for word in text.split(|c: char| c.is_whitespace() || "`()[],:;\"'".contains(c)) {
        if word.ends_with(".md") && !word.contains("://") && !word.starts_with('.') {
            let named = word.trim_start_matches("./");
            if !base.join(named).exists() && !repository().join(named).exists() {
                problems.push(format!(
                    "{}: names {named}, which is not in the repository",
                    document.display()
                ));
            }
        }
    }
}

#[test]
fn readme_and_docs_links_resolve() {
    let root = repository();
    let mut documents = vec![root.join("README.md"), root.join("migrations/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(path);
        }
    }
    let mut problems = Vec::new();
    for document in &documents {
        check(document, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "broken references:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_finds_what_is_broken() {
    let text = "# Top\n[ok](#top) [gone](#nowhere) [file](no/such/file.md)\nsee MISSING.md\n";
    let dir = tempfile::tempdir().expect("dir");
    let document = dir.path().join("doc.md");
    std::fs::write(&document, text).expect("write");
    let mut problems = Vec::new();
    check(&document, &mut problems);
    // The missing file counts twice: as a link and as a named document.
    assert_eq!(problems.len(), 4, "{problems:?}");
    for expected in [
        "no heading for #nowhere",
        "no/such/file.md does not exist",
        "names MISSING.md",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{expected}: {problems:?}"
        );
    }
}
