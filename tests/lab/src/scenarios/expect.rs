//! Expectations: what a scenario must and must not give, and judging diagnoses against them.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

/// One diagnosis that must be found.
#[derive(Clone, Debug, PartialEq)]
pub struct Must {
    pub kind: String,
    pub client_ip: IpAddr,
    /// `ip:port`, IPv6 in brackets, as the agent writes it.
    pub server: String,
    /// `detail.sender` of the diagnosis.
    pub sender: Option<String>,
    /// `detail.gap_s`, seconds, for idle kinds.
    pub gap_s: Option<f64>,
    /// How far `detail.gap_s` may be from `gap_s`.
    pub gap_tolerance: Option<f64>,
}

impl Must {
    pub(crate) fn new(kind: &str, client: IpAddr, server: SocketAddr, sender: &str) -> Must {
        Must {
            kind: kind.to_string(),
            client_ip: client,
            server: server.to_string(),
            sender: Some(sender.to_string()),
            gap_s: None,
            gap_tolerance: None,
        }
    }

    pub(crate) fn gap(mut self, gap_s: f64, tolerance: f64) -> Must {
        self.gap_s = Some(gap_s);
        self.gap_tolerance = Some(tolerance);
        self
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "kind": self.kind,
            "client_ip": self.client_ip.to_string(),
            "server": self.server,
            "sender": self.sender,
            "gap_s": self.gap_s,
            "gap_tolerance": self.gap_tolerance,
        })
    }

    pub(crate) fn from_json(v: &Value) -> Result<Must> {
        let s = |k: &str| v[k].as_str().map(str::to_string);
        Ok(Must {
            kind: s("kind").context("must: kind")?,
            client_ip: s("client_ip")
                .context("must: client_ip")?
                .parse()
                .context("must: client_ip")?,
            server: s("server").context("must: server")?,
            sender: s("sender"),
            gap_s: v["gap_s"].as_f64(),
            gap_tolerance: v["gap_tolerance"].as_f64(),
        })
    }

    /// Whether diagnosis `d` is this one.
    pub fn matches(&self, d: &Value) -> bool {
        let ip_of = |s: &str| s.parse::<SocketAddr>().ok().map(|a| a.ip());
        d["kind"] == self.kind.as_str()
            && d["client"].as_str().and_then(ip_of) == Some(self.client_ip)
            && d["server"] == self.server.as_str()
            && self
                .sender
                .as_deref()
                .is_none_or(|s| d["detail"]["sender"] == s)
            && match (self.gap_s, d["detail"]["gap_s"].as_f64()) {
                (None, _) => true,
                (Some(want), Some(got)) => (got - want).abs() <= self.gap_tolerance.unwrap_or(0.0),
                (Some(_), None) => false,
            }
    }

    /// One line for tables and messages.
    pub fn short(&self) -> String {
        let mut s = format!("{} {} → {}", self.kind, self.client_ip, self.server);
        if let Some(by) = &self.sender {
            s.push_str(&format!(" by {by}"));
        }
        if let Some(g) = self.gap_s {
            s.push_str(&format!(
                " gap {g:.1}±{:.1}s",
                self.gap_tolerance.unwrap_or(0.0)
            ));
        }
        s
    }
}

/// What must not be diagnosed.
#[derive(Clone, Debug, PartialEq)]
pub enum MustNot {
    /// None of these kinds.
    Kinds(Vec<String>),
    /// No diagnosis at all (clean controls).
    Nothing,
}

impl MustNot {
    pub(crate) fn kinds(kinds: &[&str]) -> MustNot {
        MustNot::Kinds(kinds.iter().map(|k| k.to_string()).collect())
    }
}

/// The string `must_not` holds for clean controls.
pub const NO_DIAGNOSIS: &str = "no diagnosis at all";

/// A scenario's `NAME.expected.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    pub scenario: String,
    pub field_case: Option<u8>,
    pub idle_threshold_s: f64,
    pub must: Vec<Must>,
    pub must_not: MustNot,
}

impl Expected {
    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "field_case": self.field_case,
            "idle_threshold_s": self.idle_threshold_s,
            "must": self.must.iter().map(Must::to_json).collect::<Vec<_>>(),
            "must_not": match &self.must_not {
                MustNot::Kinds(k) => json!(k),
                MustNot::Nothing => json!(NO_DIAGNOSIS),
            },
        })
    }

    pub fn from_json(v: &Value) -> Result<Expected> {
        let must_not = match &v["must_not"] {
            Value::String(s) if s == NO_DIAGNOSIS => MustNot::Nothing,
            Value::Array(a) => MustNot::Kinds(
                a.iter()
                    .map(|k| k.as_str().map(str::to_string).context("must_not: a kind"))
                    .collect::<Result<_>>()?,
            ),
            other => bail!("must_not: {other}"),
        };
        Ok(Expected {
            scenario: v["scenario"].as_str().context("scenario")?.to_string(),
            field_case: v["field_case"].as_u64().and_then(|c| u8::try_from(c).ok()),
            idle_threshold_s: v["idle_threshold_s"].as_f64().context("idle_threshold_s")?,
            must: v["must"]
                .as_array()
                .context("must")?
                .iter()
                .map(Must::from_json)
                .collect::<Result<_>>()?,
            must_not,
        })
    }

    /// Reads `NAME.expected.json`.
    pub fn read(path: &Path) -> Result<Expected> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Expected::from_json(&v).with_context(|| format!("in {}", path.display()))
    }

    /// Everything wrong with `got` against this expectation: a `must` not found, a
    /// diagnosis no `must` accounts for, a `must_not` kind; empty when it is exactly right.
    pub fn check(&self, got: &[Value]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut left: Vec<&Value> = got.iter().collect();
        for m in &self.must {
            match left.iter().position(|d| m.matches(d)) {
                Some(i) => {
                    left.remove(i);
                }
                None => problems.push(format!("missing: {}", m.short())),
            }
        }
        for d in &left {
            problems.push(format!("unexpected: {}", short_diagnosis(d)));
        }
        match &self.must_not {
            MustNot::Nothing => {}
            MustNot::Kinds(kinds) => {
                for d in got {
                    if kinds.iter().any(|k| d["kind"] == k.as_str()) {
                        problems.push(format!("must not: {}", short_diagnosis(d)));
                    }
                }
            }
        }
        problems
    }

    /// The `must` list in one line (`nothing` for clean controls).
    pub fn summary(&self) -> String {
        if self.must.is_empty() {
            return "nothing".into();
        }
        self.must
            .iter()
            .map(|m| {
                let mut s = m.kind.clone();
                if let Some(by) = &m.sender {
                    s.push_str(&format!("/{by}"));
                }
                if let Some(g) = m.gap_s {
                    s.push_str(&format!(" {g:.1}s"));
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A diagnosis in one line: kind, client → server, sender, gap.
pub fn short_diagnosis(d: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let mut out = format!(
        "{} {} → {}",
        s(&d["kind"]),
        s(&d["client"]),
        s(&d["server"])
    );
    if let Some(by) = d["detail"]["sender"].as_str() {
        out.push_str(&format!(" by {by}"));
    }
    if let Some(g) = d["detail"]["gap_s"].as_f64() {
        out.push_str(&format!(" gap {g:.2}s"));
    }
    out
}

/// Diagnoses in one line, like [`Expected::summary`].
pub fn summary_of(got: &[Value]) -> String {
    if got.is_empty() {
        return "nothing".into();
    }
    got.iter()
        .map(|d| {
            let mut s = d["kind"].as_str().unwrap_or("?").to_string();
            if let Some(by) = d["detail"]["sender"].as_str() {
                s.push_str(&format!("/{by}"));
            }
            if let Some(g) = d["detail"]["gap_s"].as_f64() {
                s.push_str(&format!(" {g:.1}s"));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// (kind, client, server) of each diagnosis: what live and replay must agree on.
pub fn identities(got: &[Value]) -> BTreeSet<(String, String, String)> {
    got.iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            (s("kind"), s("client"), s("server"))
        })
        .collect()
}
