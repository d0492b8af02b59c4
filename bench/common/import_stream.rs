//! The export stream both benches import: one new path whose file names `system`, so it
//! refers to it (and an import must check or copy up the system's whole closure).

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use overlay_store::format::export::{write_end, write_item};
use overlay_store::format::hash::{HashAlgo, HashSink};
use overlay_store::format::{FileIngestion, StoreDir};
use overlay_store::store::fs::tree::dump as dump_path;

/// A one-item export stream written in `dir` whose item refers to `system`: the stream
/// file and the item's store path.
pub fn import_stream(dir: &Path, system: &str) -> io::Result<(PathBuf, String)> {
    let bad = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
    let sd = StoreDir::new("/nix/store");
    let system = sd.parse_path(system).map_err(|e| bad(e.to_string()))?;
    fs::create_dir_all(dir)?;
    let src = dir.join("bench-import");
    fs::write(&src, format!("a new path that refers to the system:\n{}\n", sd.display(&system)))?;
    let (nar_hash, _) = dump_path(&src, HashSink::new(HashAlgo::Sha256))?.finish();
    let refs = BTreeSet::from([system]);
    let path =
        sd.make_fixed_output_path("bench-import", FileIngestion::Recursive, &nar_hash, &refs, false).map_err(|e| bad(e.to_string()))?;
    let stream = dir.join("import.export");
    let mut out = io::BufWriter::new(fs::File::create(&stream)?);
    write_item(&mut out, &sd, &path, &refs, None, |w| dump_path(&src, w).map(|_| ()))?;
    write_end(&mut out)?;
    out.flush()?;
    Ok((stream, sd.display(&path)))
}
