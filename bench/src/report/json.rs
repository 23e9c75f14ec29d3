//! results.json: how the run was made, and per workload every sample, its summary per
//! system, the ratios to ext4 and whether Strata met its goal.

use serde_json::{json, Map, Value};

use super::RunInfo;
use crate::results::{summarize, Results, Summary};
use crate::workloads::Detail;

fn summary_json(s: Option<Summary>) -> Value {
    match s {
        Some(s) => json!({"median": s.median, "min": s.min, "max": s.max, "n": s.n}),
        None => Value::Null,
    }
}

pub fn to_json(r: &Results, info: &RunInfo) -> Value {
    let workloads: Vec<Value> = r
        .workloads
        .iter()
        .enumerate()
        .map(|(w, wl)| {
            let mut systems = Map::new();
            for (s, sys) in r.systems.iter().enumerate() {
                let c = &r.cells[w][s];
                let mut o = json!({
                    "samples": c.samples,
                    "summary": summary_json(c.summary()),
                    "errors": c.errors,
                });
                if matches!(wl.detail, Detail::Fio(_)) {
                    o["clat_p50_us"] = json!(c.clat_p50_us);
                    o["clat_p50_us_median"] = json!(summarize(&c.clat_p50_us).map(|s| s.median));
                    o["clat_p99_us"] = json!(c.clat_p99_us);
                    o["clat_p99_us_median"] = json!(summarize(&c.clat_p99_us).map(|s| s.median));
                    o["lat_p50_us"] = json!(c.lat_p50_us);
                    o["lat_p50_us_median"] = json!(summarize(&c.lat_p50_us).map(|s| s.median));
                    o["lat_p99_us"] = json!(c.lat_p99_us);
                    o["lat_p99_us_median"] = json!(summarize(&c.lat_p99_us).map(|s| s.median));
                    o["raw"] = json!(c.raw);
                }
                if !c.cache_hit_pct.is_empty() {
                    o["cache_hit_pct"] = json!(c.cache_hit_pct);
                }
                if matches!(wl.detail, Detail::Readers(_)) {
                    o["page_cache_mib"] =
                        json!(c.mem_parts.iter().map(|p| p.0).collect::<Vec<_>>());
                    o["daemon_rss_mib"] =
                        json!(c.mem_parts.iter().map(|p| p.1).collect::<Vec<_>>());
                }
                systems.insert(sys.name().to_string(), o);
            }
            let mut ratios = Map::new();
            for sys in r.compared() {
                if let Some(c) = r.compare(w, sys) {
                    ratios.insert(
                        sys.name().to_string(),
                        json!({"ratio": c.ratio, "speed": c.speed}),
                    );
                }
            }
            let fio = match wl.detail {
                Detail::Fio(j) => {
                    json!({"rw": j.rw, "bs": j.bs, "iodepth": j.iodepth, "ioengine": j.ioengine, "direct": j.direct})
                }
                _ => Value::Null,
            };
            json!({
                "id": wl.id,
                "label": wl.label,
                "group": wl.group.key(),
                "unit": wl.unit.name(),
                "higher_is_better": wl.unit.higher_is_better(),
                "goal": wl.goal.map(|g| g.to_string()),
                "strata_goal_met": r.goal_met(w),
                "fio": fio,
                "systems": systems,
                "vs_ext4": ratios,
            })
        })
        .collect();
    let c = &info.cfg;
    json!({
        "started": info.started,
        "unix_time": info.unix_time,
        "duration_s": info.duration_s,
        "command": info.command,
        "config": {
            "quick": info.quick,
            "repeats": info.repeats,
            "file_size_bytes": c.file_size,
            "image_size_bytes": c.image_size,
            "fio_runtime_s": info.runtime_s,
            "meta_files": c.meta_files,
            "tar_entries": c.tar_entries(),
            "tar_bytes": c.tar_bytes,
            "clone_sizes": c.clone_sizes,
            "clone_depths": c.clone_depths,
            "clone_reps": c.clone_reps,
            "readers": c.readers,
            "buffered": {
                "dd_bytes": c.buffered.dd_size,
                "log_lines": c.buffered.log_lines,
                "tiny_appends": c.buffered.tiny_appends,
                "hot_own_bytes": c.buffered.hot_own_size,
                "hot_inherited_bytes": c.buffered.hot_inherited_size.min(c.file_size),
                "small_files": c.buffered.small_files,
                "python_runs": c.buffered.python_runs,
                "git_objects": c.buffered.git_objects,
            },
            "direct": true,
            "dir": info.dir,
            "remount_before_each_job": info.remount,
            "systems": r.systems.iter().map(|s| s.name()).collect::<Vec<_>>(),
        },
        "host": {
            "fio": info.fio_version,
            "peers": info.peers,
            "kernel": info.kernel,
            "cpu": info.cpu,
            "cores": info.cores,
        },
        "strata_bin": info.strata_bin,
        "git_rev": info.git_rev,
        "failures": info.failures.iter().map(|(s, e)| json!({"system": s, "error": e})).collect::<Vec<_>>(),
        "workloads": workloads,
    })
}
