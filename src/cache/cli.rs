//! `cache`, the program a job runs: the agent's own binary started under
//! that name (or as `agent cache`). It reads the toolbox's command line
//! (`args.rs`), prints the toolbox's lines (`output.rs`), and asks the agent
//! on the host (`client.rs`); `transfer.rs` holds `store` and `restore`.
//!
//! Exit codes are the toolbox's: 0 for everything that went as it could,
//! a miss, an existing key and a missing path included; 1 from `has_key`
//! for a missing key and from `is_not_empty` for an empty cache; the error
//! path (`error: ...` on stdout) exits 0, or 1 when the job sets
//! `CACHE_FAIL_ON_ERROR=true`; a wrong number of arguments prints
//! `Incorrect number of arguments!` and the help and exits 0; an unknown
//! command or flag exits 1.

use std::process::ExitCode;

use super::args::{self, Invocation, Parsed, Sub};
use super::client::{ask, init, normalized, unexpected, Outcome};
use super::config::CleanupBy;
use super::error::CacheError;
use super::format;
use super::keys;
use super::output::Out;
use super::protocol::{Reply, Request};
use super::transfer;

/// Runs `cache ARGS...` and returns its exit code.
pub fn main(args: &[String]) -> ExitCode {
    let mut out = Out::open();
    let code = match args::parse(args) {
        Parsed::Help(text) => {
            out.print(&text);
            0
        }
        Parsed::UnknownHelpTopic(words) => {
            out.print_err(&format!(
                "Unknown help topic {}\n{}",
                go_quote_list(&words),
                args::root_usage()
            ));
            0
        }
        Parsed::UnknownCommand(word) => {
            let message = Parsed::unknown_command_message(&word);
            out.print_err(&format!(
                "Error: {message}\nRun 'cache --help' for usage.\n"
            ));
            out.say(&message);
            1
        }
        Parsed::Flag { sub, message } => {
            let usage = match sub {
                Some(s) => s.usage(),
                None => args::root_usage().to_string(),
            };
            out.print_err(&format!("Error: {message}\n{usage}\n"));
            out.say(&message);
            1
        }
        Parsed::Run(inv) => match run(&mut out, &inv) {
            Ok(code) => code,
            Err(e) => out.fail(&e.to_string()),
        },
    };
    ExitCode::from(code)
}

/// Go's `%#q` of a list of words: `[`a` `b`]`.
fn go_quote_list(words: &[String]) -> String {
    let quoted: Vec<String> = words
        .iter()
        .map(|w| {
            if w.contains('`') || w.chars().any(char::is_control) {
                format!("{w:?}")
            } else {
                format!("`{w}`")
            }
        })
        .collect();
    format!("[{}]", quoted.join(" "))
}

fn run(out: &mut Out, inv: &Invocation) -> Outcome {
    let n = inv.positional.len();
    match inv.sub {
        Sub::Store => {
            if n != 0 && n != 2 {
                return incorrect(out, inv.sub);
            }
            transfer::store(out, inv)
        }
        Sub::Restore => {
            if n > 1 {
                return incorrect(out, inv.sub);
            }
            transfer::restore(out, inv)
        }
        Sub::HasKey => {
            if n != 1 {
                return incorrect(out, inv.sub);
            }
            has_key(out, &inv.positional[0])
        }
        Sub::Delete => {
            if n != 1 {
                return incorrect(out, inv.sub);
            }
            delete(out, &inv.positional[0])
        }
        Sub::List => list(out, inv.value_flag.as_deref()),
        Sub::Clear => clear(out),
        Sub::Usage => usage(out),
        Sub::IsNotEmpty => is_not_empty(out),
        Sub::Completion => {
            let script = inv
                .positional
                .first()
                .and_then(|shell| args::completion_script(shell));
            match script {
                Some(s) => out.print(&s),
                None => out.print(&Sub::Completion.help()),
            }
            Ok(0)
        }
        Sub::Help => {
            out.print(args::ROOT_HELP);
            Ok(0)
        }
    }
}

/// A wrong number of arguments: the toolbox's line and the help, exit 0,
/// nothing contacted.
fn incorrect(out: &mut Out, sub: Sub) -> Outcome {
    out.say("Incorrect number of arguments!");
    out.print(&sub.help());
    Ok(0)
}

fn has_key(out: &mut Out, raw: &str) -> Outcome {
    init(out)?;
    let key = normalized(out, raw);
    match ask(&Request::HasKey { key: key.clone() })? {
        Reply::HasKey { exists: true } => {
            out.say(&format!("Key '{key}' exists in the cache store."));
            Ok(0)
        }
        Reply::HasKey { exists: false } => {
            out.say(&format!("Key '{key}' doesn't exist in the cache store."));
            Ok(1)
        }
        other => Err(unexpected(other)),
    }
}

fn delete(out: &mut Out, raw: &str) -> Outcome {
    init(out)?;
    let key = normalized(out, raw);
    match ask(&Request::Delete { key: key.clone() })? {
        Reply::Deleted { existed: true } => out.say(&format!("Key '{key}' is deleted.")),
        Reply::Deleted { existed: false } => {
            out.say(&format!("Key '{key}' doesn't exist in the cache store."))
        }
        other => return Err(unexpected(other)),
    }
    Ok(0)
}

/// `cache list [-s FIELD]`: the toolbox's table, newest stored first by
/// default, the largest first by `SIZE`, the most recently accessed first
/// by `ACCESS_TIME`.
fn list(out: &mut Out, sort_by: Option<&str>) -> Outcome {
    let by = match sort_by {
        None => CleanupBy::StoreTime,
        Some(v) => CleanupBy::from_toolbox(v).ok_or_else(|| CacheError::BadSortField(v.into()))?,
    };
    init(out)?;
    let Reply::List { mut entries } = ask(&Request::List)? else {
        return Err(CacheError::Remote("unexpected answer to list".into()));
    };
    if entries.is_empty() {
        out.say("Cache is empty.");
        return Ok(0);
    }
    keys::newest_first(&mut entries);
    match by {
        CleanupBy::StoreTime => {}
        CleanupBy::Size => entries.sort_by_key(|e| std::cmp::Reverse(e.size)),
        CleanupBy::AccessTime => entries.sort_by_key(|e| std::cmp::Reverse(e.accessed_ms)),
    }
    let mut table = format!(
        "{:<60} {:<12} {:<22} {:<22}\n",
        "NAME", "SIZE", "STORED AT", "ACCESSED AT"
    );
    for e in &entries {
        table.push_str(&format!(
            "{:<60} {:<12} {:<22} {:<22}\n",
            e.key,
            format::size_u(e.size),
            format::rfc822(e.stored_ms),
            format::rfc822(e.accessed_ms)
        ));
    }
    out.say(&table);
    Ok(0)
}

fn clear(out: &mut Out) -> Outcome {
    init(out)?;
    match ask(&Request::Clear)? {
        Reply::Cleared { .. } => {
            out.say("Deleted all caches.");
            Ok(0)
        }
        other => Err(unexpected(other)),
    }
}

fn usage(out: &mut Out) -> Outcome {
    let capacity = init(out)?;
    match ask(&Request::Usage { capacity })? {
        Reply::Usage { used, free } => {
            let free = free.map_or_else(|| "(unlimited)".to_string(), format::size);
            out.say(&format!("FREE SPACE: {free}"));
            out.say(&format!("USED SPACE: {}", format::size_u(used)));
            Ok(0)
        }
        other => Err(unexpected(other)),
    }
}

fn is_not_empty(out: &mut Out) -> Outcome {
    init(out)?;
    match ask(&Request::IsNotEmpty)? {
        Reply::HasKey { exists } => Ok(u8::from(!exists)),
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_topics_are_quoted_as_go_does() {
        assert_eq!(go_quote_list(&["nosuch".into()]), "[`nosuch`]");
        assert_eq!(go_quote_list(&["a".into(), "b`c".into()]), "[`a` \"b`c\"]");
    }
}
