//! What the usage messages need beyond argh's own text: `start` in the
//! command list when argh does not list one itself, and the nearest command
//! to a mistyped one. Pure text functions; `main` prints.

/// argh's help text with `start` listed under `serve`, as another name for
/// it, unless argh lists a `start` of its own.
pub fn list_start(help: &str) -> String {
    let is_entry = |line: &str, name: &str| {
        line.strip_prefix("  ")
            .and_then(|l| l.strip_prefix(name))
            .is_some_and(|l| l.starts_with(' '))
    };
    if help.lines().any(|l| is_entry(l, "start")) {
        return help.to_string();
    }
    let lines: Vec<&str> = help.lines().collect();
    let Some(serve) = lines.iter().position(|l| is_entry(l, "serve")) else {
        return help.to_string();
    };
    // The description column, and the end of serve's entry (its
    // description may wrap onto indented lines).
    let name_end = 2 + "serve".len();
    let rest = &lines[serve][name_end..];
    let column = name_end + rest.len() - rest.trim_start().len();
    let end = lines[serve + 1..]
        .iter()
        .position(|l| !l.starts_with(&" ".repeat(column)) || l.trim().is_empty())
        .map_or(lines.len(), |i| serve + 1 + i);
    let start = format!(
        "  {:<width$}The same command as serve.",
        "start",
        width = column - 2
    );
    let mut out: Vec<&str> = lines[..end].to_vec();
    out.push(&start);
    out.extend(&lines[end..]);
    out.join("\n")
}

/// The command nearest to a mistyped one: at most two edits away, or one
/// that starts with it.
pub fn closest<'a>(word: &str, commands: &[&'a str]) -> Option<&'a str> {
    commands
        .iter()
        .map(|c| (crate::util::edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2 || (word.len() >= 2 && c.starts_with(word)))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistyped_commands_get_a_hint() {
        let commands = ["run", "serve", "start", "token", "version"];
        assert_eq!(closest("srve", &commands), Some("serve"));
        assert_eq!(closest("vers", &commands), Some("version"));
        assert_eq!(closest("rnu", &commands), Some("run"));
        assert_eq!(closest("bogus", &commands), None);
    }

    #[test]
    fn start_is_listed_under_serve() {
        let help =
            "Commands:\n  run       Run one job.\n  serve     Serve the API.\n  token     A JWT.";
        assert_eq!(
            list_start(help),
            "Commands:\n  run       Run one job.\n  serve     Serve the API.\n  start     The same command as serve.\n  token     A JWT."
        );
        let wrapped = "  serve     Serve\n            more.\n  token     A JWT.";
        assert_eq!(
            list_start(wrapped),
            "  serve     Serve\n            more.\n  start     The same command as serve.\n  token     A JWT."
        );
        let with_start = "  serve     a\n  start     b";
        assert_eq!(list_start(with_start), with_start);
    }
}
