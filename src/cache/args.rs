//! The command line of `cache`, read as the toolbox's CLI (cobra 1.7 and
//! pflag) reads it: the subcommand is the first word that is not a flag,
//! flags may stand anywhere (`--flag=v`, `--flag v`, `-f v`, `-fv`), `--`
//! ends them, `-h`/`--help` asks for help. The help screens, the unknown
//! command and flag errors, and the "Did you mean this?" suggestions are
//! byte for byte the toolbox's.
//!
//! This module only reads words; `cli.rs` runs what they ask for.

/// The subcommands, in the order cobra registers them (the order of the
/// suggestions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Clear,
    Delete,
    HasKey,
    IsNotEmpty,
    List,
    Restore,
    Store,
    Usage,
    Help,
    Completion,
}

const ALL: [Sub; 10] = [
    Sub::Clear,
    Sub::Delete,
    Sub::HasKey,
    Sub::IsNotEmpty,
    Sub::List,
    Sub::Restore,
    Sub::Store,
    Sub::Usage,
    Sub::Help,
    Sub::Completion,
];

impl Sub {
    pub fn name(self) -> &'static str {
        match self {
            Sub::Clear => "clear",
            Sub::Delete => "delete",
            Sub::HasKey => "has_key",
            Sub::IsNotEmpty => "is_not_empty",
            Sub::List => "list",
            Sub::Restore => "restore",
            Sub::Store => "store",
            Sub::Usage => "usage",
            Sub::Help => "help",
            Sub::Completion => "completion",
        }
    }

    fn by_name(name: &str) -> Option<Sub> {
        ALL.into_iter().find(|s| s.name() == name)
    }

    /// The one flag with a value the subcommand has: (long, short).
    fn value_flag(self) -> Option<(&'static str, char)> {
        match self {
            Sub::Store => Some(("cleanup-by", 'c')),
            Sub::List => Some(("sort-by", 's')),
            _ => None,
        }
    }

    /// The subcommand's help screen.
    pub fn help(self) -> String {
        let (short, use_line) = match self {
            Sub::Clear => ("Remove all keys in the cache.", "clear"),
            Sub::Delete => ("Delete a key from the cache.", "delete [key]"),
            Sub::HasKey => ("Check if a key is present in the cache.", "has_key [key]"),
            Sub::IsNotEmpty => ("Check if the cache is not empty.", "is_not_empty"),
            Sub::List => ("List all keys in the cache.", "list"),
            Sub::Restore => ("Restore keys from the cache.", "restore [keys]"),
            Sub::Store => ("Store keys in the cache.", "store [key path]"),
            Sub::Usage => ("Get a summary of cache usage.", "usage"),
            Sub::Help => return HELP_HELP.to_string(),
            Sub::Completion => return COMPLETION_HELP.to_string(),
        };
        format!("{short}\n\n{}", self.usage_with(use_line))
    }

    /// The help screen without its first two lines (what cobra prints
    /// after a flag error).
    pub fn usage(self) -> String {
        let help = self.help();
        help.splitn(3, '\n').nth(2).unwrap_or("").to_string()
    }

    fn usage_with(self, use_line: &str) -> String {
        let flags = match self {
            Sub::Store => STORE_FLAGS.to_string(),
            Sub::List => LIST_FLAGS.to_string(),
            other => format!("  -h, --help   help for {}\n", other.name()),
        };
        format!("Usage:\n  cache {use_line} [flags]\n\nFlags:\n{flags}")
    }
}

/// `cache`, `cache -h`, `cache help`.
pub const ROOT_HELP: &str = "Utility for managing dependency caches

Usage:
  cache [command]

Available Commands:
  clear        Remove all keys in the cache.
  completion   Generate the autocompletion script for the specified shell
  delete       Delete a key from the cache.
  has_key      Check if a key is present in the cache.
  help         Help about any command
  is_not_empty Check if the cache is not empty.
  list         List all keys in the cache.
  restore      Restore keys from the cache.
  store        Store keys in the cache.
  usage        Get a summary of cache usage.

Flags:
  -h, --help   help for cache

Use \"cache [command] --help\" for more information about a command.
";

/// The root help without its first two lines.
pub fn root_usage() -> &'static str {
    &ROOT_HELP["Utility for managing dependency caches\n\n".len()..]
}

/// `store`'s flags: cobra indents the continuation lines of a multi-line
/// description by 28 spaces and keeps the tabs of the toolbox's raw string.
const STORE_FLAGS: &str = "  -c, --cleanup-by string   \n                            \t\tIf storage does not have enough space,\n                            \t\tkeys will be sorted in descending order using the specified field,\n                            \t\tand will be cleaned up starting from the last key on the list.\n                            \t\tPossible values are: SIZE,STORE_TIME,ACCESS_TIME.\n                            \t (default \"STORE_TIME\")\n  -h, --help                help for store\n";

const LIST_FLAGS: &str = "  -h, --help             help for list\n  -s, --sort-by string   Sort keys by a specific field. Possible values are: SIZE,STORE_TIME,ACCESS_TIME. (default \"STORE_TIME\")\n";

const HELP_HELP: &str = "Help provides help for any command in the application.
Simply type cache help [path to command] for full details.

Usage:
  cache help [command] [flags]

Flags:
  -h, --help   help for help
";

const COMPLETION_HELP: &str =
    "Generate the autocompletion script for cache for the specified shell.
See each sub-command's help for details on how to use the generated script.

Usage:
  cache completion [command]

Available Commands:
  bash        Generate the autocompletion script for bash
  fish        Generate the autocompletion script for fish
  powershell  Generate the autocompletion script for powershell
  zsh         Generate the autocompletion script for zsh

Flags:
  -h, --help   help for completion

Use \"cache completion [command] --help\" for more information about a command.
";

/// A subcommand to run, with its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub sub: Sub,
    pub positional: Vec<String>,
    /// `--cleanup-by` of `store`, `--sort-by` of `list`, when given.
    pub value_flag: Option<String>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Run(Invocation),
    /// A help screen for stdout; exit 0.
    Help(String),
    /// `cache help WORDS` of no known command: exit 0.
    UnknownHelpTopic(Vec<String>),
    /// The first word names no command: exit 1.
    UnknownCommand(String),
    /// A flag error of `sub` (None: the root command): exit 1.
    Flag {
        sub: Option<Sub>,
        message: String,
    },
}

impl Parsed {
    /// cobra's message for an unknown command, with its suggestions.
    pub fn unknown_command_message(word: &str) -> String {
        let mut message = format!("unknown command \"{word}\" for \"cache\"");
        let suggestions = suggestions(word);
        if !suggestions.is_empty() {
            message.push_str("\n\nDid you mean this?\n");
            for s in suggestions {
                message.push_str(&format!("\t{s}\n"));
            }
        }
        message
    }
}

/// The commands cobra suggests for a mistyped one: within Levenshtein
/// distance 2, or of which the word is a prefix, ignoring case.
fn suggestions(word: &str) -> Vec<&'static str> {
    let lower = word.to_lowercase();
    ALL.iter()
        .map(|s| s.name())
        .filter(|name| crate::util::edit_distance(&lower, name) <= 2 || name.starts_with(&lower))
        .collect()
}

/// The command words of `args`, as cobra's `stripFlags` finds them: flags
/// are skipped, and a flag the root does not know takes the next word as
/// its value.
fn command_words(args: &[String]) -> Vec<&str> {
    let mut words = Vec::new();
    let mut rest = args.iter();
    while let Some(s) = rest.next() {
        let s = s.as_str();
        let root_bool = |name: &str| name == "help" || name == "h";
        if s == "--" {
            break;
        } else if let Some(long) = s.strip_prefix("--") {
            if !long.contains('=') && !root_bool(long) && rest.next().is_none() {
                break;
            }
        } else if s.starts_with('-') && !s.contains('=') && s.chars().count() == 2 {
            if !root_bool(&s[1..]) && rest.len() <= 1 {
                break;
            }
            if !root_bool(&s[1..]) {
                rest.next();
            }
        } else if !s.is_empty() && !s.starts_with('-') {
            words.push(s);
        }
    }
    words
}

/// Reads `cache ARGS...`.
pub fn parse(args: &[String]) -> Parsed {
    let words = command_words(args);
    let Some(first) = words.first() else {
        // The root command: it has only -h, and no action of its own.
        return match parse_flags(None, args) {
            Ok(_) => Parsed::Help(ROOT_HELP.to_string()),
            Err(message) => Parsed::Flag { sub: None, message },
        };
    };
    let Some(sub) = Sub::by_name(first) else {
        return Parsed::UnknownCommand(first.to_string());
    };
    // The command's own words: all but the first occurrence of its name.
    let mut own: Vec<String> = Vec::with_capacity(args.len());
    let mut removed = false;
    for a in args {
        if !removed && a == first {
            removed = true;
            continue;
        }
        own.push(a.clone());
    }
    let flags = match parse_flags(Some(sub), &own) {
        Ok(f) => f,
        Err(message) => {
            return Parsed::Flag {
                sub: Some(sub),
                message,
            }
        }
    };
    if flags.help {
        return Parsed::Help(sub.help());
    }
    if sub == Sub::Help {
        let Some(topic) = flags.positional.first() else {
            return Parsed::Help(ROOT_HELP.to_string());
        };
        return match Sub::by_name(topic) {
            Some(s) => Parsed::Help(s.help()),
            None => Parsed::UnknownHelpTopic(flags.positional),
        };
    }
    Parsed::Run(Invocation {
        sub,
        positional: flags.positional,
        value_flag: flags.value,
    })
}

struct Flags {
    help: bool,
    value: Option<String>,
    positional: Vec<String>,
}

/// pflag's reading of one command's words; the error is pflag's message.
fn parse_flags(sub: Option<Sub>, args: &[String]) -> Result<Flags, String> {
    let value_flag = sub.and_then(Sub::value_flag);
    let mut flags = Flags {
        help: false,
        value: None,
        positional: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            flags.positional.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            if name == "help" {
                flags.help = true;
            } else if value_flag.is_some_and(|(l, _)| l == name) {
                flags.value = Some(match inline {
                    Some(v) => v,
                    None if i < args.len() => {
                        i += 1;
                        args[i - 1].clone()
                    }
                    None => return Err(format!("flag needs an argument: --{name}")),
                });
            } else {
                return Err(format!("unknown flag: --{name}"));
            }
            continue;
        }
        if arg.len() > 1 && arg.starts_with('-') {
            let shorts: Vec<char> = arg[1..].chars().collect();
            let mut k = 0;
            while k < shorts.len() {
                let c = shorts[k];
                k += 1;
                if c == 'h' {
                    flags.help = true;
                } else if value_flag.is_some_and(|(_, s)| s == c) {
                    let rest: String = shorts[k..].iter().collect();
                    let rest = rest.strip_prefix('=').map(str::to_string).unwrap_or(rest);
                    flags.value = Some(if !rest.is_empty() || k < shorts.len() {
                        rest
                    } else if i < args.len() {
                        i += 1;
                        args[i - 1].clone()
                    } else {
                        return Err(format!("flag needs an argument: '{c}' in -{c}"));
                    });
                    break;
                } else {
                    return Err(format!("unknown shorthand flag: '{c}' in {arg}"));
                }
            }
            continue;
        }
        flags.positional.push(arg.clone());
    }
    Ok(flags)
}

/// A script that completes the subcommands' names, for `cache completion
/// SHELL` (ours: cobra's scripts call back into a hidden command).
pub fn completion_script(shell: &str) -> Option<String> {
    let names = ALL.map(Sub::name).join(" ");
    match shell {
        "bash" => Some(format!(
            "# bash completion for cache\n_cache() {{\n  if [ \"$COMP_CWORD\" -eq 1 ]; then\n    COMPREPLY=($(compgen -W \"{names}\" -- \"${{COMP_WORDS[1]}}\"))\n  fi\n}}\ncomplete -o default -F _cache cache\n"
        )),
        "zsh" => Some(format!(
            "#compdef cache\n_cache() {{\n  if (( CURRENT == 2 )); then\n    compadd {names}\n  else\n    _files\n  fi\n}}\ncompdef _cache cache\n"
        )),
        "fish" => Some(format!(
            "# fish completion for cache\ncomplete -c cache -n '__fish_use_subcommand' -f -a '{names}'\n"
        )),
        "powershell" => Some(format!(
            "# powershell completion for cache\nRegister-ArgumentCompleter -CommandName 'cache' -ScriptBlock {{\n  param($wordToComplete, $commandAst, $cursorPosition)\n  '{}' -split ' ' | Where-Object {{ $_ -like \"$wordToComplete*\" }} | ForEach-Object {{ [System.Management.Automation.CompletionResult]::new($_, $_, 'ParameterValue', $_) }}\n}}\n",
            names
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn spec_help(name: &str) -> Option<String> {
        std::fs::read_to_string(format!("/work/harness/cache-spec-help/{name}.txt")).ok()
    }

    #[test]
    fn help_screens_are_byte_for_byte_the_toolbox_s() {
        assert_eq!(parse(&[]), Parsed::Help(ROOT_HELP.into()));
        for line in ["-h", "--help", "help"] {
            assert_eq!(
                parse(&words(line)),
                Parsed::Help(ROOT_HELP.into()),
                "{line}"
            );
        }
        for sub in ALL.into_iter().take(8) {
            let name = sub.name();
            for line in [
                format!("{name} -h"),
                format!("{name} --help"),
                format!("help {name}"),
            ] {
                assert_eq!(parse(&words(&line)), Parsed::Help(sub.help()), "{line}");
            }
            // The copies of the toolbox's screens, where this machine has them.
            if let Some(want) = spec_help(name) {
                assert_eq!(sub.help(), want, "{name}");
            }
        }
        if let Some(want) = spec_help("root") {
            assert_eq!(ROOT_HELP, want);
        }
        assert!(Sub::Store
            .usage()
            .starts_with("Usage:\n  cache store [key path] [flags]\n"));
        assert!(root_usage().starts_with("Usage:\n"));
    }

    #[test]
    fn flags_stand_anywhere() {
        let run = |line: &str| match parse(&words(line)) {
            Parsed::Run(inv) => inv,
            other => panic!("{line}: {other:?}"),
        };
        let inv = run("store k p -c SIZE");
        assert_eq!(
            (inv.sub, inv.positional.clone()),
            (Sub::Store, words("k p"))
        );
        assert_eq!(inv.value_flag.as_deref(), Some("SIZE"));
        assert_eq!(
            run("store --cleanup-by=SIZE k p").value_flag.as_deref(),
            Some("SIZE")
        );
        assert_eq!(
            run("store -cACCESS_TIME k p").value_flag.as_deref(),
            Some("ACCESS_TIME")
        );
        assert_eq!(run("list -s SIZE").value_flag.as_deref(), Some("SIZE"));
        assert_eq!(run("list --sort-by SIZE extra").positional, words("extra"));
        assert_eq!(run("restore -- -k").positional, words("-k"));
        assert_eq!(run("store -").positional, words("-"));
    }

    #[test]
    fn flag_errors_are_pflag_s() {
        let flag = |line: &str| match parse(&words(line)) {
            Parsed::Flag { sub, message } => (sub, message),
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(
            flag("store --foo"),
            (Some(Sub::Store), "unknown flag: --foo".into())
        );
        assert_eq!(
            flag("restore -x k"),
            (
                Some(Sub::Restore),
                "unknown shorthand flag: 'x' in -x".into()
            )
        );
        assert_eq!(
            flag("list --sort-by"),
            (Some(Sub::List), "flag needs an argument: --sort-by".into())
        );
        assert_eq!(
            flag("list -s"),
            (Some(Sub::List), "flag needs an argument: 's' in -s".into())
        );
        assert_eq!(flag("--foo"), (None, "unknown flag: --foo".into()));
    }

    #[test]
    fn unknown_commands_get_cobra_s_suggestions() {
        assert_eq!(
            parse(&words("nosuch")),
            Parsed::UnknownCommand("nosuch".into())
        );
        assert_eq!(
            Parsed::unknown_command_message("stor"),
            "unknown command \"stor\" for \"cache\"\n\nDid you mean this?\n\tstore\n"
        );
        assert_eq!(
            Parsed::unknown_command_message("nosuch"),
            "unknown command \"nosuch\" for \"cache\""
        );
        assert_eq!(suggestions("c"), ["clear", "completion"]);
        assert_eq!(suggestions("LIS"), ["list"]);
        assert_eq!(
            parse(&words("help nosuch x")),
            Parsed::UnknownHelpTopic(words("nosuch x"))
        );
    }
}
