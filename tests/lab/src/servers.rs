//! Servers' configuration: nginx sites (plain or TLS, HTTP/2, keep-alive, big files) and
//! openssl s_server, each started in a lab namespace and waited for until it listens.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs::{self, File},
    io::Write,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::{Context, Result, ensure};

use crate::{
    certs::{DEFAULT_CN, TlsFiles},
    netns::{LISTEN_TIMEOUT, Lab},
    process::LabProcess,
    util::{os, read_lossy, tail, write_file},
};

/// What [`Lab::nginx`] serves. Build with struct update syntax over `Default::default()`.
#[derive(Clone, Debug, Default)]
pub struct NginxSite<'a> {
    /// Serve HTTPS instead of plain HTTP.
    pub tls: bool,
    /// Port; 0 means 443 with TLS and 80 without.
    pub port: u16,
    /// Also listen on the namespace's IPv6 addresses.
    pub ipv6: bool,
    /// `keepalive_timeout`, seconds; nginx's default (75 s) when `None`. Live tests scale
    /// the field's 120 s reverse-proxy timeout down through this.
    pub keepalive_timeout_s: Option<u32>,
    /// `ssl_protocols`, e.g. `"TLSv1.2"`; nginx's default when `None`.
    pub tls_protocols: Option<&'a str>,
    /// `ssl_ciphers`; nginx's default when `None`.
    pub tls_ciphers: Option<&'a str>,
    /// Certificate to serve; a fresh one for [`DEFAULT_CN`] from the lab CA when `None`.
    pub cert: Option<&'a TlsFiles>,
    /// Size of the file served at `/big`, MiB; 0 leaves `/big` unconfigured (it then
    /// answers "ok" like every other path).
    pub big_mib: u32,
    /// Raw directives added inside `http { }`.
    pub extra_http: &'a str,
    /// Raw directives added inside `server { }` (e.g. `ssl_session_timeout 60s;`).
    pub extra_server: &'a str,
}

impl NginxSite<'_> {
    /// Plain HTTP on `port`, the rest as by default.
    pub fn plain(port: u16) -> Self {
        NginxSite {
            tls: false,
            port,
            ..Default::default()
        }
    }
}

/// A running nginx started by [`Lab::nginx`].
#[derive(Debug)]
pub struct Nginx {
    /// The nginx process (single-process mode, so this pid is the one serving).
    pub process: LabProcess,
    /// Port it listens on.
    pub port: u16,
    /// Addresses it listens on (IPv4 first).
    pub addrs: Vec<IpAddr>,
    /// Certificate it serves, when TLS.
    pub tls: Option<TlsFiles>,
    /// The generated configuration file.
    pub conf: PathBuf,
    /// nginx's error log (level `info`, which is where nginx reports TLS handshake failures).
    pub error_log: PathBuf,
    /// nginx's access log.
    pub access_log: PathBuf,
}

impl Nginx {
    /// URL of `path` (which starts with `/`) on `addr`, with the right scheme and brackets.
    pub fn url(&self, addr: IpAddr, path: &str) -> String {
        url(
            if self.tls.is_some() { "https" } else { "http" },
            addr,
            self.port,
            path,
        )
    }

    /// Current contents of the error log.
    pub fn error_log_text(&self) -> String {
        read_lossy(&self.error_log)
    }

    /// Current contents of the access log.
    pub fn access_log_text(&self) -> String {
        read_lossy(&self.access_log)
    }
}

/// `scheme://addr:port/path`, bracketing IPv6 addresses as URLs need.
pub fn url(scheme: &str, addr: IpAddr, port: u16, path: &str) -> String {
    format!("{scheme}://{}{path}", SocketAddr::new(addr, port))
}

impl Lab {
    /// Starts nginx in `ns` on that namespace's lab addresses, with a configuration that
    /// refers only to the lab dir (no /etc/nginx, /var/log/nginx or /run), in
    /// single-process mode so the spawned pid is the one serving and stopping it is one
    /// signal. Returns once it listens on every address.
    pub fn nginx(&self, ns: &str, site: NginxSite<'_>) -> Result<Nginx> {
        self.check_ns(ns)?;
        let addrs = self.ns_addrs(ns, site.ipv6);
        ensure!(
            !addrs.is_empty(),
            "netns {ns} has no lab addresses to listen on"
        );
        let port = match (site.port, site.tls) {
            (0, true) => 443,
            (0, false) => 80,
            (p, _) => p,
        };
        let tls = match (site.tls, site.cert) {
            (false, _) => None,
            (true, Some(files)) => Some(files.clone()),
            (true, None) => Some(self.tls_cert(DEFAULT_CN)?),
        };
        let big = match site.big_mib {
            0 => None,
            mib => Some(self.big_file(mib)?),
        };
        let name = format!("nginx-{:03}", self.next_seq());
        let base = self.dir.join(&name);
        fs::create_dir_all(base.join("tmp"))
            .with_context(|| format!("creating {}", base.display()))?;
        let (conf, error_log, access_log) = (
            base.join("nginx.conf"),
            base.join("error.log"),
            base.join("access.log"),
        );
        let b = base.display();
        let mut c = String::new();
        // `write!` to a String cannot fail; the results are ignored below for brevity.
        let _ = writeln!(
            c,
            "# Generated by tests/lab/src/servers.rs for lab {}.",
            self.tag
        );
        let _ = writeln!(c, "daemon off;\nmaster_process off;\nworker_processes 1;");
        let _ = writeln!(
            c,
            "pid {b}/nginx.pid;\nerror_log {} info;",
            error_log.display()
        );
        let _ = writeln!(c, "events {{ worker_connections 1024; }}\nhttp {{");
        let _ = writeln!(c, "    access_log {};", access_log.display());
        for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            let _ = writeln!(c, "    {t}_temp_path {b}/tmp/{t};");
        }
        let _ = writeln!(c, "    default_type text/plain;\n    sendfile on;");
        if let Some(s) = site.keepalive_timeout_s {
            let _ = writeln!(c, "    keepalive_timeout {s}s;");
        }
        if !site.extra_http.is_empty() {
            let _ = writeln!(c, "    {}", site.extra_http);
        }
        let _ = writeln!(c, "    server {{");
        let ssl = if tls.is_some() { " ssl" } else { "" };
        for a in &addrs {
            let _ = writeln!(c, "        listen {}{ssl};", SocketAddr::new(*a, port));
        }
        let _ = writeln!(c, "        server_name _;");
        if let Some(t) = &tls {
            let _ = writeln!(c, "        ssl_certificate {};", t.cert.display());
            let _ = writeln!(c, "        ssl_certificate_key {};", t.key.display());
        }
        if let Some(p) = site.tls_protocols {
            let _ = writeln!(c, "        ssl_protocols {p};");
        }
        if let Some(ciphers) = site.tls_ciphers {
            let _ = writeln!(c, "        ssl_ciphers {ciphers};");
        }
        let _ = writeln!(c, "        location / {{ return 200 \"ok\\n\"; }}");
        if let Some(big) = &big {
            let _ = writeln!(c, "        location = /big {{ alias {}; }}", big.display());
        }
        if !site.extra_server.is_empty() {
            let _ = writeln!(c, "        {}", site.extra_server);
        }
        let _ = writeln!(c, "    }}\n}}");
        write_file(&conf, &c)?;
        let args = [
            os("nginx"),
            os("-p"),
            base.clone().into(),
            os("-c"),
            conf.clone().into(),
            // Where nginx logs before it has read the configuration.
            os("-e"),
            error_log.clone().into(),
        ];
        let process = self.spawn(ns, &name, &args)?;
        for a in &addrs {
            self.wait_listening(ns, &[*a], port, LISTEN_TIMEOUT, Some(&process))
                .with_context(|| {
                    format!(
                        "nginx did not come up; error log:\n{}",
                        tail(&read_lossy(&error_log), 4000)
                    )
                })?;
        }
        Ok(Nginx {
            process,
            port,
            addrs,
            tls,
            conf,
            error_log,
            access_log,
        })
    }

    /// The `/big` payload: generated once per size and lab, incompressible, so transfer
    /// sizes on the wire match the file.
    pub fn big_file(&self, mib: u32) -> Result<PathBuf> {
        let path = self.dir.join(format!("big-{mib}MiB.bin"));
        if path.is_file() {
            return Ok(path);
        }
        // Written under a private name and renamed, so a concurrent caller never serves a
        // half-written file.
        let tmp = self
            .dir
            .join(format!(".big-{mib}MiB.{}.tmp", self.next_seq()));
        let mut block = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for _ in 0..mib {
            for chunk in block.chunks_mut(8) {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            f.write_all(&block)
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        drop(f);
        fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(path)
    }

    /// Starts `openssl s_server -accept PORT ARGS...` in `ns` with stdin kept open (s_server
    /// exits on stdin EOF, and takes commands there), and returns once it listens. `args`
    /// must provide the certificate (`-cert`/`-key`, e.g. from [`Lab::tls_cert`]).
    pub fn s_server(&self, ns: &str, port: u16, args: &[impl AsRef<OsStr>]) -> Result<LabProcess> {
        let mut full = vec![
            os("openssl"),
            os("s_server"),
            os("-accept"),
            os(&port.to_string()),
        ];
        full.extend(args.iter().map(|a| a.as_ref().to_owned()));
        let process = self.spawn_with_stdin(ns, &format!("s_server-{port}"), &full)?;
        self.wait_listening(
            ns,
            &self.ns_addrs(ns, true),
            port,
            LISTEN_TIMEOUT,
            Some(&process),
        )?;
        Ok(process)
    }
}
