//! `--web.config.file`, for real: the agent serves its endpoint over TLS with a certificate
//! of the lab CA and basic auth from a bcrypt hash, in the web config format the Prometheus
//! exporters share; a real Prometheus in another namespace scrapes it (`scheme: https`,
//! `tls_config`, `basic_auth`) and a job with the wrong password is refused. curl checks
//! the refusals: 401 with `WWW-Authenticate: Basic` for a wrong or missing password, on
//! the probes too, and no plain HTTP at all.
//!
//! Needs root, curl, openssl and Debian's `prometheus` like the other live tests.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use detector_lab::{
    Lab,
    agent::{LiveAgent, detector_bin},
    certs::path_str,
    clients::run_text,
    fixture::{root, serial},
    prometheus::Prometheus,
};

const T: Duration = Duration::from_secs(15);
const PORT: u16 = 9863;
const CN: &str = "detector.test";
const USER: &str = "prometheus";
const PASSWORD: &str = "scrape-pass";

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth_and_a_wrong_password_gets_401() -> Result<()> {
    if !root("the web config test") {
        return Ok(());
    }
    let _turn = serial();
    let lab = Lab::direct()?;
    let (client, server) = (lab.client_ns().to_string(), lab.server_ns().to_string());
    let server_ip = lab.server_v4();

    // The cost htpasswd -B and most exporter guides use.
    let hash = bcrypt::hash(PASSWORD, 10)?;
    let certs = lab.tls_cert(CN)?;
    let web = lab.dir().join("web.yml");
    fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {:?}\n  key_file: {:?}\n  min_version: TLS12\n\
             basic_auth_users:\n  {USER}: {hash:?}\n",
            path_str(&certs.cert)?,
            path_str(&certs.key)?,
        ),
    )?;
    let agent = LiveAgent::start_listening(
        &detector_bin()?,
        &lab,
        &server,
        &[lab.server_if()],
        &["--web.config.file", path_str(&web)?],
        &format!("0.0.0.0:{PORT}"),
    )?;

    // Two jobs against the same endpoint: the right password, and a wrong one.
    let ca = path_str(&certs.ca_cert)?;
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    \
             tls_config:\n      ca_file: {ca:?}\n      server_name: {CN}\n    \
             basic_auth:\n      username: {USER}\n      password: {password}\n    \
             static_configs:\n      - targets: [\"{server_ip}:{PORT}\"]\n"
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{}{}",
        job("detector", PASSWORD),
        job("wrong", "not-the-password"),
    );
    let prom = Prometheus::start(&lab, &client, "prom", "127.0.0.1", &config, &[])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    prom.wait_value(r#"up{job="detector"}"#, deadline, |v| v == 1.0)
        .context("the right password is scraped")?;
    let build = prom.value(r#"detector_build_info{job="detector"}"#)?;
    ensure!(build == Some(1.0), "the agent's metrics arrived: {build:?}");
    let samples = prom.value(r#"scrape_samples_scraped{job="detector"}"#)?;
    ensure!(
        samples.is_some_and(|n| n > 20.0),
        "a whole scrape: {samples:?}"
    );
    prom.wait_value(r#"up{job="wrong"}"#, deadline, |v| v == 0.0)
        .context("the wrong password is refused")?;
    let wrong = prom.value(r#"scrape_samples_scraped{job="wrong"}"#)?;
    ensure!(
        wrong == Some(0.0),
        "nothing scraped with the wrong password: {wrong:?}"
    );

    // curl from the client namespace, by name, verifying the lab CA.
    let resolve = format!("{CN}:{PORT}:{server_ip}");
    let curl = |path: &str, credentials: Option<&str>| -> Result<(bool, String)> {
        let url = format!("https://{CN}:{PORT}{path}");
        let mut args = vec![
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "-i",
        ];
        if let Some(c) = credentials {
            args.extend(["-u", c]);
        }
        args.push(&url);
        run_text(&lab, &args)
    };
    let right = format!("{USER}:{PASSWORD}");
    let (ok, out) = curl("/metrics", Some(&right))?;
    ensure!(
        ok && out.starts_with("HTTP/1.1 200") && out.contains("detector_build_info"),
        "{out}"
    );
    let unauthorized = |out: &str| {
        out.starts_with("HTTP/1.1 401")
            && out.to_ascii_lowercase().contains("www-authenticate: basic")
            && !out.contains("detector_")
    };
    for (path, credentials) in [
        ("/metrics", Some(format!("{USER}:wrong"))),
        ("/metrics", Some(format!("someone:{PASSWORD}"))),
        ("/metrics", None),
        ("/healthz", None),
        ("/readyz", Some(format!("{USER}:wrong"))),
    ] {
        let (ok, out) = curl(path, credentials.as_deref())?;
        ensure!(ok && unauthorized(&out), "{path} {credentials:?}: {out}");
    }
    let (ok, out) = curl("/healthz", Some(&right))?;
    ensure!(ok && out.starts_with("HTTP/1.1 200"), "{out}");

    // Plain HTTP gets no answer a client could take for one.
    let out = lab.run(
        &client,
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-u",
            &right,
            &format!("http://{server_ip}:{PORT}/metrics"),
        ],
        T,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.status.success() && !text.contains("detector_"),
        "plain HTTP: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // (The plain-HTTP attempt crossed the watched interface: whatever the agent made of it
    // is another test's business; here it must only exit cleanly.)
    agent.stop()?;
    Ok(())
}
