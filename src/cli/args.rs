//! The command line's grammar: global options, every subcommand and its arguments, and
//! the parser that builds only the subcommand a command line names.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use super::logging::LogFormat;
use super::{gc, read, realisation};

/// A parsed command line: the global options and the subcommand.
#[derive(Debug)]
pub struct Cli {
    pub(super) global: Global,
    pub(super) command: Command,
}

/// The options every subcommand takes, and the program's own help and version. The
/// subcommands are added by [`Cli::parse_from`], not by derive, so that a short command
/// builds only its own.
#[derive(Parser, Debug)]
#[command(name = "overlay-store", version, about = "A Nix-compatible local store and local overlay store")]
#[command(subcommand_required = true, arg_required_else_help = true)]
#[command(
    after_help = "The store is named by --config FILE (a TOML store spec) or --store URI (a Nix store URI), or the OVERLAY_STORE_CONFIG environment variable.\nExit status: 0 success, 1 the operation failed, 2 usage or configuration error."
)]
pub(super) struct Global {
    /// TOML store spec to open.
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE", conflicts_with = "store")]
    pub(super) config: Option<PathBuf>,
    /// Nix store URI to open (`local?root=…`, `local-overlay://?…`, an absolute path).
    #[arg(long = "store", global = true, value_name = "URI")]
    pub(super) store: Option<String>,
    /// More logging (-v debug, -vv trace).
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    pub(super) verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short = 'q', long = "quiet", global = true)]
    pub(super) quiet: bool,
    /// Format of the log on stderr.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    pub(super) log_format: LogFormat,
}

impl Cli {
    /// Parses a command line. Building the whole command tree (24 subcommands, the five
    /// global options copied into each) and dropping it again was a third of the
    /// instructions of a one-path query, so when the first word that is not an option
    /// names a subcommand, only that subcommand is built. Anything that does not parse
    /// that way is parsed again against the whole tree, so help and errors (an unknown
    /// subcommand with suggestions, say) are exactly what the full parser gives.
    pub(super) fn parse_from(args: Vec<OsString>) -> Result<Cli, clap::Error> {
        match Cli::parse_pruned(&args) {
            Some(Ok(cli)) => Ok(cli),
            _ => Cli::parse_with(Command::augment_subcommands(Global::command()), args),
        }
    }

    /// Parses against a tree holding only the subcommand the command line names; `None`
    /// when it names none. Derive builds subcommands a group at a time, so a read
    /// command builds only the read group (a third of the tree).
    fn parse_pruned(args: &[OsString]) -> Option<Result<Cli, clap::Error>> {
        let name = subcommand_word(args).filter(|name| Command::has_subcommand(name))?;
        let group = if read::ReadCommand::has_subcommand(name) {
            read::ReadCommand::augment_subcommands(clap::Command::new("read"))
        } else {
            Command::augment_subcommands(clap::Command::new("all"))
        };
        let one = group.find_subcommand(name).cloned();
        // The process exits soon: freeing the tree is wasted work.
        std::mem::forget(group);
        Some(Cli::parse_with(Global::command().subcommand(one?), args.to_vec()))
    }

    fn parse_with(mut cmd: clap::Command, args: Vec<OsString>) -> Result<Cli, clap::Error> {
        let parsed = cmd
            .try_get_matches_from_mut(args)
            .and_then(|mut m| Ok(Cli { global: Global::from_arg_matches_mut(&mut m)?, command: Command::from_arg_matches_mut(&mut m)? }));
        let parsed = parsed.map_err(|e| e.format(&mut cmd));
        std::mem::forget(cmd);
        parsed
    }
}

/// The whole command tree, for completions and man pages.
pub(super) fn command_tree() -> clap::Command {
    Command::augment_subcommands(Global::command())
}

/// The first word of a command line that is neither an option nor an option's value:
/// the subcommand, if there is one.
fn subcommand_word(args: &[OsString]) -> Option<&str> {
    let mut words = args.iter().skip(1);
    while let Some(word) = words.next() {
        let word = word.to_str()?;
        match word {
            "--" => return None,
            "--config" | "--store" | "--log-format" => {
                words.next();
            }
            // A cluster of short flags, `-vc FILE` or `-c FILE`: a trailing `c` takes the next word.
            _ if word.starts_with('-') && !word.starts_with("--") => {
                if word.ends_with('c') {
                    words.next();
                }
            }
            _ if word.starts_with('-') => {}
            _ => return Some(word),
        }
    }
    None
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Create the store's directories, database and schema file (idempotent).
    Init,
    /// Add files or directories to the store, as `nix-store --add`; prints their store paths.
    Add {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    #[command(flatten)]
    Read(read::ReadCommand),
    /// Import a `nix-store --export` stream (from FILE or stdin); prints every path in it.
    Import { file: Option<PathBuf> },
    /// Check that paths are valid, as `nix-store --check-validity`: exit 1 naming the
    /// first invalid one (or print every invalid one with --print-invalid). On an overlay a
    /// lower path's closure is cached in the upper database, as Nix does (a policy's
    /// `copy_up` may decline).
    CheckValidity {
        #[arg(long = "print-invalid")]
        print_invalid: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Check every registered path exists and (with --check-contents) is unmodified.
    Verify {
        #[arg(long)]
        check_contents: bool,
        /// Restore modified or missing paths (needs --repair-from).
        #[arg(long, requires = "repair_from")]
        repair: bool,
        /// Where good copies come from: a store (root, URI or TOML spec) or an export file.
        #[arg(long = "repair-from", value_name = "SPEC")]
        repair_from: Option<String>,
    },
    /// Print the Nix store URI equivalent to the configured store spec.
    Uri,
    /// Exit 0 when the overlay is mounted as the spec says; else exit 1 and say how to fix it.
    CheckMount,
    /// Mount the overlay as the spec's [mount] table says (a no-op when already mounted).
    Mount,
    /// Unmount the overlay (a no-op when not mounted).
    Umount,
    /// Remount the overlay, so changes made directly in the upper layer show through.
    Remount,
    /// Delete store paths, refusing live ones, as `nix-store --delete`.
    Delete {
        #[arg(required = true)]
        paths: Vec<String>,
        /// Print a JSON report instead of the summary line.
        #[arg(long)]
        json: bool,
    },
    /// Collect garbage (in the upper layer only, for an overlay), as `nix-store --gc`.
    Gc(gc::GcArgs),
    /// Remove upper-layer copies of paths the lower store also has, then remount.
    Optimise {
        #[arg(long)]
        json: bool,
    },
    /// Counts and bytes per layer: upper-only, copied-up lower, duplicates, dead, reclaimable.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Work with Lua policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Realisations of content-addressed derivation outputs (`ca-derivations`).
    #[command(subcommand)]
    Realisation(realisation::RealisationCommand),
    /// Move the overlay onto a new lower store without losing live upper closures.
    Pivot {
        /// The complete spec after the pivot (TOML file or URI): same upper layer, mount
        /// point and state, another lower store. Your config is not rewritten: use this
        /// spec afterwards.
        #[arg(long = "to", value_name = "SPEC")]
        to: String,
        /// Print the plan (`copy <path>` / `drop <path>`) and change nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run as a service: keep the overlay mounted, reload the config and policy when they
    /// change (remounting or pivoting when needed), and run scheduled GC and optimise.
    Watch,
    /// Serve the store to stock Nix on a daemon socket (the Nix worker protocol), so
    /// `nix-store --store unix://SOCKET …`, `nix copy` and `nix-build` use it safely.
    /// Prints `serving …` on stderr when ready; stops on SIGTERM or SIGINT.
    Serve {
        /// The socket to listen on (default: `[serve] socket`, else
        /// STATE/daemon-socket/socket).
        #[arg(long, conflicts_with = "http")]
        socket: Option<PathBuf>,
        /// Serve the store as a Nix binary cache over HTTP on ADDR (`127.0.0.1:8080`)
        /// instead: narinfos (signed with `secret-key-files`) and NARs.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// How `--http` compresses NARs as it sends them.
        #[arg(long, value_name = "none|xz|zstd|bzip2", default_value = "none", requires = "http")]
        compression: String,
    },
    /// Copy paths from a binary cache into the store (the missing part of their closures,
    /// verified, registered all at once), or publish their closures to one (--to).
    /// Without --from or --to, the spec's `substituters` are used.
    Copy {
        /// A binary cache: `file:///DIR`, `http://…`, `https://…`.
        #[arg(long, value_name = "URL", conflicts_with = "to")]
        from: Option<String>,
        /// Publish to this cache (`file:///DIR?compression=zstd&secret-key=FILE`).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// Accept paths without a trusted signature (Nix's --no-check-sigs).
        #[arg(long = "no-check-sigs")]
        no_check_sigs: bool,
        /// Print a JSON report (what was fetched or published, what was there already).
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Sign paths with secret keys (`--key-file`, else `secret-key-files`); lower-only
    /// paths of an overlay are copied up first.
    Sign {
        /// A secret key file (`generate-key`'s or `nix-store --generate-binary-cache-key`'s); repeatable.
        #[arg(long = "key-file", short = 'k', value_name = "FILE")]
        key_files: Vec<PathBuf>,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Check what usually goes wrong (kernel, upper layer, workdir, the mount, a lower
    /// store changed since mount, held lock files, stale temp roots, the policy file's
    /// permissions, free space) and say how to fix it. Changes nothing; exit 1 when a
    /// check fails.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (`source <(overlay-store completions bash)`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for the program and every command into DIR (default `./man`).
    Man {
        #[arg(default_value = "man")]
        dir: PathBuf,
    },
    /// Write a new signing key pair in Nix's format (as `nix-store
    /// --generate-binary-cache-key`); needs no store.
    GenerateKey {
        /// The key's name, by convention the cache's host name and a number (`cache.example.org-1`).
        name: String,
        secret_key_file: PathBuf,
        public_key_file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum PolicyCommand {
    /// Load a policy in the sandbox, check its hooks, and dry-run each on sample data.
    /// Needs no store; exit 1 with FILE:LINE on a bad policy.
    Check { file: PathBuf },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<OsString> {
        std::iter::once("overlay-store").chain(words.iter().copied()).map(OsString::from).collect()
    }

    fn full_tree() -> clap::Command {
        Command::augment_subcommands(Global::command())
    }

    #[test]
    fn the_command_tree_is_consistent() {
        full_tree().debug_assert();
    }

    #[test]
    fn subcommand_word_skips_options_and_their_values() {
        let word = |w: &[&str]| subcommand_word(&argv(w)).map(str::to_string);
        assert_eq!(word(&["--store", "local?root=/s", "path-info", "p"]).as_deref(), Some("path-info"));
        assert_eq!(word(&["-c", "gc", "stats"]).as_deref(), Some("stats"));
        assert_eq!(word(&["-qc", "gc", "stats"]).as_deref(), Some("stats"));
        assert_eq!(word(&["-vv", "--config=f.toml", "--log-format", "json", "gc"]).as_deref(), Some("gc"));
        assert_eq!(word(&["-v"]), None);
        assert_eq!(word(&["--", "gc"]), None);
    }

    /// Whatever the command line, the pruned parse gives what the whole tree gives.
    #[test]
    fn pruned_parse_equals_the_full_parse() {
        let lines: &[&[&str]] = &[
            &["--store", "local?root=/s", "path-info", "--json", "-r", "/nix/store/p"],
            &["path-info", "--store", "local?root=/s", "-S", "/nix/store/p"],
            &["-qc", "f.toml", "gc", "--dry-run"],
            &["-vc", "stats", "gc"],
            &["--log-format", "json", "query", "--requisites", "p"],
            &["policy", "check", "lua/gc-keep-recent.lua"],
            &["realisation", "info", "--json", "sha256:00!out"],
            &["verify", "--check-contents", "--repair", "--repair-from", "/s"],
        ];
        for words in lines {
            let pruned = Cli::parse_pruned(&argv(words)).expect("names a subcommand").unwrap_or_else(|e| panic!("{words:?}: {e}"));
            let full = Cli::parse_with(full_tree(), argv(words)).unwrap();
            assert_eq!(format!("{pruned:?}"), format!("{full:?}"), "{words:?}");
        }
    }

    #[test]
    fn errors_and_help_come_from_the_whole_tree() {
        let lines: &[&[&str]] = &[
            &["path-infoo", "p"],
            &["path-info"],
            &["path-info", "--bogus", "p"],
            &["--store", "s", "--config", "f", "stats"],
            &["policy"],
            &["--help"],
            &["path-info", "--help"],
            &["help", "gc"],
            &[],
        ];
        for words in lines {
            let pruned = Cli::parse_from(argv(words)).expect_err("not a valid command line");
            let full = Cli::parse_with(full_tree(), argv(words)).unwrap_err();
            assert_eq!(pruned.kind(), full.kind(), "{words:?}");
            assert_eq!(pruned.render().to_string(), full.render().to_string(), "{words:?}");
        }
        let typo = Cli::parse_from(argv(&["path-infoo", "p"])).unwrap_err().render().to_string();
        assert!(typo.contains("path-info"), "suggests the subcommand: {typo}");
    }
}
