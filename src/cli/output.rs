//! `path-info` output: Nix's text table, or current Nix's JSON (format 1: an object keyed
//! by store path, keys in alphabetical order, `null` for an invalid path).

use clap::Args;
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};

use serde_json::{json, Map, Value};

use overlay_store::format::StorePath;
use overlay_store::store::{PathInfo, Store, StoreError};

use super::{out_err, paths, stdout, CliError, CliResult};

/// Closure sizes of every path in `infos` (which must be closed under references),
/// sharing one in-memory graph.
fn closure_sizes(infos: &[PathInfo]) -> HashMap<StorePath, u64> {
    let index: HashMap<&StorePath, usize> = infos.iter().enumerate().map(|(i, p)| (&p.path, i)).collect();
    let edges: Vec<Vec<usize>> = infos.iter().map(|i| i.references.iter().filter_map(|r| index.get(r).copied()).collect()).collect();
    let mut mark = vec![0u32; infos.len()];
    let mut stack = Vec::new();
    let mut sizes = HashMap::new();
    for (start, info) in infos.iter().enumerate() {
        let gen = start as u32 + 1;
        let mut total = 0u64;
        stack.push(start);
        mark[start] = gen;
        while let Some(n) = stack.pop() {
            total += infos[n].nar_size;
            for &m in &edges[n] {
                if mark[m] != gen {
                    mark[m] = gen;
                    stack.push(m);
                }
            }
        }
        sizes.insert(info.path.clone(), total);
    }
    sizes
}

fn info_json(store: &dyn Store, info: &PathInfo, closure_size: Option<u64>) -> Value {
    let sd = store.store_dir();
    let mut m = Map::new();
    m.insert("ca".into(), info.ca.as_ref().map(|c| Value::from(c.to_string())).unwrap_or(Value::Null));
    if let Some(n) = closure_size {
        m.insert("closureSize".into(), json!(n));
    }
    m.insert("deriver".into(), info.deriver.as_ref().map(|d| Value::from(sd.display(d))).unwrap_or(Value::Null));
    m.insert("narHash".into(), json!(info.nar_hash.to_sri()));
    m.insert("narSize".into(), json!(info.nar_size));
    m.insert("references".into(), json!(info.references.iter().map(|r| sd.display(r)).collect::<Vec<_>>()));
    m.insert("registrationTime".into(), if info.registration_time != 0 { json!(info.registration_time) } else { Value::Null });
    m.insert("signatures".into(), json!(info.sigs.iter().collect::<Vec<_>>()));
    m.insert("storeDir".into(), json!(sd.as_str()));
    m.insert("ultimate".into(), json!(info.ultimate));
    m.insert("version".into(), json!(1));
    Value::Object(m)
}

#[derive(Args, Debug)]
pub struct PathInfoArgs {
    /// Print JSON: an object keyed by store path, as current `nix path-info --json`.
    #[arg(long)]
    pub json: bool,
    /// Apply to the closure of the paths.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Print the closure size of each path.
    #[arg(short = 'S', long = "closure-size")]
    pub closure_size: bool,
    /// Print the NAR size of each path.
    #[arg(short = 's', long = "size")]
    pub size: bool,
    #[arg(required = true)]
    pub paths: Vec<String>,
}

pub fn path_info(store: &dyn Store, args: &PathInfoArgs) -> CliResult {
    let sd = store.store_dir().clone();
    let mut wanted = Vec::new();
    let mut invalid = Vec::new();
    for a in &args.paths {
        let p = paths::resolve(store, a)?;
        // Not `is_valid`: on an overlay that caches lower metadata upper; a read should not write.
        match store.path_info(&p)? {
            Some(info) => wanted.push(info),
            None => invalid.push(p),
        }
    }
    if !args.json {
        if let Some(p) = invalid.first() {
            return Err(StoreError::NotValid(sd.display(p)).into());
        }
    }
    let need_closure = args.recursive || args.closure_size;
    let mut closure_infos = Vec::new();
    if need_closure && !wanted.is_empty() {
        closure_infos = store.closure(&wanted.iter().map(|i| i.path.clone()).collect::<Vec<_>>())?;
    }
    let sizes = if args.closure_size { closure_sizes(&closure_infos) } else { HashMap::new() };
    let infos: BTreeMap<StorePath, PathInfo> =
        if args.recursive { closure_infos } else { wanted }.into_iter().map(|i| (i.path.clone(), i)).collect();
    let mut out = stdout();
    if args.json && !std::io::stdout().is_terminal() {
        // Streamed compactly: a closure of 10,000 paths needs no tree of JSON values.
        write_json_stream(&mut out, store, &infos, &invalid, &sizes).map_err(out_err)?;
    } else if args.json {
        let mut obj = Map::new();
        for (p, info) in &infos {
            obj.insert(sd.display(p), info_json(store, info, sizes.get(p).copied()));
        }
        for p in &invalid {
            tracing::warn!("path '{}' is not valid", sd.display(p));
            obj.insert(sd.display(p), Value::Null);
        }
        let v = Value::Object(obj);
        let text = if std::io::stdout().is_terminal() { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }
            .map_err(|e| CliError::Failed(e.to_string()))?;
        writeln!(out, "{text}").map_err(out_err)?;
    } else {
        let width = infos.keys().map(|p| sd.display(p).len()).max().unwrap_or(0);
        for (p, info) in &infos {
            let shown = sd.display(p);
            let mut line = shown.clone();
            if args.size || args.closure_size {
                line.push_str(&" ".repeat(width - shown.len()));
            }
            if args.size {
                line.push_str(&format!("\t{:>11}", info.nar_size));
            }
            if args.closure_size {
                line.push_str(&format!("\t{:>11}", sizes.get(p).copied().unwrap_or(0)));
            }
            writeln!(out, "{line}").map_err(out_err)?;
        }
    }
    out.flush().map_err(out_err)
}

/// The same JSON as `info_json`, written field by field.
fn write_json_stream(
    out: &mut impl Write,
    store: &dyn Store,
    infos: &BTreeMap<StorePath, PathInfo>,
    invalid: &[StorePath],
    sizes: &HashMap<StorePath, u64>,
) -> std::io::Result<()> {
    let sd = store.store_dir();
    let q = |out: &mut dyn Write, s: &str| serde_json::to_writer(out, s).map_err(std::io::Error::from);
    out.write_all(b"{")?;
    let mut first = true;
    for (p, info) in infos {
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        q(out, &sd.display(p))?;
        out.write_all(b":{\"ca\":")?;
        match &info.ca {
            Some(c) => q(out, &c.to_string())?,
            None => out.write_all(b"null")?,
        }
        if let Some(n) = sizes.get(p) {
            write!(out, ",\"closureSize\":{n}")?;
        }
        out.write_all(b",\"deriver\":")?;
        match &info.deriver {
            Some(d) => q(out, &sd.display(d))?,
            None => out.write_all(b"null")?,
        }
        write!(out, ",\"narHash\":\"{}\",\"narSize\":{},\"references\":[", info.nar_hash.to_sri(), info.nar_size)?;
        for (k, r) in info.references.iter().enumerate() {
            if k > 0 {
                out.write_all(b",")?;
            }
            q(out, &sd.display(r))?;
        }
        out.write_all(b"],\"registrationTime\":")?;
        if info.registration_time != 0 {
            write!(out, "{}", info.registration_time)?;
        } else {
            out.write_all(b"null")?;
        }
        out.write_all(b",\"signatures\":[")?;
        for (k, sig) in info.sigs.iter().enumerate() {
            if k > 0 {
                out.write_all(b",")?;
            }
            q(out, sig)?;
        }
        out.write_all(b"],\"storeDir\":")?;
        q(out, sd.as_str())?;
        write!(out, ",\"ultimate\":{},\"version\":1}}", info.ultimate)?;
    }
    for p in invalid {
        tracing::warn!("path '{}' is not valid", sd.display(p));
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        q(out, &sd.display(p))?;
        out.write_all(b":null")?;
    }
    out.write_all(b"}\n")
}
