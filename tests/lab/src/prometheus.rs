//! Real Prometheus servers in lab namespaces (Debian's `prometheus` package), and queries
//! of their HTTP API, for the tests of the shipped rules, the dashboard and fleet
//! aggregation.

use std::{
    fs,
    net::TcpListener,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{Lab, LabProcess, in_netns, process::find_program};

/// Bound for a server to start and for one API request.
const T: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(500);

/// A program of Debian's `prometheus` package, or an error saying how to get it.
pub fn program(name: &str) -> Result<PathBuf> {
    find_program(name).with_context(|| {
        format!("`{name}` not found: install Debian's prometheus package (apt-get install -y prometheus)")
    })
}

/// A Prometheus server running in a lab namespace, on a port free there.
pub struct Prometheus<'a> {
    lab: &'a Lab,
    ns: String,
    pub port: u16,
    pub process: LabProcess,
}

impl<'a> Prometheus<'a> {
    /// Starts a server in `ns` with `config` (YAML) as its configuration, listening on
    /// `listen_ip` (`127.0.0.1`, or an address of the namespace for other namespaces to
    /// reach), with `flags` added; waits until it is ready.
    pub fn start(
        lab: &'a Lab,
        ns: &str,
        name: &str,
        listen_ip: &str,
        config: &str,
        flags: &[&str],
    ) -> Result<Prometheus<'a>> {
        let prometheus = program("prometheus")?;
        let port = in_netns(ns, || {
            TcpListener::bind(format!("{listen_ip}:0")).and_then(|l| l.local_addr())
        })??
        .port();
        let config_file = lab.dir().join(format!("{name}.yml"));
        fs::write(&config_file, config)
            .with_context(|| format!("writing {}", config_file.display()))?;
        let tsdb = lab.dir().join(format!("{name}-data"));
        let mut args = vec![
            prometheus.display().to_string(),
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", tsdb.display()),
            format!("--web.listen-address={listen_ip}:{port}"),
        ];
        args.extend(flags.iter().map(|f| f.to_string()));
        let process = lab.spawn(ns, name, &args)?;
        process
            .wait_for_output("Server is ready to receive web requests", T)
            .with_context(|| format!("Prometheus {name} did not start"))?;
        Ok(Prometheus {
            lab,
            ns: ns.to_string(),
            port,
            process,
        })
    }

    /// GET `path` of the API (from inside the server's namespace), with `query` as its
    /// `query=` parameter; the `data` of a successful answer.
    pub fn get(&self, path: &str, query: Option<&str>) -> Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let q = query.map(|expr| format!("query={expr}"));
        let mut args = vec!["curl", "-sS", "--max-time", "5", "-G"];
        if let Some(q) = &q {
            args.extend(["--data-urlencode", q]);
        }
        args.push(&url);
        let body = self.lab.run_ok(&self.ns, &args, T)?;
        let v: Value =
            serde_json::from_str(&body).with_context(|| format!("{path}: not JSON: {body}"))?;
        ensure!(v["status"] == "success", "{path} {query:?}: {body}");
        Ok(v["data"].clone())
    }

    /// The instant vector of `expr`.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.get("/api/v1/query", Some(expr))?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of `expr` when it is a single sample.
    pub fn value(&self, expr: &str) -> Result<Option<f64>> {
        let result = self.query(expr)?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => Ok(sample_value(one)),
            _ => bail!("`{expr}` has {} series: {result:?}", result.len()),
        }
    }

    /// Polls until `ok` holds for the value of `expr` (bounded by `deadline`).
    pub fn wait_value(
        &self,
        expr: &str,
        deadline: Instant,
        ok: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        loop {
            let v = self.value(expr)?;
            if let Some(v) = v.filter(|&v| ok(v)) {
                return Ok(v);
            }
            if Instant::now() + POLL > deadline {
                bail!("`{expr}` is {v:?} at the deadline");
            }
            thread::sleep(POLL);
        }
    }
}

/// A sample's value from the API's `[time, "value"]`.
pub fn sample_value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str().and_then(|s| s.parse().ok())
}
