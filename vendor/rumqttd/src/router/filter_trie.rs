//! WARMHOUSE PATCH (8): subscription filters indexed by topic level, so
//! matching a topic costs its number of levels, not the number of filters.
//!
//! Upstream compared a new topic with every filter, one by one, and cached
//! only topics that matched something: with one command filter per device,
//! every publish on an unmatched topic (most telemetry) cost a pass over
//! the whole fleet's filters, and every new filter a pass over every topic
//! ever seen.

use std::collections::HashMap;

use super::FilterIdx;

#[derive(Debug, Default)]
pub(crate) struct FilterTrie {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    /// Exact next levels.
    children: HashMap<Box<str>, Node>,
    /// `+` at the next level.
    single: Option<Box<Node>>,
    /// The filter that ends here with `/#` (or is `#`).
    multi: Option<FilterIdx>,
    /// The filter that ends exactly here.
    here: Option<FilterIdx>,
}

impl FilterTrie {
    /// Adds `filter` (a valid MQTT filter) as `idx`.
    pub(crate) fn insert(&mut self, filter: &str, idx: FilterIdx) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            match level {
                "#" => {
                    node.multi = Some(idx);
                    return;
                }
                "+" => node = node.single.get_or_insert_with(Default::default),
                exact => node = node.children.entry(exact.into()).or_default(),
            }
        }
        node.here = Some(idx);
    }

    /// WARMHOUSE PATCH (20): removes `filter` (as inserted), and the nodes
    /// only it needed, so a trie whose filters come and go (one command
    /// filter per device, devices moving between replicas) does not keep a
    /// node for every filter it ever held.
    pub(crate) fn remove(&mut self, filter: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        remove(&mut self.root, &levels);
    }

    /// Every filter `topic` matches. Per MQTT 3.1.1 section 4.7.2, a topic
    /// starting with `$` is not matched by a wildcard at the first level.
    pub(crate) fn matches(&self, topic: &str) -> Vec<FilterIdx> {
        let mut found = Vec::new();
        let levels: Vec<&str> = topic.split('/').collect();
        let wildcards_at_first_level = !topic.starts_with('$');
        walk(
            &self.root,
            &levels,
            0,
            wildcards_at_first_level,
            &mut found,
        );
        found
    }
}

/// WARMHOUSE PATCH (20): `true` when `node` holds nothing any more (its
/// parent drops it).
fn remove(node: &mut Node, levels: &[&str]) -> bool {
    match levels.split_first() {
        None => node.here = None,
        // `#` is always the last level of a valid filter.
        Some((&"#", _)) => node.multi = None,
        Some((&"+", rest)) => {
            if node.single.as_deref_mut().is_some_and(|single| remove(single, rest)) {
                node.single = None;
            }
        }
        Some((exact, rest)) => {
            if node
                .children
                .get_mut(*exact)
                .is_some_and(|child| remove(child, rest))
            {
                node.children.remove(*exact);
                // A map keeps its largest capacity: one level that held
                // every device's filter would stay that big for good.
                if node.children.capacity() > 64
                    && node.children.len() < node.children.capacity() / 4
                {
                    node.children.shrink_to_fit();
                }
            }
        }
    }
    node.children.is_empty() && node.single.is_none() && node.multi.is_none() && node.here.is_none()
}

fn walk(
    node: &Node,
    levels: &[&str],
    depth: usize,
    wildcards_at_first_level: bool,
    found: &mut Vec<FilterIdx>,
) {
    let wildcards_allowed = depth > 0 || wildcards_at_first_level;
    // `a/#` matches `a` as well as everything below it.
    if let Some(idx) = node.multi.filter(|_| wildcards_allowed) {
        found.push(idx);
    }
    let Some(level) = levels.get(depth) else {
        found.extend(node.here);
        return;
    };
    if let Some(child) = node.children.get(*level) {
        walk(child, levels, depth + 1, wildcards_at_first_level, found);
    }
    if let Some(single) = node.single.as_deref().filter(|_| wildcards_allowed) {
        walk(single, levels, depth + 1, wildcards_at_first_level, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::matches;

    const FILTERS: &[&str] = &[
        "#",
        "+",
        "/+",
        "a",
        "a/#",
        "a/+",
        "a/b",
        "a/b/#",
        "+/b",
        "+/+/c",
        "/tenants/+/telemetry",
        "/tenants/d1/commands",
        "/tenants/#",
        "$SYS/#",
        "$SYS/x",
    ];

    const TOPICS: &[&str] = &[
        "a",
        "a/b",
        "a/b/c",
        "x/b",
        "x/y/c",
        "/tenants/d1/telemetry",
        "/tenants/d1/commands",
        "/tenants/d2/commands",
        "/",
        "",
        "$SYS/x",
        "b",
    ];

    #[test]
    fn matches_what_the_linear_scan_matches() {
        let mut trie = FilterTrie::default();
        for (idx, filter) in FILTERS.iter().enumerate() {
            trie.insert(filter, idx);
        }
        for topic in TOPICS {
            let mut found = trie.matches(topic);
            found.sort_unstable();
            let expected: Vec<usize> = FILTERS
                .iter()
                .enumerate()
                .filter(|(_, filter)| {
                    // The scan matches nothing for `$` topics; MQTT lets
                    // filters that spell the `$` level out match them.
                    if topic.starts_with('$') {
                        filter.starts_with('$') && matches(&topic[1..], &filter[1..])
                    } else {
                        matches(topic, filter)
                    }
                })
                .map(|(idx, _)| idx)
                .collect();
            assert_eq!(found, expected, "topic {topic:?}");
        }
    }

    /// WARMHOUSE PATCH (20): what is removed matches nothing any more,
    /// the rest matches as before, and a trie emptied of its filters holds
    /// no nodes.
    #[test]
    fn removed_filters_match_nothing_and_leave_no_nodes() {
        let mut trie = FilterTrie::default();
        for (idx, filter) in FILTERS.iter().enumerate() {
            trie.insert(filter, idx);
        }
        let removed = ["a/+", "/tenants/d1/commands", "#", "$SYS/x", "+/+/c"];
        for filter in removed {
            trie.remove(filter);
        }
        for topic in TOPICS {
            let mut found = trie.matches(topic);
            found.sort_unstable();
            let expected: Vec<usize> = FILTERS
                .iter()
                .enumerate()
                .filter(|(_, filter)| !removed.contains(filter))
                .filter(|(_, filter)| {
                    if topic.starts_with('$') {
                        filter.starts_with('$') && matches(&topic[1..], &filter[1..])
                    } else {
                        matches(topic, filter)
                    }
                })
                .map(|(idx, _)| idx)
                .collect();
            assert_eq!(found, expected, "topic {topic:?}");
        }
        for filter in FILTERS {
            trie.remove(filter);
        }
        assert!(trie.root.children.is_empty());
        assert!(trie.root.single.is_none());
        assert!(trie.root.multi.is_none() && trie.root.here.is_none());
    }
}
