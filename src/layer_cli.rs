//! `strata layer …`: the admin API's command-line client.

use std::collections::BTreeMap;
use std::path::Path;

use clap::Subcommand;
use control::admin::{self, serde_json, Client, CloneState, CreateRequest, Layer, LimitsBody};

/// A layer's limits on the command line (each one unset: unlimited).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Space the layer may own: what it writes and copies on write (e.g. 10G). Past it,
    /// writes get EDQUOT.
    #[arg(long = "limit-bytes", value_name = "SIZE", value_parser = crate::parse_size)]
    bytes: Option<u64>,
    /// Inodes the layer may add to what it inherited. Past it, creates get EDQUOT.
    #[arg(long = "limit-inodes", value_name = "N")]
    inodes: Option<u64>,
    /// Device operations per second the layer's I/O may use.
    #[arg(long = "limit-iops", value_name = "N")]
    iops: Option<u64>,
    /// Device bytes per second the layer's I/O may use (e.g. 100M).
    #[arg(long = "limit-bps", value_name = "SIZE", value_parser = crate::parse_size)]
    bps: Option<u64>,
    /// The layer's share of the device when layers compete (1-10000, default 100).
    #[arg(long = "io-weight", value_name = "N")]
    weight: Option<u32>,
}

impl From<LimitArgs> for LimitsBody {
    fn from(a: LimitArgs) -> LimitsBody {
        LimitsBody {
            bytes: a.bytes,
            inodes: a.inodes,
            iops: a.iops,
            bps: a.bps,
            weight: a.weight,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum LayerCmd {
    /// Create an empty, active base layer.
    Create {
        id: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Clone the committed layer PARENT into a new active (or, with --view, read-only) layer.
    Clone {
        parent: String,
        id: String,
        /// Make a read-only view instead of a writable layer.
        #[arg(long)]
        view: bool,
        #[command(flatten)]
        limits: LimitArgs,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Set a layer's limits (space, inodes, I/O), replacing the ones it had: a limit not
    /// given is removed. Takes effect at once; durable when the command returns.
    Limit {
        id: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Commit an active layer: it becomes frozen and can be cloned.
    Commit {
        id: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Freeze the current state of active layer ID into a new committed layer NEW_PARENT;
    /// ID keeps running on top of it.
    Snapshot {
        id: String,
        new_parent: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Remove a layer (refused while it has children or is mounted).
    Rm {
        id: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the layers.
    Ls {
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show one layer: state, parent chain, children, labels, space and inodes.
    Stat {
        id: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} is not KEY=VALUE")),
    }
}

/// Run one `strata layer` command against the daemon's admin socket.
pub fn run(cmd: LayerCmd, socket: &Path) -> Result<(), String> {
    let c = Client::new(socket);
    match cmd {
        LayerCmd::Create {
            id,
            limits,
            labels,
            json,
        } => {
            let l = c.create(&CreateRequest {
                id,
                parent: None,
                state: None,
                labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                limits: limits.into(),
            })?;
            done(&l, json, "created")
        }
        LayerCmd::Clone {
            parent,
            id,
            view,
            limits,
            labels,
            json,
        } => {
            let l = c.create(&CreateRequest {
                id,
                parent: Some(parent),
                state: Some(if view {
                    CloneState::View
                } else {
                    CloneState::Active
                }),
                labels: labels.into_iter().collect(),
                limits: limits.into(),
            })?;
            done(&l, json, "cloned")
        }
        LayerCmd::Limit { id, limits, json } => {
            let l = c.set_limits(&id, &limits.into())?;
            if json {
                return print_json(&l);
            }
            println!("{}: {}", l.id, limits_text(&l.limits));
            Ok(())
        }
        LayerCmd::Commit { id, json } => done(&c.commit(&id)?, json, "committed"),
        LayerCmd::Snapshot {
            id,
            new_parent,
            json,
        } => {
            let l = c.snapshot(&id, &new_parent)?;
            if json {
                return print_json(&l);
            }
            println!(
                "snapshot of {} committed as {}; {} now runs on top of it",
                id, l.id, id
            );
            Ok(())
        }
        LayerCmd::Rm { id, json } => {
            c.remove(&id)?;
            if json {
                return print_json(&serde_json::json!({ "id": id, "removed": true }));
            }
            println!("removed {id}");
            Ok(())
        }
        LayerCmd::Ls { json } => {
            let list = c.list()?;
            if json {
                return print_json(&list);
            }
            print!("{}", table(&list.layers));
            Ok(())
        }
        LayerCmd::Stat { id, json } => {
            let l = c.stat(&id)?;
            if json {
                return print_json(&l);
            }
            print!("{}", stat_text(&l));
            Ok(())
        }
    }
}

fn print_json<T: admin::serde::Serialize>(v: &T) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    println!("{s}");
    Ok(())
}

fn done(l: &Layer, json: bool, verb: &str) -> Result<(), String> {
    if json {
        return print_json(l);
    }
    match &l.parent {
        Some(p) => println!("{verb} {} ({}, parent {p}) at {}", l.id, l.state, l.path),
        None => println!("{verb} {} ({}) at {}", l.id, l.state, l.path),
    }
    Ok(())
}

/// 1536 -> "1.5K", binary units.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if v < 10.0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
    }
}

/// "2025-03-01T12:00:00.123456789Z" -> "2025-03-01 12:00:00Z".
fn short_time(t: &str) -> String {
    match (t.get(..10), t.get(11..19)) {
        (Some(d), Some(h)) if t.len() >= 19 => format!("{d} {h}Z"),
        _ => t.to_string(),
    }
}

/// Ids and labels come from clients: show control characters escaped.
fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.escape_debug().to_string()
    } else {
        s.to_string()
    }
}

/// `ls`: an aligned table.
pub fn table(layers: &[Layer]) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "ID".into(),
        "STATE".into(),
        "PARENT".into(),
        "OWNED".into(),
        "INODES".into(),
        "CREATED".into(),
    ]];
    let mut sorted: Vec<&Layer> = layers.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for l in sorted {
        rows.push([
            printable(&l.id),
            l.state.clone(),
            l.parent
                .as_deref()
                .map(printable)
                .unwrap_or_else(|| "-".into()),
            human_bytes(l.owned_bytes),
            l.inodes.to_string(),
            short_time(&l.created),
        ]);
    }
    let mut w = [0usize; 6];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i == 5 {
                line.push_str(c);
            } else if i == 3 || i == 4 {
                // Numbers right-aligned.
                line.push_str(&format!("{c:>width$}  ", width = w[i]));
            } else {
                line.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// "space 10G, inodes 1000, weight 200" or "none".
pub fn limits_text(l: &LimitsBody) -> String {
    let mut parts = Vec::new();
    if let Some(b) = l.bytes {
        parts.push(format!("space {}", human_bytes(b)));
    }
    if let Some(n) = l.inodes {
        parts.push(format!("inodes {n}"));
    }
    if let Some(n) = l.iops {
        parts.push(format!("{n} IOPS"));
    }
    if let Some(b) = l.bps {
        parts.push(format!("{}/s", human_bytes(b)));
    }
    if let Some(w) = l.weight {
        parts.push(format!("io weight {w}"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// `stat`: key: value lines.
pub fn stat_text(l: &Layer) -> String {
    let labels = if l.labels.is_empty() {
        "-".to_string()
    } else {
        l.labels
            .iter()
            .map(|(k, v)| format!("{}={}", printable(k), printable(v)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chain = if l.chain.is_empty() {
        "- (base layer)".to_string()
    } else {
        l.chain
            .iter()
            .map(|s| printable(s))
            .collect::<Vec<_>>()
            .join(" -> ")
    };
    let children = if l.children.is_empty() {
        "-".to_string()
    } else {
        l.children
            .iter()
            .map(|s| printable(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = [
        ("id", printable(&l.id)),
        ("state", l.state.clone()),
        (
            "parent",
            l.parent
                .as_deref()
                .map(printable)
                .unwrap_or_else(|| "-".into()),
        ),
        ("chain", chain),
        ("depth", l.chain.len().to_string()),
        ("children", children),
        ("labels", labels),
        ("created", l.created.clone()),
        (
            "owned",
            format!("{} ({} bytes)", human_bytes(l.owned_bytes), l.owned_bytes),
        ),
        ("inodes", format!("{} ({} added)", l.inodes, l.inodes_added)),
        ("limits", limits_text(&l.limits)),
        ("slot", l.slot.to_string()),
        ("path", printable(&l.path)),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{:<10}{v}\n", format!("{k}:")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(100 << 20), "100M");
        assert_eq!(human_bytes(u64::MAX), "16E");
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_label("a=").unwrap(), ("a".into(), "".into()));
        assert!(parse_label("=b").is_err());
        assert!(parse_label("ab").is_err());
    }
}
