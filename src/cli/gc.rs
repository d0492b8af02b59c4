//! `gc`, `delete`, `optimise` and `stats`: the commands that remove or account for store
//! objects. Summaries follow `nix-store` (`N store paths deleted, X MiB freed`).

use std::io::Write;

use clap::Args;
use serde_json::json;

use overlay_store::format::StorePath;
use overlay_store::store::gc::{Collector, GcAction, GcOptions, GcReport, GcTarget};
use overlay_store::store::local::roots::print_roots_lines;
use overlay_store::store::Store;

use super::{out_err, paths, stdout, CliError, CliResult, Opened};
use overlay_store::spec::StoreSpec;

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Print the roots (`<link> -> <path>`) and do nothing else.
    #[arg(long = "print-roots", group = "mode")]
    print_roots: bool,
    /// Print the live paths and do nothing else.
    #[arg(long = "print-live", group = "mode")]
    print_live: bool,
    /// Print the dead paths (all GC candidates) and do nothing else.
    #[arg(long = "print-dead", group = "mode")]
    print_dead: bool,
    /// Print what would be deleted, and change nothing.
    #[arg(long = "dry-run", group = "mode")]
    dry_run: bool,
    /// Stop once at least this much is freed (bytes; K, M, G, T suffixes allowed).
    #[arg(long = "max-freed", value_name = "BYTES", value_parser = parse_size)]
    max_freed: Option<u64>,
    /// Print a JSON report (per layer) instead of the summary line.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().map(|n| n.saturating_mul(mult)).map_err(|_| format!("'{s}' is not a size in bytes (like 1048576 or 512M)"))
}

fn target(opened: &mut Opened) -> &mut dyn GcTarget {
    opened.gc_target()
}

/// Nix 2.8's summary: `%d store paths deleted, %.2f MiB freed`.
pub fn summary(n: usize, bytes: u64) -> String {
    format!("{n} store paths deleted, {:.2} MiB freed", bytes as f64 / 1048576.0)
}

fn report_json(r: &GcReport, sd: &overlay_store::format::StoreDir, dry_run: bool, overlay: bool) -> serde_json::Value {
    let upper_paths = r.deleted.len() - r.rows_only;
    let mut v = json!({
        "dryRun": dry_run,
        "pathsDeleted": r.paths_deleted(),
        "bytesFreed": r.bytes_freed,
        "deleted": r.deleted.iter().map(|p| sd.display(p)).collect::<Vec<_>>(),
        "unclaimed": r.garbage,
        "remounted": r.remounted,
    });
    if dry_run {
        v["wouldDelete"] = json!(r.skipped.iter().map(|p| sd.display(p)).collect::<Vec<_>>());
    }
    v["kept"] = json!(r.kept.iter().map(|(p, why)| json!({"path": sd.display(p), "reason": why})).collect::<Vec<_>>());
    if overlay {
        v["upper"] = json!({ "pathsDeleted": upper_paths + r.garbage.len(), "bytesFreed": r.bytes_freed });
        v["lowerRowsForgotten"] = json!(r.rows_only);
    }
    v
}

pub fn gc(opened: &mut Opened, spec: &StoreSpec, args: &GcArgs) -> CliResult {
    let sd = opened.store().store_dir().clone();
    let overlay = matches!(opened, Opened::Overlay(_));
    let opts = GcOptions {
        action: GcAction::Collect,
        max_freed: args.max_freed,
        dry_run: args.dry_run || args.print_live || args.print_dead || args.print_roots,
        keep_derivations: spec.gc.keep_derivations,
        keep_outputs: spec.gc.keep_outputs,
    };
    let mut notice = |m: &str| tracing::info!("{m}");
    let mut out = stdout();
    if args.print_roots {
        let roots = Collector { target: target(opened), notice: &mut notice }.find_roots()?;
        for l in print_roots_lines(&sd, &roots) {
            writeln!(out, "{l}").map_err(out_err)?;
        }
        return out.flush().map_err(out_err);
    }
    if args.print_live || args.print_dead {
        tracing::info!("determining live/dead paths...");
    }
    let result = Collector { target: target(opened), notice: &mut notice }.run(&opts);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "{}", summary(0, 0));
            let _ = out.flush();
            return Err(e.into());
        }
    };
    if args.print_live || args.print_dead {
        let list = if args.print_live { &report.live } else { &report.dead };
        for p in list {
            writeln!(out, "{}", sd.display(p)).map_err(out_err)?;
        }
    } else if args.json {
        writeln!(out, "{}", report_json(&report, &sd, args.dry_run, overlay)).map_err(out_err)?;
    } else if args.dry_run {
        for p in &report.skipped {
            writeln!(out, "delete {}", sd.display(p)).map_err(out_err)?;
        }
        for (p, why) in &report.kept {
            writeln!(out, "keep {} ({why})", sd.display(p)).map_err(out_err)?;
        }
        writeln!(out, "{} store paths would be deleted", report.skipped.len()).map_err(out_err)?;
    } else {
        writeln!(out, "{}", summary(report.paths_deleted(), report.bytes_freed)).map_err(out_err)?;
    }
    out.flush().map_err(out_err)
}

pub fn delete(opened: &mut Opened, spec: &StoreSpec, args: &[String], json: bool) -> CliResult {
    let sd = opened.store().store_dir().clone();
    let overlay = matches!(opened, Opened::Overlay(_));
    let paths: Vec<StorePath> = args.iter().map(|a| paths::resolve(opened.store(), a)).collect::<CliResult<_>>()?;
    let opts = GcOptions {
        action: GcAction::DeleteSpecific(paths),
        max_freed: None,
        dry_run: false,
        keep_derivations: spec.gc.keep_derivations,
        keep_outputs: spec.gc.keep_outputs,
    };
    let mut notice = |m: &str| tracing::info!("{m}");
    let result = Collector { target: target(opened), notice: &mut notice }.run(&opts);
    let mut out = stdout();
    match result {
        Ok(report) => {
            if json {
                writeln!(out, "{}", report_json(&report, &sd, false, overlay)).map_err(out_err)?;
            } else {
                writeln!(out, "{}", summary(report.paths_deleted(), report.bytes_freed)).map_err(out_err)?;
            }
            out.flush().map_err(out_err)
        }
        Err(e) => {
            if !json {
                let _ = writeln!(out, "{}", summary(0, 0));
            }
            let _ = out.flush();
            Err(e.into())
        }
    }
}

pub fn optimise(opened: &mut Opened, json: bool) -> CliResult {
    let Opened::Overlay(store) = opened else {
        return Err(CliError::Usage(
            "optimise removes upper-layer copies of paths the lower store has; it applies to local-overlay stores".into(),
        ));
    };
    let mut notice = |m: &str| tracing::info!("{m}");
    let r = store.optimise(&mut notice)?;
    let sd = store.store_dir().clone();
    let mut out = stdout();
    if json {
        let v = json!({
            "paths": r.paths.iter().map(|p| sd.display(p)).collect::<Vec<_>>(),
            "pathsDeduplicated": r.paths.len(),
            "bytesFreed": r.bytes_freed,
            "remounted": r.remounted,
        });
        writeln!(out, "{v}").map_err(out_err)?;
    } else {
        writeln!(out, "{} upper copies removed, {:.2} MiB freed", r.paths.len(), r.bytes_freed as f64 / 1048576.0).map_err(out_err)?;
    }
    out.flush().map_err(out_err)
}
