//! Cache keys: normalisation (`/` becomes `-`, as the toolbox does), what a
//! backend can hold, and which stored key a `restore` takes: the exact key,
//! else the most recently stored key that the given key matches as a
//! regular expression (`gems-master-` finds `gems-master-3f2a...`).

use regex::Regex;

use super::backend::Entry;
use super::error::CacheError;

/// The longest key: a file name on every backend.
const MAX_KEY_LEN: usize = 200;

/// The key as stored: `/` becomes `-`, surrounding whitespace goes.
pub fn normalize(key: &str) -> String {
    key.trim().replace('/', "-")
}

/// Checks a normalised key. Keys are file names on the backend and words in
/// `sftp` batch commands, so quotes, globs and whitespace are refused.
pub fn check(key: &str) -> Result<(), CacheError> {
    let bad = |reason| {
        Err(CacheError::BadKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("a key cannot be empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("a key has at most 200 bytes");
    }
    if key.starts_with('.') {
        return bad("a key cannot start with '.'");
    }
    if key
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'\\*?[]".contains(c))
    {
        return bad(
            "use letters, digits and punctuation other than quotes, '\\', '*', '?', '[' and ']'",
        );
    }
    Ok(())
}

/// The entry `restore` takes for `wanted`: an exact match, else the newest
/// entry whose key the pattern matches (a literal substring when `wanted`
/// is not a valid regular expression).
pub fn pick<'a>(wanted: &str, entries: &'a [Entry]) -> Option<&'a Entry> {
    if let Some(exact) = entries.iter().find(|e| e.key == wanted) {
        return Some(exact);
    }
    let matches: Box<dyn Fn(&str) -> bool> = match Regex::new(wanted) {
        Ok(re) => Box::new(move |k| re.is_match(k)),
        Err(_) => Box::new(move |k| k.contains(wanted)),
    };
    entries
        .iter()
        .filter(|e| matches(&e.key))
        .max_by_key(|e| (e.stored_ms, e.key.clone()))
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
    fn slashes_become_dashes() {
        assert_eq!(normalize("gems/feature/x"), "gems-feature-x");
        assert!(check(&normalize("a/b")).is_ok());
        assert!(check("").is_err());
        assert!(check("a b").is_err());
        assert!(check("a*").is_err());
        assert!(check(".hidden").is_err());
    }

    #[test]
    fn exact_beats_newer_partial_matches() {
        let entries = [entry("gems-master-1", 10), entry("gems-master", 1)];
        assert_eq!(pick("gems-master", &entries).unwrap().key, "gems-master");
    }

    #[test]
    fn the_newest_match_wins() {
        let entries = [
            entry("gems-master-old", 1),
            entry("gems-master-new", 5),
            entry("npm-master-newest", 9),
        ];
        assert_eq!(
            pick("gems-master-", &entries).unwrap().key,
            "gems-master-new"
        );
        assert_eq!(pick("^npm", &entries).unwrap().key, "npm-master-newest");
        assert!(pick("pip-", &entries).is_none());
        // Not a valid expression: matched as text.
        assert!(pick("gems-(", &entries).is_none());
    }
}
