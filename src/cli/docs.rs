//! `completions SHELL` and `man DIR`: generated from the command tree itself, so they
//! never drift from what the parser accepts. Neither needs a store; the scripts call
//! back into the binary (`__complete-paths`) to complete store paths from the store the
//! command line (or `OVERLAY_STORE_CONFIG`) names.

use std::io::Write;
use std::path::Path;

use super::{args, CliError, CliResult};

pub fn completions(shell: clap_complete::Shell) -> CliResult {
    let mut cmd = args::command_tree();
    // Into memory first: the generator panics on a write error (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "overlay-store", &mut script);
    let script = with_store_paths(shell, String::from_utf8_lossy(&script).into_owned());
    let mut out = super::stdout();
    out.write_all(script.as_bytes()).and_then(|_| out.flush()).map_err(super::out_err)
}

/// `overlay-store.1` and `overlay-store-<command>.1` for every command (nested ones as
/// `overlay-store-policy-check.1`).
pub fn man_pages(dir: &Path) -> CliResult {
    std::fs::create_dir_all(dir).map_err(|e| CliError::Failed(format!("'{}': {e}", dir.display())))?;
    let cmd = args::command_tree();
    let mut written = 0;
    write_page(dir, &cmd, "overlay-store", &mut written)?;
    tracing::info!("wrote {written} man page(s) to '{}'", dir.display());
    Ok(())
}

fn write_page(dir: &Path, cmd: &clap::Command, name: &str, written: &mut usize) -> CliResult {
    // clap names are `&'static str` without its `string` feature; a few bytes per page
    // for a command that exits right after.
    let page = cmd.clone().name(&*Box::leak(name.to_string().into_boxed_str()));
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out).map_err(|e| CliError::Failed(format!("man page {name}: {e}")))?;
    let file = dir.join(format!("{name}.1"));
    std::fs::write(&file, out).map_err(|e| CliError::Failed(format!("'{}': {e}", file.display())))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_page(dir, sub, &format!("{name}-{}", sub.get_name()), written)?;
    }
    Ok(())
}

/// clap's script with store-path completion around it: when the word being completed
/// starts with `/`, the binary is asked (`__complete-paths`) for the store paths it
/// begins; file names and everything else still complete as clap's script does.
fn with_store_paths(shell: clap_complete::Shell, script: String) -> String {
    use clap_complete::Shell;
    match shell {
        // The line up to the cursor, as typed (quotes and all), which the binary splits as
        // a shell would: readline's words keep quotes and break at `=`.
        Shell::Bash => {
            script
                + r#"
_overlay_store_with_paths() {
    local cur="${COMP_WORDS[COMP_CWORD]}"
    if [[ "$cur" == /* ]]; then
        local -a paths
        mapfile -t paths < <("${COMP_WORDS[0]}" __complete-paths --line "${COMP_LINE:0:COMP_POINT}" 2>/dev/null)
        if (( ${#paths[@]} )); then
            COMPREPLY=("${paths[@]}")
            if [[ ${#paths[@]} -eq 1 && "${paths[0]}" == */ ]]; then
                # On the way to the store directory: files still count.
                mapfile -t -O 1 COMPREPLY < <(compgen -f -- "$cur")
                compopt -o nospace -o filenames 2>/dev/null
            fi
            return 0
        fi
    fi
    _overlay__store "$@"
}
complete -F _overlay_store_with_paths -o bashdefault -o default overlay-store
"#
        }
        // The file is autoloaded as the function `_overlay-store` (its `#compdef` line),
        // whose body redefines `_overlay-store` as clap's function and calls it: the
        // wrapper is called instead, and made the completer for the Tabs after.
        Shell::Zsh => {
            let wrapper = r#"_overlay-store-with-paths() {
    if [[ "$PREFIX" == /* ]]; then
        local -a paths
        paths=("${(@f)$(${words[1]} __complete-paths "${(@Q)words[2,CURRENT]}" 2>/dev/null)}")
        if (( ${#paths[@]} )) && [[ -n "${paths[1]}" ]]; then
            if [[ ${#paths[@]} -eq 1 && "${paths[1]}" == */ ]]; then
                compadd -S '' -- "${paths[@]}"
                _files
            else
                compadd -- "${paths[@]}"
            fi
            return 0
        fi
    fi
    _overlay-store "$@"
}

"#;
            let tail = "if [ \"$funcstack[1]\" = \"_overlay-store\" ]; then";
            match script.rfind(tail) {
                Some(at) => {
                    let (body, end) = script.split_at(at);
                    let end = end
                        .replacen(
                            "    _overlay-store \"$@\"",
                            "    compdef _overlay-store-with-paths overlay-store\n    _overlay-store-with-paths \"$@\"",
                            1,
                        )
                        .replacen("compdef _overlay-store overlay-store", "compdef _overlay-store-with-paths overlay-store", 1);
                    format!("{body}{wrapper}{end}")
                }
                None => script,
            }
        }
        // Offered alongside file names (no `-f`): a path outside the store still completes.
        Shell::Fish => {
            script
                + r#"
complete -c overlay-store -n 'string match -q -- "/*" (commandline -ct)' -a '(overlay-store __complete-paths (commandline -opc)[2..-1] (commandline -ct) 2>/dev/null)'
"#
        }
        _ => script,
    }
}

/// `overlay-store __complete-paths [WORD…] CURRENT`: the store paths (or the store
/// directory) that begin with CURRENT, one per line, from the store the earlier words'
/// `--config`/`--store` (else `OVERLAY_STORE_CONFIG`) name. Only reads: a store that
/// does not exist, an unreadable spec or any error prints nothing.
pub fn complete_paths(words: &[std::ffi::OsString]) {
    let mut words: Vec<String> = words.iter().map(|w| w.to_string_lossy().into_owned()).collect();
    if words.first().map(String::as_str) == Some("--line") {
        // `--line LINE`: the command line up to the cursor, program name first.
        let line = words.get(1).cloned().unwrap_or_default();
        let Some(mut split) = shell_words(&line) else { return };
        if split.is_empty() {
            return;
        }
        split.remove(0);
        words = split;
    }
    let Some((current, before)) = words.split_last() else { return };
    let mut out = super::stdout();
    for p in store_paths_beginning(before, current) {
        if writeln!(out, "{p}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

/// Splits a command line as the shell would (quotes, backslashes, a leading `~/`); a
/// line ending in blanks ends in an empty word, the one being completed. `None` for an
/// unfinished quote that is not the last word.
fn shell_words(line: &str) -> Option<Vec<String>> {
    let ends_blank = line.ends_with(|c: char| c == ' ' || c == '\t');
    // An unclosed quote in the word being completed: close it to split.
    let mut words = shlex::split(line).or_else(|| shlex::split(&format!("{line}'"))).or_else(|| shlex::split(&format!("{line}\"")))?;
    if ends_blank {
        words.push(String::new());
    }
    let home = std::env::var("HOME").unwrap_or_default();
    Some(
        words
            .into_iter()
            .map(|w| match w.strip_prefix("~/") {
                Some(rest) if !home.is_empty() => format!("{home}/{rest}"),
                _ => w,
            })
            .collect(),
    )
}

fn store_paths_beginning(before: &[String], current: &str) -> Vec<String> {
    use overlay_store::spec::StoreSpec;
    if !current.starts_with('/') {
        return Vec::new();
    }
    let mut config = None;
    let mut uri = None;
    let mut it = before.iter();
    while let Some(w) = it.next() {
        if let Some(v) = w.strip_prefix("--config=") {
            config = Some(v.to_string());
        } else if let Some(v) = w.strip_prefix("--store=") {
            uri = Some(v.to_string());
        } else if w == "--config" || (w.starts_with('-') && !w.starts_with("--") && w.ends_with('c')) {
            config = it.next().cloned();
        } else if w == "--store" {
            uri = it.next().cloned();
        }
    }
    let spec = match (config, uri) {
        (Some(f), _) => StoreSpec::from_file(Path::new(&f)),
        (None, Some(u)) => StoreSpec::parse_arg(&u),
        (None, None) => match std::env::var_os("OVERLAY_STORE_CONFIG") {
            Some(f) => StoreSpec::from_file(Path::new(&f)),
            None => return Vec::new(),
        },
    };
    let Ok(spec) = spec else { return Vec::new() };
    let store_dir = format!("{}/", spec.store_dir.to_string_lossy().trim_end_matches('/'));
    if !current.starts_with(&store_dir) {
        // On the way to the store directory: complete it.
        return if store_dir.starts_with(current) { vec![store_dir] } else { Vec::new() };
    }
    let mut found = std::collections::BTreeSet::new();
    // The upper (or only) database, then the lower stores', each opened as a lone
    // reader: nothing is created, recovered or mounted.
    let mut layer = Some(&spec);
    while let Some(s) = layer {
        let mut config = overlay_store::store::local::LocalConfig::from_spec(s);
        config.lone_reader = true;
        if config.db_path().exists() {
            if let Ok(store) = overlay_store::store::local::LocalStore::open(config) {
                let sd = overlay_store::store::Store::store_dir(&store).clone();
                for p in overlay_store::store::Store::all_paths(&store).unwrap_or_default() {
                    let shown = sd.display(&p);
                    if shown.starts_with(current) {
                        found.insert(shown);
                    }
                }
            }
        }
        layer = s.lower_store.as_deref();
    }
    found.into_iter().collect()
}
