//! The admin API's routes: which method and path reach which handler ([`dispatch`]), and the
//! handlers, each a few lines over the engine, OCI import/export or the statistics. Input is
//! checked before it reaches the engine (empty ids, reserved labels, relative paths); a layer
//! that is mounted somewhere is not removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::{Engine, LayerInfo};
use serde::de::DeserializeOwned;

use super::http::{percent_decode, percent_encode, Request, Response};
use super::json::{
    CloneState, CreateRequest, Empty, ExportRequest, GrowBody, ImportRequest, LabelsRequest, Layer,
    LayerList, LimitsBody, ScrubRequest, ScrubStatusBody, SnapshotRequest,
};
use crate::host;
use crate::labels::RESERVED_LABEL_PREFIX;
use crate::Error;

/// What the handlers need: the engine, the previous stats report, the mount point.
pub(super) struct Ctx {
    pub(super) engine: Arc<Engine>,
    /// The previous `GET /v1/stats`, for rates.
    pub(super) rates: crate::stats::RateTracker,
    /// Absolute mount point, as /proc/self/mountinfo shows it.
    pub(super) mountpoint: PathBuf,
}

/// At most `n` bytes of `s` (on a character boundary), for echoing client input.
fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Invalid(format!("invalid request body: {e}")))
}

/// Route one request to its handler; every answer, errors included, comes back as a
/// [`Response`].
pub(super) fn dispatch(ctx: &Ctx, req: &Request) -> Response {
    let raw_path = req.target.split(['?', '#']).next().unwrap_or("");
    let Some(rest) = raw_path.strip_prefix('/') else {
        return Response::error(400, "the request target must be a path starting with /");
    };
    let mut segs = Vec::new();
    for raw in rest.split('/') {
        match percent_decode(raw) {
            Ok(s) => segs.push(s),
            Err(e) => return e.into(),
        }
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    let not_allowed = |allow: &str| {
        Response::error(
            405,
            format!("{} is not allowed here; use {allow}", clip(m, 32)),
        )
        .header("Allow", allow.to_string())
    };
    let r = match segs[..] {
        ["v1", "layers"] | ["v1", "layers", ""] => match m {
            "GET" => Ok(list(ctx)),
            "POST" => create(ctx, &req.body),
            _ => return not_allowed("GET, POST"),
        },
        ["v1", "layers", id] => match m {
            "GET" => stat(ctx, id),
            "DELETE" => remove(ctx, id),
            _ => return not_allowed("GET, DELETE"),
        },
        ["v1", "layers", id, "commit"] => match m {
            "POST" => commit(ctx, id, &req.body),
            _ => return not_allowed("POST"),
        },
        ["v1", "layers", id, "snapshot"] => match m {
            "POST" => snapshot(ctx, id, &req.body),
            _ => return not_allowed("POST"),
        },
        ["v1", "layers", id, "limits"] => match m {
            "PUT" => set_limits(ctx, id, &req.body),
            _ => return not_allowed("PUT"),
        },
        ["v1", "layers", id, "labels"] => match m {
            "PUT" => set_labels(ctx, id, &req.body),
            _ => return not_allowed("PUT"),
        },
        ["v1", "import"] => match m {
            "POST" => import(ctx, &req.body),
            _ => return not_allowed("POST"),
        },
        ["v1", "layers", id, "export"] => match m {
            "POST" => export(ctx, id, &req.body),
            _ => return not_allowed("POST"),
        },
        ["v1", "stats"] => match m {
            "GET" => Ok(Response::json(200, &ctx.rates.report(&ctx.engine))),
            _ => return not_allowed("GET"),
        },
        ["v1", "scrub"] => match m {
            "POST" => scrub_start(ctx, &req.body),
            "GET" => scrub_status(ctx),
            "DELETE" => scrub_cancel(ctx),
            _ => return not_allowed("GET, POST, DELETE"),
        },
        ["v1", "grow"] => match m {
            "POST" => grow(ctx, &req.body),
            _ => return not_allowed("POST"),
        },
        _ => {
            return Response::error(
                404,
                format!(
                    "no such endpoint: {} {} (the API is under /v1/layers)",
                    clip(m, 32),
                    clip(raw_path, 200)
                ),
            )
        }
    };
    r.unwrap_or_else(Response::from)
}

fn nonempty(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::Invalid("empty layer id".into()));
    }
    Ok(())
}

fn layer(ctx: &Ctx, status: u16, i: &LayerInfo) -> Response {
    Response::json(status, &Layer::from_info(i, &ctx.mountpoint))
}

fn list(ctx: &Ctx) -> Response {
    let layers = ctx
        .engine
        .layer_list()
        .iter()
        .map(|i| Layer::from_info(i, &ctx.mountpoint))
        .collect();
    Response::json(200, &LayerList { layers })
}

fn create(ctx: &Ctx, body: &[u8]) -> Result<Response, Error> {
    let r: CreateRequest = parse_body(body)?;
    nonempty(&r.id)?;
    unreserved(&r.labels)?;
    // Limits go in with the layer's labels: one journal commit, so a crash never leaves the
    // layer without them.
    let limits: engine::Limits = r.limits.into();
    limits.check()?;
    let labels = with_limits(r.labels, limits);
    let info = match &r.parent {
        None => {
            if r.state == Some(CloneState::View) {
                return Err(Error::Invalid(
                    "a base layer (no parent) is always active; state \"view\" needs a parent"
                        .into(),
                ));
            }
            ctx.engine.layer_create(&r.id, labels)
        }
        Some(parent) => {
            nonempty(parent)?;
            let state = r.state.unwrap_or(CloneState::Active).into();
            ctx.engine.layer_clone(parent, &r.id, state, labels)
        }
    }?;
    Ok(layer(ctx, 201, &info).header(
        "Location",
        format!("/v1/layers/{}", percent_encode(&info.id)),
    ))
}

/// `labels` plus the limit labels of `limits`.
fn with_limits(
    labels: BTreeMap<String, String>,
    limits: engine::Limits,
) -> BTreeMap<String, String> {
    let named: BTreeMap<engine::Name, engine::Name> = labels
        .iter()
        .map(|(k, v)| (k.as_bytes().into(), v.as_bytes().into()))
        .collect();
    limits
        .apply_to(&named)
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

fn set_limits(ctx: &Ctx, id: &str, body: &[u8]) -> Result<Response, Error> {
    nonempty(id)?;
    let r: LimitsBody = parse_body(body)?;
    let info = ctx.engine.layer_set_limits(id, r.into())?;
    Ok(layer(ctx, 200, &info))
}

fn stat(ctx: &Ctx, id: &str) -> Result<Response, Error> {
    nonempty(id)?;
    let info = ctx.engine.layer_stat(id)?;
    Ok(layer(ctx, 200, &info))
}

fn commit(ctx: &Ctx, id: &str, body: &[u8]) -> Result<Response, Error> {
    nonempty(id)?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let _: Empty = parse_body(body)?;
    }
    let info = ctx.engine.layer_commit(id)?;
    Ok(layer(ctx, 200, &info))
}

fn snapshot(ctx: &Ctx, id: &str, body: &[u8]) -> Result<Response, Error> {
    nonempty(id)?;
    let r: SnapshotRequest = parse_body(body)?;
    nonempty(&r.id)?;
    let info = ctx.engine.layer_snapshot(id, &r.id)?;
    Ok(layer(ctx, 201, &info).header(
        "Location",
        format!("/v1/layers/{}", percent_encode(&info.id)),
    ))
}

fn absolute(path: &str) -> Result<&Path, Error> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(Error::Invalid(format!(
            "path {:?} must be absolute (the daemon opens it)",
            clip(path, 200)
        )));
    }
    Ok(p)
}

fn import(ctx: &Ctx, body: &[u8]) -> Result<Response, Error> {
    let r: ImportRequest = parse_body(body)?;
    nonempty(&r.layer)?;
    let path = absolute(&r.path)?;
    let compression: crate::oci::Compression =
        r.compression.as_deref().unwrap_or("auto").parse()?;
    let f = std::fs::File::open(path)
        .map_err(|e| Error::Invalid(format!("cannot open {}: {e}", path.display())))?;
    let report = crate::oci::import(
        &ctx.engine,
        &r.layer,
        r.parent.as_deref(),
        std::io::BufReader::with_capacity(1 << 20, f),
        compression,
    )?;
    Ok(Response::json(201, &report).header(
        "Location",
        format!("/v1/layers/{}", percent_encode(&report.layer)),
    ))
}

fn export(ctx: &Ctx, id: &str, body: &[u8]) -> Result<Response, Error> {
    nonempty(id)?;
    let r: ExportRequest = parse_body(body)?;
    let path = absolute(&r.path)?;
    let f = std::fs::File::create(path)
        .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", path.display())))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    crate::oci::export(&ctx.engine, id, &mut w)?;
    std::io::Write::flush(&mut w)
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
    Ok(Response::json(200, &ExportRequest { path: r.path }))
}

fn scrub_start(ctx: &Ctx, body: &[u8]) -> Result<Response, Error> {
    let r: ScrubRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ScrubRequest::default()
    } else {
        parse_body(body)?
    };
    if r.rate_bytes_per_second == Some(0) {
        return Err(Error::Invalid(
            "rate_bytes_per_second must be at least 1 (leave it out for no limit)".into(),
        ));
    }
    let st = ctx.engine.scrub_start(engine::scrub::ScrubOptions {
        rate_bytes: r.rate_bytes_per_second,
    })?;
    Ok(Response::json(202, &ScrubStatusBody::from(&st)).header("Location", "/v1/scrub".into()))
}

fn scrub_status(ctx: &Ctx) -> Result<Response, Error> {
    match ctx.engine.scrub_status() {
        Some(st) => Ok(Response::json(200, &ScrubStatusBody::from(&st))),
        None => Err(Error::NotFound(
            "no scrub has run since the daemon started (POST /v1/scrub starts one)".into(),
        )),
    }
}

fn scrub_cancel(ctx: &Ctx) -> Result<Response, Error> {
    ctx.engine.scrub_cancel();
    scrub_status(ctx)
}

fn grow(ctx: &Ctx, body: &[u8]) -> Result<Response, Error> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        let _: Empty = parse_body(body)?;
    }
    let r = ctx.engine.grow()?;
    Ok(Response::json(
        200,
        &GrowBody {
            old_bytes: r.old_bytes,
            new_bytes: r.new_bytes,
        },
    ))
}

fn unreserved(labels: &BTreeMap<String, String>) -> Result<(), Error> {
    match labels.keys().find(|k| crate::labels::is_reserved(k)) {
        Some(k) => Err(Error::Invalid(format!(
            "label {k:?}: labels under {RESERVED_LABEL_PREFIX} are reserved for Strata"
        ))),
        None => Ok(()),
    }
}

fn set_labels(ctx: &Ctx, id: &str, body: &[u8]) -> Result<Response, Error> {
    nonempty(id)?;
    let r: LabelsRequest = parse_body(body)?;
    unreserved(&r.labels)?;
    let mut labels = r.labels;
    let old = ctx.engine.layer_stat(id)?;
    labels.extend(
        old.labels
            .into_iter()
            .filter(|(k, _)| crate::labels::is_reserved(k)),
    );
    let info = ctx.engine.layer_set_labels(id, labels)?;
    Ok(layer(ctx, 200, &info))
}

fn remove(ctx: &Ctx, id: &str) -> Result<Response, Error> {
    nonempty(id)?;
    match host::read_mount_users(&ctx.mountpoint, id) {
        Ok(users) => {
            if !users.is_empty() {
                let list: Vec<String> = users.iter().map(|p| p.display().to_string()).collect();
                return Err(Error::Busy(format!(
                    "layer {id:?} is mounted at {}; unmount it first",
                    list.join(", ")
                )));
            }
        }
        Err(e) => log::warn!(
            "admin API: cannot read /proc/self/mountinfo ({e}); removing without the mount check"
        ),
    }
    ctx.engine.layer_remove(id)?;
    Ok(Response::no_content())
}
