//! Cache keys: normalisation (`/` becomes `-`, and nothing else, as the
//! toolbox does), which names a backend can hold, and which stored key a
//! `restore` candidate takes: the key of exactly that name, else the newest
//! stored key that the candidate matches as an unanchored regular
//! expression (`gems-master` finds `gems-master-3f2a...`; `^abc` only keys
//! that start with `abc`). A candidate that is not a valid expression
//! matches nothing, as in the toolbox.

use regex_lite::Regex;

use super::backend::{Backend, Entry, STAGED_PREFIX};
use super::error::CacheError;

/// The longest key: a file name on Linux file systems and SFTP servers.
pub const MAX_KEY_LEN: usize = 255;

/// The key as stored: every `/` becomes `-`.
pub fn normalize(key: &str) -> String {
    key.replace('/', "-")
}

/// Why a normalised key cannot name a file of the cache directory: it would
/// escape it (`..`), name the directory itself, or collide with the
/// backend's own files. None when it can.
pub fn unstorable(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("a key cannot be empty");
    }
    if key == "." || key == ".." {
        return Some("a key cannot be '.' or '..'");
    }
    if key.contains('\0') {
        return Some("a key cannot hold a NUL byte");
    }
    if key.len() > MAX_KEY_LEN {
        return Some("a key has at most 255 bytes");
    }
    if key.starts_with(STAGED_PREFIX) {
        return Some("keys starting with '.incoming-' name the archives on their way in");
    }
    None
}

/// Refuses a key `backend` cannot hold safely (`unstorable`; SFTP and S3
/// also refuse control characters, which their batch commands and XML
/// listings cannot carry).
pub fn check(key: &str, backend: &Backend) -> Result<(), CacheError> {
    let reason = unstorable(key).or_else(|| match backend {
        Backend::Local(_) => None,
        Backend::Sftp(_) => key
            .chars()
            .any(char::is_control)
            .then_some("an SFTP cache cannot hold keys with control characters"),
        // S3 lists keys in XML, which cannot carry most of them.
        Backend::S3(_) => key
            .chars()
            .any(char::is_control)
            .then_some("an S3 cache cannot hold keys with control characters"),
    });
    match reason {
        None => Ok(()),
        Some(reason) => Err(CacheError::BadKey {
            key: key.to_string(),
            reason,
        }),
    }
}

/// Entries newest stored first (ties by key), the order in which a
/// candidate's matches are tried and `cache list` shows keys by default.
pub fn newest_first(entries: &mut [Entry]) {
    entries.sort_by(|a, b| b.stored_ms.cmp(&a.stored_ms).then(a.key.cmp(&b.key)));
}

/// The entry `restore` takes for `wanted`: the one named exactly so, else
/// the first, newest stored first, whose key the expression matches.
pub fn pick<'a>(wanted: &str, entries: &'a [Entry]) -> Option<&'a Entry> {
    if let Some(exact) = entries.iter().find(|e| e.key == wanted) {
        return Some(exact);
    }
    // Go's RE2 syntax, matched as Go's regexp matches: `\d`, `\w`, `\s` and
    // `\b` are ASCII, `.` and `[^...]` take a whole character. regex-lite
    // does the same at a fraction of full `regex`'s size. What it lacks,
    // `\p{..}` classes and Unicode case folding, the agent never had (full
    // `regex` ran with Unicode off to keep the classes ASCII): such a
    // candidate is a miss and `(?i)` folds ASCII letters only (README, Cache).
    let re = Regex::new(wanted).ok()?;
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| b.stored_ms.cmp(&a.stored_ms).then(a.key.cmp(&b.key)));
    sorted.into_iter().find(|e| re.is_match(&e.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, stored_ms: u64) -> Entry {
        Entry {
            key: key.into(),
            size: 1,
            stored_ms,
            accessed_ms: stored_ms,
        }
    }

    #[test]
    fn only_slashes_change() {
        assert_eq!(normalize("gems/feature/x"), "gems-feature-x");
        assert_eq!(normalize(" a b "), " a b ");
        for odd in ["a b", "a*", ".hidden", "'q'", "é", "a\\b", " x"] {
            assert_eq!(unstorable(odd), None, "{odd}");
        }
        for bad in ["", ".", "..", "a\0b", ".incoming-1"] {
            assert!(unstorable(bad).is_some(), "{bad:?}");
        }
        assert!(unstorable(&"k".repeat(256)).is_some());
        assert_eq!(unstorable(&"k".repeat(255)), None);
    }

    #[test]
    fn exact_beats_newer_partial_matches() {
        let entries = [entry("gems-master-1", 10), entry("gems-master", 1)];
        assert_eq!(pick("gems-master", &entries).unwrap().key, "gems-master");
    }

    #[test]
    fn the_newest_match_of_an_unanchored_expression_wins() {
        let entries = [
            entry("gems-master-old", 1),
            entry("gems-master-new", 5),
            entry("npm-master-newest", 9),
            entry("xabcx", 3),
        ];
        assert_eq!(
            pick("gems-master", &entries).unwrap().key,
            "gems-master-new"
        );
        assert_eq!(pick("^npm", &entries).unwrap().key, "npm-master-newest");
        assert_eq!(pick("abc", &entries).unwrap().key, "xabcx");
        assert!(pick("^abc", &entries).is_none());
        assert!(pick("pip-", &entries).is_none());
        // The empty candidate matches every key: the newest.
        assert_eq!(pick("", &entries).unwrap().key, "npm-master-newest");
        // Not a valid expression: a miss, not a literal search.
        assert!(pick("gems-(", &entries).is_none());
        assert_eq!(
            pick("master-\\w+$", &entries).unwrap().key,
            "npm-master-newest"
        );
    }

    #[test]
    fn expressions_read_as_go_reads_them() {
        let entries = [entry("key-é-1", 3), entry("KEY_2", 2), entry("a b", 1)];
        let found = |wanted: &str| pick(wanted, &entries).map(|e| e.key.as_str());
        // `.` and a negated class take a whole character, as in Go.
        assert_eq!(found("^key-.-1$"), Some("key-é-1"));
        assert_eq!(found("^key-[^x]-"), Some("key-é-1"));
        // Perl classes and word boundaries are ASCII, as in Go.
        assert_eq!(found("^\\w+$"), Some("KEY_2"));
        assert_eq!(found("key-\\w"), None);
        assert_eq!(found("\\s"), Some("a b"));
        assert_eq!(found("^\\d"), None);
        assert_eq!(found("\\bb$"), Some("a b"));
        assert_eq!(found("[[:upper:]]{3}"), Some("KEY_2"));
        assert_eq!(found("(?i)^key_"), Some("KEY_2"));
        // No Unicode classes: a miss, like any other invalid expression.
        assert_eq!(found("\\pL"), None);
    }
}
