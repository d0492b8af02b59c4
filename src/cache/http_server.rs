//! `serve --http`: the store (an overlay's merged view) as a Nix binary cache over HTTP.
//!
//! Narinfos are made from the database on each request (signed when keys are given);
//! NARs are dumped from the store's files and compressed as they are sent, never staged.
//! Each worker thread has its own store handle, so requests run in parallel without
//! sharing a database connection.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tiny_http::{Header, Method, Request, Response, Server};

use super::{Compression, Result};
use crate::format::narinfo::{CacheInfo, NarInfo};
use crate::format::signing::SecretKey;
use crate::format::StorePath;
use crate::store::{Opened, PathInfo, Store};

#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// How NARs are compressed on the fly (`none` lets narinfos carry a file hash).
    pub compression: Compression,
    pub keys: Vec<SecretKey>,
    /// `Priority:` in `nix-cache-info` (Nix tries lower numbers first).
    pub priority: u64,
    pub workers: usize,
}

pub struct HttpServer {
    server: Arc<Server>,
    addr: SocketAddr,
}

impl HttpServer {
    pub fn bind(addr: &str) -> Result<HttpServer> {
        let server = Server::http(addr)
            .map_err(|e| super::CacheError::Url { url: format!("http://{addr}"), what: format!("cannot listen: {e}") })?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| super::CacheError::Url { url: addr.to_string(), what: "not an IP address".into() })?;
        Ok(HttpServer { server: Arc::new(server), addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` is set; `open` gives each worker its store.
    pub fn run(&self, open: &(dyn Fn() -> crate::store::Result<Opened> + Sync), opts: &HttpOptions, stop: &AtomicBool) -> Result<()> {
        std::thread::scope(|scope| {
            let mut workers = Vec::new();
            for i in 0..opts.workers.max(1) {
                let server = self.server.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn_scoped(scope, move || -> Result<()> {
                        let store = open()?;
                        while !stop.load(Ordering::Relaxed) {
                            match server.recv_timeout(Duration::from_millis(200)) {
                                Ok(Some(req)) => handle(store.store(), req, opts),
                                Ok(None) => {}
                                Err(e) => tracing::warn!("http: {e}"),
                            }
                        }
                        Ok(())
                    })
                    .map_err(|e| super::CacheError::Store(crate::store::StoreError::Other(format!("cannot start a worker: {e}"))))?;
                workers.push(handle);
            }
            let mut first_err = None;
            for w in workers {
                match w.join() {
                    Ok(Err(e)) if first_err.is_none() => {
                        // One worker failing to open the store stops them all.
                        stop.store(true, Ordering::Relaxed);
                        first_err = Some(e)
                    }
                    _ => {}
                }
            }
            first_err.map_or(Ok(()), Err)
        })
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn text(status: u16, body: String, content_type: &str) -> Response<io::Cursor<Vec<u8>>> {
    Response::from_string(body).with_status_code(status).with_header(header("Content-Type", content_type))
}

fn handle(store: &dyn Store, req: Request, opts: &HttpOptions) {
    let head = *req.method() == Method::Head;
    if !head && *req.method() != Method::Get {
        let _ = req.respond(text(405, "only GET and HEAD\n".into(), "text/plain"));
        return;
    }
    let url = req.url().split('?').next().unwrap_or("").to_string();
    let result = route(store, &url, opts);
    let outcome = match result {
        Ok(Reply::Text(_, ctype)) if head => req.respond(text(200, String::new(), ctype)),
        Ok(Reply::Text(body, ctype)) => req.respond(text(200, body, ctype)),
        Ok(Reply::Nar(_)) if head => req.respond(text(200, String::new(), "application/x-nix-nar")),
        Ok(Reply::Nar(reader)) => {
            req.respond(Response::new(200.into(), vec![header("Content-Type", "application/x-nix-nar")], reader, None, None))
        }
        Err(status) => req.respond(text(status, format!("{}\n", if status == 404 { "not found" } else { "error" }), "text/plain")),
    };
    if let Err(e) = outcome {
        tracing::debug!("http {url}: {e}");
    }
}

enum Reply {
    Text(String, &'static str),
    Nar(Box<dyn Read + Send>),
}

fn route(store: &dyn Store, url: &str, opts: &HttpOptions) -> std::result::Result<Reply, u16> {
    let sd = store.store_dir();
    if url == "/nix-cache-info" {
        let info = CacheInfo { store_dir: sd.as_str().to_string(), want_mass_query: true, priority: Some(opts.priority) };
        return Ok(Reply::Text(info.render(), "text/x-nix-cache-info"));
    }
    if let Some(hash_part) = url.strip_prefix('/').and_then(|u| u.strip_suffix(".narinfo")) {
        let info = lookup(store, hash_part)?;
        return Ok(Reply::Text(narinfo_for(store, &info, opts).render(sd), "text/x-nix-narinfo"));
    }
    if let Some(file) = url.strip_prefix("/nar/") {
        let (hash_part, ext) = file.split_once(".nar").ok_or(404u16)?;
        let compression = [Compression::None, Compression::Xz, Compression::Zstd, Compression::Bzip2]
            .into_iter()
            .find(|c| c.extension() == ext)
            .ok_or(404u16)?;
        let info = lookup(store, hash_part)?;
        return Ok(Reply::Nar(stream_nar(store.real_path(&info.path), compression).map_err(|_| 500u16)?));
    }
    Err(404)
}

fn lookup(store: &dyn Store, hash_part: &str) -> std::result::Result<PathInfo, u16> {
    if crate::format::store_path::validate_hash_part(hash_part).is_err() {
        return Err(404);
    }
    let path: StorePath = store.path_from_hash_part(hash_part).map_err(|_| 500u16)?.ok_or(404u16)?;
    store.path_info(&path).map_err(|_| 500u16)?.ok_or(404)
}

fn narinfo_for(store: &dyn Store, info: &PathInfo, opts: &HttpOptions) -> NarInfo {
    let url = format!("nar/{}.nar{}", info.path.hash_part(), opts.compression.extension());
    // Uncompressed, the file is the NAR: its hash and size are known without sending it.
    let file = (opts.compression == Compression::None).then_some((info.nar_hash, info.nar_size));
    super::publish::narinfo_of(store.store_dir(), info, &opts.keys, url, opts.compression, file)
}

/// The NAR of the files at `real`, compressed, produced by a thread into a pipe. A
/// failure midway ends the stream early; the client's hash check catches it.
fn stream_nar(real: std::path::PathBuf, compression: Compression) -> io::Result<Box<dyn Read + Send>> {
    let (reader, writer) = io::pipe()?;
    std::thread::Builder::new().name("http-nar".into()).spawn(move || {
        let result = compression
            .encoder(io::BufWriter::with_capacity(1 << 16, writer))
            .and_then(|enc| crate::store::fs::tree::dump(&real, enc))
            .and_then(|enc| enc.finish())
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()).map(drop));
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::BrokenPipe {
                tracing::warn!("http: NAR of '{}': {e}", real.display());
            }
        }
    })?;
    Ok(Box::new(reader))
}
