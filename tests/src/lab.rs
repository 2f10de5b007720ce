//! Network-namespace lab shared by the live tests and `cargo xtask lab`.
//!
//! The detector must be exercised against real TLS stacks (OpenSSL, nginx, curl) on real
//! kernel paths (veth, forwarding, offloads), yet a test may never send a packet anywhere
//! but between namespaces it created itself. A [`Lab`] therefore builds its own network
//! namespaces joined by veth pairs, gives them private addresses (`10.(200+k).x.y` and
//! `fdXX:` ULA prefixes), adds only routes between its own subnets (never a default route,
//! so nothing can leak towards the host or beyond), and tears everything down again.
//!
//! # Naming, and why the pid is in it
//!
//! Every name a lab creates (namespaces, interfaces, its temp dir) contains its *tag*:
//! six hex digits of the creating pid plus three of a per-process counter. The counter
//! keeps concurrent labs of one test binary apart; the pid keeps concurrent test binaries
//! apart and lets [`sweep_stale`] tell an abandoned lab (its creator is dead) from a live
//! one. Interface names are `d<tag><role>`, at most 12 bytes, under the kernel's 15.
//!
//! # Cleanup
//!
//! Dropping a [`Lab`] stops its processes (SIGTERM, SIGKILL after 2 s), kills anything
//! else still inside its namespaces, deletes the namespaces (which destroys the veths) and
//! removes its temp dir, unless `LAB_KEEP=1`, in which case the path is printed. Drop also
//! runs when a test panics, since the panic unwinds through the test's stack.
//!
//! Nothing global is installed: a lab run stopped by SIGINT or SIGKILL skips Drop and
//! leaves its namespaces and processes behind. Instead, every [`Lab::new`] first calls
//! [`sweep_stale`], which removes what labs of dead processes left, so leftovers live only
//! until the next lab starts. (A terminal's Ctrl-C also reaches the lab's processes, which
//! stay in the caller's process group for that reason; their namespaces remain until the
//! sweep.) Processes are not tied to the test's life with
//! `PR_SET_PDEATHSIG` on purpose: that signal follows the *thread* that spawned, and a
//! helper thread ending would kill a server the test still needs.
//!
//! # Requirements
//!
//! Root, iproute2 (`ip`, `ss`), `sysctl`; per feature also `openssl`, `nginx`, `tcpdump`,
//! `ethtool` (optional), and whatever a test runs (`curl`, `ping`).

use std::{
    env,
    ffi::{OsStr, OsString},
    fmt::Write as _,
    fs::{self, File},
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail, ensure};

/// Prefix of every namespace and temp dir a lab creates; [`sweep_stale`] touches nothing else.
pub const NAME_PREFIX: &str = "dlab-";

/// How long a process gets between SIGTERM and SIGKILL when it is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Where `ip netns add` bind-mounts namespaces (iproute2's `NETNS_RUN_DIR`).
const NETNS_RUN_DIR: &str = "/var/run/netns";
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
/// Bound for the short setup commands (`ip`, `sysctl`, `openssl`, `ss`).
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound for a server to start listening, and for tcpdump to attach.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for tcpdump to write out its buffer and exit after SIGINT.
const CAPTURE_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for reading the rest of a pipe after its writer exited; only a grandchild that
/// kept the pipe open can make this expire.
const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Hard cap on polling iterations, on top of every time bound.
const MAX_POLLS: u32 = 100_000;
/// Polling starts at 1 ms (setup steps are usually done in a few) and backs off to this.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Proxy variables are dropped from lab commands: a proxy is never reachable from inside
/// the lab, and obeying one would send traffic towards an address the lab does not own.
const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "ftp_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "FTP_PROXY",
];
/// Common name of the certificate that [`Lab::nginx`] makes when the site brings none.
pub const DEFAULT_CN: &str = "server.test";

/// Distinguishes labs created by one process; see the module docs on naming.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

type SharedChild = Arc<Mutex<Child>>;

/// Cleanup must keep working after some test thread panicked while holding a lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn log(tag: &str, msg: &str) {
    eprintln!("[lab {tag}] {msg}");
}

/// Which namespaces a lab builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Client and server namespaces joined by one veth pair: the simplest path, where the
    /// server's interface sees exactly what the client sent.
    Direct,
    /// Client, router and server namespaces: the router forwards IPv4 and IPv6 between
    /// two veth pairs, so a program can sit on a forwarding hop like a middlebox would.
    Routed,
}

/// One lab interface: which namespace owns it and its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabIface {
    /// Namespace that owns the interface.
    pub ns: String,
    /// Interface name (at most 15 bytes).
    pub name: String,
    /// IPv4 address, on a /24.
    pub v4: Ipv4Addr,
    /// IPv6 address, on a /64, added with `nodad` so it is usable at once.
    pub v6: Ipv6Addr,
}

/// Kind of key for generated certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyAlg {
    /// EC P-256: fast to generate, the default.
    #[default]
    EcP256,
    /// RSA 2048, for cases that need RSA key exchange or RSA signatures.
    Rsa2048,
}

/// Paths of a generated CA and of a server certificate it signed (all PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Subject CN, also a SAN (DNS, or IP when it parses as one).
    pub cn: String,
    /// The CA certificate, for `curl --cacert` / `openssl s_client -CAfile`.
    pub ca_cert: PathBuf,
    /// The CA key.
    pub ca_key: PathBuf,
    /// The server certificate; its SANs also hold the lab server's IPv4 and IPv6.
    pub cert: PathBuf,
    /// The server key (unencrypted).
    pub key: PathBuf,
}

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

/// A process running inside a lab namespace, stopped (SIGTERM, then SIGKILL after
/// [`STOP_GRACE`]) when dropped, and in any case when its [`Lab`] is dropped.
///
/// Output goes to files rather than pipes so that a chatty server can never block on a
/// full pipe while a test is busy elsewhere, and so the files outlive the process for
/// post-mortems (`LAB_KEEP=1`).
#[derive(Debug)]
pub struct LabProcess {
    name: String,
    ns: String,
    command: String,
    pid: u32,
    child: SharedChild,
    stdin: Option<ChildStdin>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl LabProcess {
    /// Name given at spawn (also the stem of the output files).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Namespace the process runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The full command line, as shown in errors.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Pid of the program itself: `ip netns exec` execs it rather than forking.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// File receiving stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// File receiving stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Stdout, then stderr behind a `--- stderr ---` line when there is any: one string to
    /// search, since tools disagree on which stream gets what (openssl prints handshake
    /// results to stdout and alerts to stderr).
    pub fn output(&self) -> String {
        let mut out = self.stdout();
        let err = self.stderr();
        if !err.is_empty() {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("--- stderr ---\n");
            out.push_str(&err);
        }
        out
    }

    /// Writes to the process's stdin and flushes. Only for processes spawned with
    /// [`Lab::spawn_with_stdin`] (or [`Lab::s_server`]): openssl's s_server and s_client take
    /// commands (`Q`, `R`, `k`) and payload on stdin, and keep the connection up while it is
    /// open.
    pub fn write_stdin(&mut self, bytes: &[u8]) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            anyhow!(
                "`{}` has no stdin pipe (spawned without one, or closed)",
                self.command
            )
        })?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .with_context(|| {
                format!(
                    "writing {} bytes to stdin of `{}`",
                    bytes.len(),
                    self.command
                )
            })
    }

    /// Closes stdin, so the process sees EOF (s_client then closes its connection).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        lock(&self.child)
            .try_wait()
            .with_context(|| format!("checking on `{}`", self.command))
    }

    /// Waits for the process to exit on its own, at most `timeout`; it is left running
    /// when the time is up, so the caller decides what a timeout means.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<ExitStatus> {
        let mut backoff = Backoff::new(timeout);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if !backoff.wait() {
                bail!("`{}` still running after {timeout:?}", self.command);
            }
        }
    }

    /// Sends `sig` (e.g. `libc::SIGINT`) unless the process has already been reaped;
    /// returns whether it was sent. Checking and signalling under one lock means the pid
    /// can never belong to some other process by then.
    pub fn signal(&self, sig: libc::c_int) -> Result<bool> {
        signal_child(&self.child, sig).with_context(|| format!("signalling `{}`", self.command))
    }

    /// Polls the output files until `needle` appears; fails early, with the output, if
    /// the process exits without printing it.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<()> {
        let mut backoff = Backoff::new(timeout);
        loop {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                // It may have printed and exited between the two checks.
                if self.output().contains(needle) {
                    return Ok(());
                }
                bail!(
                    "`{}` exited ({status}) without printing {needle:?}; output:\n{}",
                    self.command,
                    tail(&self.output())
                );
            }
            if !backoff.wait() {
                bail!(
                    "`{}` did not print {needle:?} within {timeout:?}; output:\n{}",
                    self.command,
                    tail(&self.output())
                );
            }
        }
    }

    /// Closes stdin, then SIGTERM, then SIGKILL after [`STOP_GRACE`]; returns the exit
    /// status when the process could be reaped.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stdin = None;
        terminate_all(&[&self.child], STOP_GRACE);
        lock(&self.child).try_wait().ok().flatten()
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running tcpdump started by [`Lab::capture`].
#[derive(Debug)]
pub struct Capture {
    process: LabProcess,
    path: PathBuf,
}

impl Capture {
    /// The pcap file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tcpdump process (its stderr ends with the packet counts once stopped).
    pub fn process(&self) -> &LabProcess {
        &self.process
    }

    /// Stops tcpdump with SIGINT, which makes it flush and close the file properly (SIGKILL
    /// could cut the last record), waits for it, and returns the file's path.
    pub fn stop(self) -> Result<PathBuf> {
        self.process.signal(libc::SIGINT)?;
        let status = self
            .process
            .wait_timeout(CAPTURE_STOP_TIMEOUT)
            .context("tcpdump did not exit after SIGINT")?;
        ensure!(
            status.success(),
            "`{}` exited with {status}; output:\n{}",
            self.process.command,
            tail(&self.process.output())
        );
        ensure!(
            self.path.is_file(),
            "tcpdump exited but {} does not exist",
            self.path.display()
        );
        Ok(self.path.clone())
    }

    /// [`Capture::stop`], and an error if tcpdump could not keep up ("N packets dropped by
    /// kernel" above zero): a capture with holes cannot show what the detector saw.
    pub fn stop_complete(self) -> Result<PathBuf> {
        self.process.signal(libc::SIGINT)?;
        self.process
            .wait_timeout(CAPTURE_STOP_TIMEOUT)
            .context("tcpdump did not exit after SIGINT")?;
        let stopped = self.process.output();
        let path = self.path.clone();
        let dropped: u64 = stopped
            .lines()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("tcpdump reported no drop count:\n{}", tail(&stopped)))?;
        ensure!(
            dropped == 0,
            "tcpdump dropped {dropped} packets of {}: the capture has holes",
            path.display()
        );
        ensure!(path.is_file(), "{} does not exist", path.display());
        Ok(path)
    }
}

/// A set of namespaces, veths, processes and files that is removed as a whole on drop.
/// See the module docs for naming, addressing and cleanup.
#[derive(Debug)]
pub struct Lab {
    tag: String,
    topology: Topology,
    dir: PathBuf,
    client_ns: String,
    router_ns: Option<String>,
    server_ns: String,
    /// Namespaces actually created so far, so a half-built lab is still torn down.
    created_ns: Vec<String>,
    ifaces: Vec<LabIface>,
    procs: Mutex<Vec<SharedChild>>,
    seq: AtomicU32,
    /// The trusted CA (cert, key), made on first use and shared by all `tls_cert` calls so
    /// that one `--cacert` trusts every server of the lab.
    ca: Mutex<Option<(PathBuf, PathBuf)>>,
}

impl Lab {
    /// Client and server namespaces joined by one veth pair.
    ///
    /// Addresses (k = lab counter mod 50, `p` = `fd00 + 200 + k` in hex, e.g. `fdc8`):
    /// client `10.(200+k).1.1` / `p:1::1`, server `10.(200+k).1.2` / `p:1::2`.
    pub fn direct() -> Result<Self> {
        Self::new(Topology::Direct)
    }

    /// Client, router and server namespaces, the router forwarding IPv4 and IPv6.
    ///
    /// Addresses: client `10.(200+k).1.2` / `p:1::2`, router `.1.1` / `p:1::1` towards the
    /// client and `.2.1` / `p:2::1` towards the server, server `10.(200+k).2.2` / `p:2::2`.
    /// Client and server have a route to each other's /24 and /64 via the router, and no
    /// other routes beyond their own links.
    pub fn routed() -> Result<Self> {
        Self::new(Topology::Routed)
    }

    /// Builds a lab of the given topology. Calls [`sweep_stale`] first (failures there are
    /// logged, not fatal), so labs abandoned by killed runs disappear here at the latest.
    pub fn new(topology: Topology) -> Result<Self> {
        if let Err(e) = sweep_stale() {
            eprintln!("[lab] sweep_stale failed, continuing: {e:#}");
        }
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        ensure!(
            pid <= 0xff_ffff,
            "pid {pid} does not fit the 6 hex digits of a lab tag"
        );
        let tag = format!("{pid:06x}{:03x}", n % 0x1000);
        let k = u8::try_from(n % 50).expect("n % 50 fits in u8");
        let dir = env::temp_dir().join(format!("{NAME_PREFIX}{tag}"));
        // Only a dead process with our pid (pid reuse) can have left this behind.
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .with_context(|| format!("removing stale {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ns = |role: &str| format!("{NAME_PREFIX}{tag}-{role}");
        let mut lab = Lab {
            client_ns: ns("client"),
            router_ns: (topology == Topology::Routed).then(|| ns("router")),
            server_ns: ns("server"),
            tag,
            topology,
            dir,
            created_ns: Vec::new(),
            ifaces: Vec::new(),
            procs: Mutex::new(Vec::new()),
            seq: AtomicU32::new(0),
            ca: Mutex::new(None),
        };
        // On error `lab` is dropped here, which removes whatever was already built.
        lab.build(k)
            .with_context(|| format!("building {topology:?} lab {}", lab.tag))?;
        Ok(lab)
    }

    fn build(&mut self, k: u8) -> Result<()> {
        let tag = self.tag.clone();
        let iface = |ns: &str, role: &str, net: u8, host: u8| LabIface {
            ns: ns.to_owned(),
            name: format!("d{tag}{role}"),
            v4: Ipv4Addr::new(10, 200 + k, net, host),
            v6: Ipv6Addr::new(
                0xfd00 + 200 + u16::from(k),
                net.into(),
                0,
                0,
                0,
                0,
                0,
                host.into(),
            ),
        };
        let (client, server) = (self.client_ns.clone(), self.server_ns.clone());
        match self.router_ns.clone() {
            None => {
                self.add_ns(&client, false)?;
                self.add_ns(&server, false)?;
                self.add_link(iface(&client, "c", 1, 1), iface(&server, "s", 1, 2))?;
            }
            Some(router) => {
                self.add_ns(&client, false)?;
                self.add_ns(&router, true)?;
                self.add_ns(&server, false)?;
                let (c, rc) = (iface(&client, "c", 1, 2), iface(&router, "rc", 1, 1));
                let (rs, s) = (iface(&router, "rs", 2, 1), iface(&server, "s", 2, 2));
                self.add_link(c.clone(), rc.clone())?;
                self.add_link(rs.clone(), s.clone())?;
                add_routes(&client, &rc, &s)?;
                add_routes(&server, &rs, &c)?;
            }
        }
        Ok(())
    }

    fn add_ns(&mut self, ns: &str, forwarding: bool) -> Result<()> {
        host_ok(&["ip", "netns", "add", ns])?;
        self.created_ns.push(ns.to_owned());
        host_ok(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        // DAD off for every interface born here (link-local addresses included), so
        // nothing is tentative when a test starts; `nodad` on our addresses as well.
        let mut keys = vec![
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ];
        if forwarding {
            keys.extend(["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        }
        let mut args = vec!["ip", "netns", "exec", ns, "sysctl", "-q", "-w"];
        args.extend(keys);
        host_ok(&args)?;
        Ok(())
    }

    fn add_link(&mut self, a: LabIface, b: LabIface) -> Result<()> {
        for i in [&a, &b] {
            ensure!(
                i.name.len() <= IFNAME_MAX,
                "interface name {} is too long",
                i.name
            );
        }
        // Created straight inside the namespaces, so the host's network managers never
        // see (and never configure) these interfaces.
        host_ok(&[
            "ip", "-n", &a.ns, "link", "add", &a.name, "type", "veth", "peer", "name", &b.name,
            "netns", &b.ns,
        ])?;
        self.ifaces.extend([a.clone(), b.clone()]);
        // Both ends up before any address: IPv6 addresses (and their prefix routes) only
        // become usable once the link has carrier.
        for i in [&a, &b] {
            host_ok(&["ip", "-n", &i.ns, "link", "set", &i.name, "up"])?;
        }
        for i in [&a, &b] {
            let v4 = format!("{}/24", i.v4);
            let v6 = format!("{}/64", i.v6);
            host_ok(&["ip", "-n", &i.ns, "addr", "add", &v4, "dev", &i.name])?;
            host_ok(&[
                "ip", "-n", &i.ns, "-6", "addr", "add", &v6, "dev", &i.name, "nodad",
            ])?;
        }
        Ok(())
    }

    /// Short unique tag of this lab (pid and counter, hex), part of every name it creates.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Topology built.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Temp dir holding configs, certificates, process output and captures.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Client namespace.
    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    /// Server namespace.
    pub fn server_ns(&self) -> &str {
        &self.server_ns
    }

    /// Router namespace ([`Topology::Routed`] only).
    pub fn router_ns(&self) -> Option<&str> {
        self.router_ns.as_deref()
    }

    /// All namespaces of this lab, client first, server last.
    pub fn namespaces(&self) -> &[String] {
        &self.created_ns
    }

    /// Client's interface (in the client namespace).
    pub fn client_if(&self) -> &str {
        &self.ifaces[0].name
    }

    /// Server's interface (in the server namespace).
    pub fn server_if(&self) -> &str {
        &self.ifaces[self.ifaces.len() - 1].name
    }

    /// Router's interface towards the client (in the router namespace).
    pub fn router_client_if(&self) -> Option<&str> {
        self.router_ns
            .as_ref()
            .map(|_| self.ifaces[1].name.as_str())
    }

    /// Router's interface towards the server (in the router namespace).
    pub fn router_server_if(&self) -> Option<&str> {
        self.router_ns
            .as_ref()
            .map(|_| self.ifaces[2].name.as_str())
    }

    /// Every interface with its namespace and addresses, in path order client to server.
    pub fn interfaces(&self) -> &[LabIface] {
        &self.ifaces
    }

    /// The interface called `name`, if this lab has one.
    pub fn iface(&self, name: &str) -> Option<&LabIface> {
        self.ifaces.iter().find(|i| i.name == name)
    }

    /// Namespace owning the interface `name`.
    pub fn iface_ns(&self, name: &str) -> Option<&str> {
        self.iface(name).map(|i| i.ns.as_str())
    }

    /// Client's IPv4 address.
    pub fn client_v4(&self) -> Ipv4Addr {
        self.ifaces[0].v4
    }

    /// Client's IPv6 address.
    pub fn client_v6(&self) -> Ipv6Addr {
        self.ifaces[0].v6
    }

    /// Server's IPv4 address.
    pub fn server_v4(&self) -> Ipv4Addr {
        self.ifaces[self.ifaces.len() - 1].v4
    }

    /// Server's IPv6 address.
    pub fn server_v6(&self) -> Ipv6Addr {
        self.ifaces[self.ifaces.len() - 1].v6
    }

    /// Client's addresses, IPv4 then IPv6: for tests that loop over both families.
    pub fn client_addrs(&self) -> [IpAddr; 2] {
        [self.client_v4().into(), self.client_v6().into()]
    }

    /// Server's addresses, IPv4 then IPv6.
    pub fn server_addrs(&self) -> [IpAddr; 2] {
        [self.server_v4().into(), self.server_v6().into()]
    }

    /// Addresses of the interfaces in `ns`: all IPv4 ones, then (with `ipv6`) IPv6 ones.
    pub fn ns_addrs(&self, ns: &str, ipv6: bool) -> Vec<IpAddr> {
        let here = self.ifaces.iter().filter(|i| i.ns == ns);
        let v4 = here.clone().map(|i| IpAddr::from(i.v4));
        let v6 = here.map(|i| IpAddr::from(i.v6)).filter(|_| ipv6);
        v4.chain(v6).collect()
    }

    fn check_ns(&self, ns: &str) -> Result<()> {
        // Refusing foreign namespaces keeps lab commands from ever running on the host's
        // network by a typo.
        ensure!(
            self.created_ns.iter().any(|n| n == ns),
            "netns {ns:?} is not part of lab {} ({:?})",
            self.tag,
            self.created_ns
        );
        Ok(())
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Relative paths are taken inside the lab dir, so tests need not build paths.
    fn lab_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.dir.join(path)
        }
    }

    /// Starts `args` inside `ns` with stdin at /dev/null, stdout and stderr to files in the
    /// lab dir named after `name`.
    pub fn spawn(&self, ns: &str, name: &str, args: &[impl AsRef<OsStr>]) -> Result<LabProcess> {
        self.spawn_inner(ns, name, args, false)
    }

    /// Like [`Lab::spawn`], but keeps a pipe to stdin open for
    /// [`LabProcess::write_stdin`]: openssl s_client/s_server quit on stdin EOF.
    pub fn spawn_with_stdin(
        &self,
        ns: &str,
        name: &str,
        args: &[impl AsRef<OsStr>],
    ) -> Result<LabProcess> {
        self.spawn_inner(ns, name, args, true)
    }

    fn spawn_inner(
        &self,
        ns: &str,
        name: &str,
        args: &[impl AsRef<OsStr>],
        with_stdin: bool,
    ) -> Result<LabProcess> {
        self.check_ns(ns)?;
        let stem = format!("{:03}-{}", self.next_seq(), sanitize(name));
        let stdout_path = self.dir.join(format!("{stem}.stdout"));
        let stderr_path = self.dir.join(format!("{stem}.stderr"));
        let (mut cmd, command) = netns_command(ns, args)?;
        let file = |p: &Path| File::create(p).with_context(|| format!("creating {}", p.display()));
        cmd.stdout(file(&stdout_path)?)
            .stderr(file(&stderr_path)?)
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{command}`"))?;
        let stdin = child.stdin.take();
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        lock(&self.procs).push(Arc::clone(&child));
        Ok(LabProcess {
            name: name.to_owned(),
            ns: ns.to_owned(),
            command,
            pid,
            child,
            stdin,
            stdout_path,
            stderr_path,
        })
    }

    /// Runs `args` inside `ns` to completion and returns its output whatever the exit
    /// status (failing commands are often the point of a test). Killed after `timeout`,
    /// which is then an error naming the command and holding what it printed so far.
    pub fn run(&self, ns: &str, args: &[impl AsRef<OsStr>], timeout: Duration) -> Result<Output> {
        self.check_ns(ns)?;
        let (cmd, command) = netns_command(ns, args)?;
        run_command(cmd, &command, timeout)
    }

    /// Like [`Lab::run`], but a non-zero exit is an error (with stderr); returns stdout.
    pub fn run_ok(
        &self,
        ns: &str,
        args: &[impl AsRef<OsStr>],
        timeout: Duration,
    ) -> Result<String> {
        self.check_ns(ns)?;
        let (cmd, command) = netns_command(ns, args)?;
        check_output(run_command(cmd, &command, timeout)?, &command)
    }

    /// Waits until something in `ns` listens on TCP `addr:port` (a wildcard listener of the
    /// same family counts). Reads `ss -ltn` rather than connecting, because a probe
    /// connection would be seen by the detector and captures, and would use up servers
    /// started with `-naccept 1`.
    pub fn wait_tcp(&self, ns: &str, addr: IpAddr, port: u16, timeout: Duration) -> Result<()> {
        self.wait_listening(ns, &[addr], port, timeout, None)
    }

    /// Waits for a listener on `port` at any of `addrs`; with `proc`, stops waiting as soon
    /// as that process has died, and says why.
    fn wait_listening(
        &self,
        ns: &str,
        addrs: &[IpAddr],
        port: u16,
        timeout: Duration,
        proc: Option<&LabProcess>,
    ) -> Result<()> {
        self.check_ns(ns)?;
        let mut backoff = Backoff::new(timeout);
        loop {
            let listeners = self.run_ok(ns, &["ss", "-Hltn"], SETUP_TIMEOUT)?;
            if addrs.iter().any(|a| ss_listens(&listeners, *a, port)) {
                return Ok(());
            }
            if let Some(p) = proc
                && let Some(status) = p.try_wait()?
            {
                bail!(
                    "`{}` exited ({status}) before listening on port {port} in netns {ns}; output:\n{}",
                    p.command,
                    tail(&p.output())
                );
            }
            if !backoff.wait() {
                bail!(
                    "nothing listened on {addrs:?} port {port} in netns {ns} within {timeout:?}; \
                     listeners there:\n{listeners}"
                );
            }
        }
    }

    /// Turns TSO, GSO and GRO of `iface` in `ns` on or off. Defaults stay as the kernel
    /// sets them; tests that need to see wire-sized segments at a hook that would
    /// otherwise get aggregates call this. Without ethtool installed this logs a note and
    /// does nothing, so such tests degrade instead of failing on a tool.
    pub fn set_offloads(&self, ns: &str, iface: &str, on: bool) -> Result<()> {
        self.check_ns(ns)?;
        if find_in_path("ethtool").is_none() {
            log(
                &self.tag,
                &format!("ethtool not installed; offloads of {iface} in {ns} left as they are"),
            );
            return Ok(());
        }
        let v = if on { "on" } else { "off" };
        self.run_ok(
            ns,
            &["ethtool", "-K", iface, "tso", v, "gso", v, "gro", v],
            SETUP_TIMEOUT,
        )?;
        Ok(())
    }

    /// Starts tcpdump on `iface` in `ns` writing TCP packets to `path` (relative paths are
    /// in the lab dir), and returns once it is attached, so no early packet is missed.
    pub fn capture(&self, ns: &str, iface: &str, path: impl AsRef<Path>) -> Result<Capture> {
        self.capture_filtered(ns, iface, path, "tcp")
    }

    /// Like [`Lab::capture`] with a pcap filter of the caller's choice (e.g. `"tcp or icmp"`).
    pub fn capture_filtered(
        &self,
        ns: &str,
        iface: &str,
        path: impl AsRef<Path>,
        filter: &str,
    ) -> Result<Capture> {
        let path = self.lab_path(path.as_ref());
        let args: [&OsStr; 16] = [
            "tcpdump".as_ref(),
            "-i".as_ref(),
            iface.as_ref(),
            "-w".as_ref(),
            path.as_os_str(),
            // A 64 MiB kernel buffer (KiB): bulk transfers through the lab otherwise
            // outrun tcpdump on a small machine, and a capture with holes replays wrong.
            "-B".as_ref(),
            "65536".as_ref(),
            // Packet-buffered output and immediate delivery, so the file is complete
            // as soon as tcpdump exits, even for a capture of a few milliseconds.
            "-U".as_ref(),
            "--immediate-mode".as_ref(),
            "-s".as_ref(),
            "0".as_ref(),
            // Debian's tcpdump otherwise drops to user tcpdump, which cannot write the
            // root-owned lab dir.
            "-Z".as_ref(),
            "root".as_ref(),
            "-n".as_ref(),
            "--".as_ref(),
            filter.as_ref(),
        ];
        let process = self.spawn(ns, &format!("tcpdump-{iface}"), &args)?;
        process
            .wait_for_output("listening on", LISTEN_TIMEOUT)
            .context("tcpdump did not start capturing")?;
        Ok(Capture { process, path })
    }

    /// A server certificate for `cn` (EC P-256) signed by this lab's CA, with the server's
    /// IPv4 and IPv6 addresses and `cn` as SANs, so clients can verify it whether they
    /// connect by name or by address.
    pub fn tls_cert(&self, cn: &str) -> Result<TlsFiles> {
        self.tls_cert_with(cn, KeyAlg::EcP256)
    }

    /// Like [`Lab::tls_cert`] with a choice of key type.
    pub fn tls_cert_with(&self, cn: &str, alg: KeyAlg) -> Result<TlsFiles> {
        let (ca_cert, ca_key) = self.trusted_ca()?;
        self.issue(cn, alg, ca_cert, ca_key)
    }

    /// A server certificate like [`Lab::tls_cert`]'s (CN [`DEFAULT_CN`]) but from a fresh,
    /// different CA: a client trusting the lab CA rejects it with "unknown CA", which is
    /// how tests provoke that failure.
    pub fn untrusted_cert(&self) -> Result<TlsFiles> {
        let stem = format!("untrusted-ca-{:03}", self.next_seq());
        let (ca_cert, ca_key) = self.make_ca(&stem, &format!("dlab untrusted CA {}", self.tag))?;
        self.issue(DEFAULT_CN, KeyAlg::EcP256, ca_cert, ca_key)
    }

    fn trusted_ca(&self) -> Result<(PathBuf, PathBuf)> {
        let mut ca = lock(&self.ca);
        if let Some(files) = &*ca {
            return Ok(files.clone());
        }
        let files = self.make_ca("ca", &format!("dlab test CA {}", self.tag))?;
        *ca = Some(files.clone());
        Ok(files)
    }

    fn make_ca(&self, stem: &str, cn: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = self.dir.join(format!("{stem}.crt"));
        let key = self.dir.join(format!("{stem}.key"));
        let cnf = self.dir.join(format!("{stem}.cnf"));
        write_file(&cnf, &openssl_config(cn, "DNS:unused.invalid"))?;
        let mut args = vec![os("openssl"), os("req"), os("-x509"), os("-new")];
        args.extend(newkey_args(KeyAlg::EcP256));
        args.extend([
            os("-nodes"),
            os("-keyout"),
            key.clone().into(),
            os("-out"),
            cert.clone().into(),
        ]);
        args.extend([
            os("-days"),
            os("3650"),
            os("-config"),
            cnf.into(),
            os("-extensions"),
            os("v3_ca"),
        ]);
        host_ok(&args)?;
        Ok((cert, key))
    }

    fn issue(&self, cn: &str, alg: KeyAlg, ca_cert: PathBuf, ca_key: PathBuf) -> Result<TlsFiles> {
        ensure!(
            !cn.is_empty()
                && cn.len() <= 64
                && cn
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)),
            "certificate CN {cn:?} must be 1-64 characters of [A-Za-z0-9.-_:]"
        );
        let seq = self.next_seq();
        let stem = format!("{seq:03}-{}", sanitize(cn));
        let (cert, key) = (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        );
        let (csr, cnf) = (
            self.dir.join(format!("{stem}.csr")),
            self.dir.join(format!("{stem}.cnf")),
        );
        let mut san = match cn.parse::<IpAddr>() {
            Ok(ip) => format!("IP:{ip}"),
            Err(_) => format!("DNS:{cn}"),
        };
        for ip in self.server_addrs() {
            if ip.to_string() != cn {
                write!(san, ", IP:{ip}").expect("writing to a String cannot fail");
            }
        }
        write_file(&cnf, &openssl_config(cn, &san))?;
        let mut req = vec![os("openssl"), os("req"), os("-new")];
        req.extend(newkey_args(alg));
        req.extend([
            os("-nodes"),
            os("-keyout"),
            key.clone().into(),
            os("-out"),
            csr.clone().into(),
        ]);
        req.extend([os("-config"), cnf.clone().into()]);
        host_ok(&req)?;
        // Unique serials, so that clients never see two certificates with the same
        // issuer and serial (some cache by that pair).
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let serial = format!("0x{:x}{seq:04x}", nanos & 0xffff_ffff_ffff);
        let sign = [
            os("openssl"),
            os("x509"),
            os("-req"),
            os("-in"),
            csr.into(),
            os("-CA"),
            ca_cert.clone().into(),
            os("-CAkey"),
            ca_key.clone().into(),
            os("-set_serial"),
            os(&serial),
            os("-days"),
            os("825"),
            os("-out"),
            cert.clone().into(),
            os("-extfile"),
            cnf.into(),
            os("-extensions"),
            os("v3_server"),
        ];
        host_ok(&sign)?;
        Ok(TlsFiles {
            cn: cn.to_owned(),
            ca_cert,
            ca_key,
            cert,
            key,
        })
    }

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
        let _ = writeln!(c, "# Generated by tests/src/lab.rs for lab {}.", self.tag);
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
                        tail(&read_lossy(&error_log))
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

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: a namespace with processes in it outlives `ip netns del`, and so
        // would its veths.
        let procs = std::mem::take(&mut *lock(&self.procs));
        let refs: Vec<&Mutex<Child>> = procs.iter().map(|p| &**p).collect();
        terminate_all(&refs, STOP_GRACE);
        // Then whatever else got in (grandchildren, commands started by other means).
        for ns in &self.created_ns {
            if let Err(e) = kill_netns_pids(ns) {
                log(&self.tag, &format!("{e:#}"));
            }
        }
        for ns in self.created_ns.iter().rev() {
            if let Err(e) = host_ok(&["ip", "netns", "del", ns]) {
                log(&self.tag, &format!("{e:#}"));
            }
        }
        if env::var_os("LAB_KEEP").is_some_and(|v| v == "1") {
            // The marker keeps sweep_stale from deleting what the user asked to keep.
            let _ = fs::write(self.dir.join(".keep"), b"LAB_KEEP=1\n");
            log(
                &self.tag,
                &format!("LAB_KEEP=1: kept {}", self.dir.display()),
            );
        } else {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                log(&self.tag, &format!("removing {}: {e}", self.dir.display()));
            }
            if thread::panicking() {
                log(
                    &self.tag,
                    "removed the lab dir; rerun with LAB_KEEP=1 to keep it for inspection",
                );
            }
        }
    }
}

/// Runs `f` on a fresh thread that has joined the network namespace `ns` (by its
/// `/var/run/netns` name) and returns its result; a panic in `f` is resumed in the
/// caller, so assertions inside `f` fail the test as usual.
///
/// A fresh thread, because `setns(CLONE_NEWNET)` switches only the calling thread and
/// there is no way back that cannot fail; the thread ends with `f`. Sockets created in
/// `f` stay in `ns` and may be returned and used from any thread. Processes spawned in
/// `f` also start in `ns`, but prefer [`Lab::spawn`], which tracks them.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = Path::new(NETNS_RUN_DIR).join(ns);
    let file = File::open(&path)
        .with_context(|| format!("opening {} (does netns {ns} exist?)", path.display()))?;
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name(format!("in_netns {ns}"))
            .spawn_scoped(scope, move || -> Result<T> {
                // SAFETY: `file` is an open namespace file for the duration of the call;
                // setns affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error())
                        .with_context(|| format!("setns into netns {ns}"));
                }
                Ok(f())
            })
            .context("spawning the in_netns thread")?;
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Removes namespaces and temp dirs that labs of dead processes left behind (a run killed
/// by SIGINT or SIGKILL skips Drop): for each name with [`NAME_PREFIX`] whose tag encodes a
/// pid that no longer exists, kills the processes still in the namespace, deletes it, and
/// deletes the temp dir unless it was kept with `LAB_KEEP=1`. Labs of live processes, even
/// other test binaries running concurrently, are left alone. Returns how many namespaces
/// were removed. Called by every [`Lab::new`].
///
/// Liveness is judged in this process's pid namespace: labs made from a container with its
/// own pid namespace but the host's `/var/run/netns` would look dead from outside it.
pub fn sweep_stale() -> Result<usize> {
    let mut removed = 0;
    match fs::read_dir(NETNS_RUN_DIR) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("listing {NETNS_RUN_DIR}")),
        Ok(entries) => {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = owner_pid(&name) else {
                    continue;
                };
                if pid_alive(pid) {
                    continue;
                }
                if let Err(e) = kill_netns_pids(&name) {
                    eprintln!("[lab] sweep: {e:#}");
                }
                match host_ok(&["ip", "netns", "del", &name]) {
                    Ok(_) => {
                        eprintln!("[lab] sweep: removed netns {name} of dead pid {pid}");
                        removed += 1;
                    }
                    // A concurrent sweep may have been first.
                    Err(_) if !entry.path().exists() => {}
                    Err(e) => eprintln!("[lab] sweep: {e:#}"),
                }
            }
        }
    }
    if let Ok(entries) = fs::read_dir(env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Some(pid) = owner_pid(&name)
                && !pid_alive(pid)
                && path.is_dir()
                && !path.join(".keep").exists()
            {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
    Ok(removed)
}

/// Runs `args` in the host namespace with a hard timeout (see [`Lab::run`]): for the few
/// steps that need no network, like reading a pcap with `tcpdump -r`.
pub fn run_host(args: &[impl AsRef<OsStr>], timeout: Duration) -> Result<Output> {
    ensure!(!args.is_empty(), "run_host: no command given");
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    run_command(cmd, &display_cmd(args), timeout)
}

/// Pid encoded in a lab name (`dlab-PPPPPPNNN` or `dlab-PPPPPPNNN-role`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let tag = rest.get(..9)?;
    if !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let after = &rest[9..];
    if !(after.is_empty() || after.starts_with('-')) {
        return None;
    }
    u32::from_str_radix(&tag[..6], 16).ok()
}

/// Whether `pid` may still be running; errs towards "alive", since wrongly sweeping a live
/// lab would break a concurrent test.
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: signal 0 only checks whether the pid exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// SIGKILLs every process still in `ns` until none is left (bounded by [`STOP_GRACE`]).
fn kill_netns_pids(ns: &str) -> Result<()> {
    let me = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let mut backoff = Backoff::new(STOP_GRACE);
    loop {
        let pids: Vec<libc::pid_t> = host_ok(&["ip", "netns", "pids", ns])?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p != me && p > 0)
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        for &p in &pids {
            // SAFETY: plain kill(2) on a pid that `ip netns pids` just reported in our namespace.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if !backoff.wait() {
            bail!("processes {pids:?} still in netns {ns} after SIGKILL");
        }
    }
}

fn add_routes(ns: &str, via: &LabIface, to: &LabIface) -> Result<()> {
    let net4 = Ipv4Addr::from(u32::from(to.v4) & 0xffff_ff00);
    let net6 = Ipv6Addr::from(u128::from(to.v6) & !0u128 << 64);
    let (net4, net6) = (format!("{net4}/24"), format!("{net6}/64"));
    let (gw4, gw6) = (via.v4.to_string(), via.v6.to_string());
    host_ok(&["ip", "-n", ns, "route", "add", &net4, "via", &gw4])?;
    host_ok(&["ip", "-n", ns, "-6", "route", "add", &net6, "via", &gw6])?;
    Ok(())
}

/// `ip netns exec NS ARGS...`, with the proxy variables removed (see [`PROXY_VARS`]).
fn netns_command(ns: &str, args: &[impl AsRef<OsStr>]) -> Result<(Command, String)> {
    ensure!(!args.is_empty(), "no command given to run in netns {ns}");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    Ok((cmd, format!("ip netns exec {ns} {}", display_cmd(args))))
}

/// A host command that must succeed within [`SETUP_TIMEOUT`]; returns its stdout.
fn host_ok(args: &[impl AsRef<OsStr>]) -> Result<String> {
    check_output(run_host(args, SETUP_TIMEOUT)?, &display_cmd(args))
}

fn check_output(out: Output, command: &str) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{command}` failed ({}): {}",
            out.status,
            tail(if stderr.trim().is_empty() {
                &stdout
            } else {
                &stderr
            })
            .trim()
        );
    }
    Ok(stdout)
}

/// Runs `cmd` with piped output and a hard timeout. Pipes are drained by helper threads so
/// a command printing more than a pipe buffer cannot deadlock against our polling.
fn run_command(mut cmd: Command, command: &str, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{command}`"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let mut backoff = Backoff::new(timeout);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{command}`"))?
        {
            break Some(status);
        }
        if !backoff.wait() {
            let _ = child.kill();
            reap_bounded(&mut child, STOP_GRACE);
            break None;
        }
    };
    let (stdout, stderr) = (collect(&stdout), collect(&stderr));
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "`{command}` timed out after {timeout:?} and was killed; stdout: {:?}; stderr: {:?}",
            tail(&String::from_utf8_lossy(&stdout)),
            tail(&String::from_utf8_lossy(&stderr))
        ),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

/// What a drain thread read; empty if a grandchild still holds the pipe open after
/// [`PIPE_DRAIN_GRACE`] (the thread is then left to finish on its own).
fn collect(rx: &mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    rx.recv_timeout(PIPE_DRAIN_GRACE).unwrap_or_default()
}

fn reap_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut backoff = Backoff::new(limit);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if !backoff.wait() {
            return None;
        }
    }
}

fn signal_child(child: &Mutex<Child>, sig: libc::c_int) -> Result<bool> {
    let mut c = lock(child);
    if c.try_wait()?.is_some() {
        return Ok(false);
    }
    // Not reaped yet, so the pid is still this child's (possibly a zombie).
    let pid = libc::pid_t::try_from(c.id())?;
    // SAFETY: plain kill(2).
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("kill({pid}, {sig})"));
    }
    Ok(true)
}

/// SIGTERM to all, SIGKILL to those still running after `grace`, all in parallel so that a
/// lab with many processes still stops within a few seconds.
fn terminate_all(children: &[&Mutex<Child>], grace: Duration) {
    let exited = |c: &Mutex<Child>| !matches!(lock(c).try_wait(), Ok(None));
    for c in children {
        let _ = signal_child(c, libc::SIGTERM);
    }
    for sig in [None, Some(libc::SIGKILL)] {
        if let Some(sig) = sig {
            for c in children.iter().filter(|c| !exited(c)) {
                let _ = signal_child(c, sig);
            }
        }
        let mut backoff = Backoff::new(grace);
        loop {
            if children.iter().all(|c| exited(c)) {
                return;
            }
            if !backoff.wait() {
                break;
            }
        }
    }
}

/// Bounded polling: exponential backoff from 1 ms to [`MAX_POLL_INTERVAL`], ending after a
/// time limit or [`MAX_POLLS`] attempts, whichever comes first.
struct Backoff {
    start: Instant,
    limit: Duration,
    delay: Duration,
    polls: u32,
}

impl Backoff {
    fn new(limit: Duration) -> Self {
        Self {
            start: Instant::now(),
            limit,
            delay: Duration::from_millis(1),
            polls: 0,
        }
    }

    /// Sleeps before the next attempt; false once the budget is spent (the caller has
    /// then made its last check).
    fn wait(&mut self) -> bool {
        let elapsed = self.start.elapsed();
        if elapsed >= self.limit || self.polls >= MAX_POLLS {
            return false;
        }
        self.polls += 1;
        thread::sleep(self.delay.min(self.limit - elapsed));
        self.delay = (self.delay * 2).min(MAX_POLL_INTERVAL);
        true
    }
}

/// Whether `ss -Hltn` output shows a listener on `port` that accepts connections to `addr`:
/// the address itself, or a wildcard of its family (`*` is a dual-stack wildcard).
fn ss_listens(ss: &str, addr: IpAddr, port: u16) -> bool {
    ss.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .any(|local| {
            let Some((host, p)) = local.rsplit_once(':') else {
                return false;
            };
            if p.parse() != Ok(port) {
                return false;
            }
            let host = host.split('%').next().unwrap_or(host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host == "*" {
                return true;
            }
            match host.parse::<IpAddr>() {
                Ok(h) => h == addr || (h.is_unspecified() && h.is_ipv4() == addr.is_ipv4()),
                Err(_) => false,
            }
        })
}

fn openssl_config(cn: &str, san: &str) -> String {
    format!(
        "# Generated by tests/src/lab.rs; self-contained so the system openssl.cnf does not matter.\n\
         [req]\ndistinguished_name = dn\nprompt = no\n\
         [dn]\nCN = {cn}\n\
         [v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [v3_server]\nbasicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n\
         subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid, issuer\nsubjectAltName = {san}\n"
    )
}

fn newkey_args(alg: KeyAlg) -> Vec<OsString> {
    match alg {
        KeyAlg::EcP256 => vec![
            os("-newkey"),
            os("ec"),
            os("-pkeyopt"),
            os("ec_paramgen_curve:P-256"),
        ],
        KeyAlg::Rsa2048 => vec![os("-newkey"), os("rsa:2048")],
    }
}

fn os(s: &str) -> OsString {
    s.into()
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last 4000 bytes of `s`: enough for an error message, short enough to read.
fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(4000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A file-name-safe version of a user-given name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn display_cmd(args: &[impl AsRef<OsStr>]) -> String {
    args.iter()
        .map(|a| {
            let s = a.as_ref().to_string_lossy();
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"\\$*?".contains(c)) {
                format!("'{}'", s.replace('\'', r"'\''"))
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A path as the `&str` a command line wants; captures and certificates live under the
/// lab's own (UTF-8) temp dir.
pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// `s_server` arguments for a certificate.
pub fn cert_args(files: &TlsFiles) -> Result<Vec<String>> {
    Ok(vec![
        "-cert".into(),
        path_str(&files.cert)?.into(),
        "-key".into(),
        path_str(&files.key)?.into(),
    ])
}

/// `openssl s_client -connect ADDR -servername server.test -CAfile CA EXTRA...`.
pub fn s_client_args(connect: SocketAddr, ca: &Path, extra: &[&str]) -> Result<Vec<String>> {
    let mut args: Vec<String> = [
        "openssl",
        "s_client",
        "-connect",
        &connect.to_string(),
        "-servername",
        DEFAULT_CN,
        "-CAfile",
        path_str(ca)?,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Ok(args)
}

impl Lab {
    /// A routed lab's router namespace and its client-side and server-side interfaces.
    pub fn router_parts(&self) -> Result<(String, String, String)> {
        Ok((
            self.router_ns()
                .context("routed lab has a router")?
                .to_owned(),
            self.router_client_if()
                .context("router client side")?
                .to_owned(),
            self.router_server_if()
                .context("router server side")?
                .to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpStream,
        panic::{AssertUnwindSafe, catch_unwind},
    };

    use super::*;

    const T: Duration = Duration::from_secs(20);

    /// Live tests need root for namespaces; elsewhere they pass with a note, so that
    /// `cargo test` stays usable for unprivileged builds.
    fn root() -> bool {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipping: live lab tests need root");
        }
        root
    }

    fn netns_list() -> String {
        let out = run_host(&["ip", "netns", "list"], T).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Running and not a zombie: a killed grandchild can stay a zombie until init reaps it.
    fn pid_running(pid: u32) -> bool {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X') | None)
        })
    }

    fn curl(lab: &Lab, ns: &str, extra: &[&str], url: &str) -> String {
        let mut args = vec!["curl", "-sS", "--max-time", "10", "--noproxy", "*"];
        args.extend(extra);
        args.push(url);
        lab.run_ok(ns, &args, T).unwrap()
    }

    fn assert_no_default_routes(lab: &Lab) {
        for ns in lab.namespaces() {
            for family in ["-4", "-6"] {
                let routes = lab
                    .run_ok(ns, &["ip", family, "route", "show", "default"], T)
                    .unwrap();
                assert!(routes.trim().is_empty(), "default route in {ns}: {routes}");
            }
        }
    }

    #[test]
    fn names_and_pids_parse() {
        assert_eq!(owner_pid("dlab-0012ab001-client"), Some(0x12ab));
        assert_eq!(owner_pid("dlab-0012ab001"), Some(0x12ab));
        assert_eq!(owner_pid("dlab-0012ab00"), None);
        assert_eq!(owner_pid("dlab-0012ab001x"), None);
        assert_eq!(owner_pid("dlab-zz12ab001-client"), None);
        assert_eq!(owner_pid("other-0012ab001-client"), None);
        let longest = format!("d{:06x}{:03x}rc", 0x3f_ffff, 0xfff);
        assert!(longest.len() <= IFNAME_MAX, "{longest}");
    }

    #[test]
    fn ss_output_parses() {
        let ss = "LISTEN 0 511 10.200.1.2:443 0.0.0.0:*\n\
                  LISTEN 0 511 [fdc8:1::2]:443 [::]:*\n\
                  LISTEN 0 4096 *:4433 *:*\n\
                  LISTEN 0 511 0.0.0.0:80 0.0.0.0:*\n\
                  LISTEN 0 511 [::]:8080 [::]:*\n\
                  LISTEN 0 511 127.0.0.53%lo:53 0.0.0.0:*\n";
        let v4: IpAddr = "10.200.1.2".parse().unwrap();
        let v6: IpAddr = "fdc8:1::2".parse().unwrap();
        assert!(ss_listens(ss, v4, 443) && ss_listens(ss, v6, 443));
        assert!(!ss_listens(ss, "10.200.1.3".parse().unwrap(), 443));
        assert!(ss_listens(ss, v4, 4433) && ss_listens(ss, v6, 4433));
        assert!(ss_listens(ss, v4, 80) && !ss_listens(ss, v6, 80));
        assert!(ss_listens(ss, v6, 8080) && !ss_listens(ss, v4, 8080));
        assert!(ss_listens(ss, "127.0.0.53".parse().unwrap(), 53));
        assert!(!ss_listens(ss, v4, 9));
    }

    #[test]
    fn direct_topology_ping_and_http() {
        if !root() {
            return;
        }
        let lab = Lab::direct().unwrap();
        assert_eq!(lab.namespaces().len(), 2);
        assert!(lab.router_ns().is_none() && lab.router_client_if().is_none());
        assert_eq!(lab.iface_ns(lab.client_if()), Some(lab.client_ns()));
        assert_eq!(lab.iface_ns(lab.server_if()), Some(lab.server_ns()));
        assert!(
            lab.interfaces()
                .iter()
                .all(|i| i.name.len() <= IFNAME_MAX && i.name.contains(lab.tag()))
        );
        if find_in_path("ping").is_some() {
            for addr in lab.server_addrs() {
                lab.run_ok(
                    lab.client_ns(),
                    &["ping", "-c", "1", "-W", "2", &addr.to_string()],
                    T,
                )
                .unwrap();
            }
        } else {
            eprintln!("note: ping not installed, skipping the ping check");
        }
        let site = NginxSite {
            port: 8080,
            ipv6: true,
            ..Default::default()
        };
        let nginx = lab.nginx(lab.server_ns(), site).unwrap();
        for addr in lab.server_addrs() {
            assert_eq!(
                curl(&lab, lab.client_ns(), &[], &nginx.url(addr, "/")),
                "ok\n"
            );
        }
        assert!(
            nginx
                .access_log_text()
                .contains(&lab.client_v6().to_string())
        );
        assert_no_default_routes(&lab);
    }

    #[test]
    fn routed_topology_tls_through_router() {
        if !root() {
            return;
        }
        let lab = Lab::routed().unwrap();
        let router = lab.router_ns().unwrap().to_owned();
        assert_eq!(lab.namespaces().len(), 3);
        assert_eq!(
            lab.iface_ns(lab.router_client_if().unwrap()),
            Some(router.as_str())
        );
        assert_eq!(
            lab.iface_ns(lab.router_server_if().unwrap()),
            Some(router.as_str())
        );
        let fwd = lab.run_ok(
            &router,
            &[
                "sysctl",
                "-n",
                "net.ipv4.ip_forward",
                "net.ipv6.conf.all.forwarding",
            ],
            T,
        );
        assert_eq!(
            fwd.unwrap().split_whitespace().collect::<Vec<_>>(),
            ["1", "1"]
        );
        let route = lab
            .run_ok(
                lab.client_ns(),
                &["ip", "route", "get", &lab.server_v4().to_string()],
                T,
            )
            .unwrap();
        assert!(
            route.contains(&format!("via {}", lab.interfaces()[1].v4)),
            "{route}"
        );

        let site = NginxSite {
            tls: true,
            ipv6: true,
            big_mib: 4,
            ..Default::default()
        };
        let nginx = lab.nginx(lab.server_ns(), site).unwrap();
        let ca = nginx
            .tls
            .as_ref()
            .unwrap()
            .ca_cert
            .to_str()
            .unwrap()
            .to_owned();
        for addr in lab.server_addrs() {
            let body = curl(
                &lab,
                lab.client_ns(),
                &["--cacert", &ca],
                &nginx.url(addr, "/"),
            );
            assert_eq!(body, "ok\n", "via {addr}");
        }
        let size = curl(
            &lab,
            lab.client_ns(),
            &["--cacert", &ca, "-o", "/dev/null", "-w", "%{size_download}"],
            &nginx.url(lab.server_v6().into(), "/big"),
        );
        assert_eq!(size, (4 << 20).to_string());
        if find_in_path("ping").is_some() {
            for addr in lab.server_addrs() {
                lab.run_ok(
                    lab.client_ns(),
                    &["ping", "-c", "1", "-W", "2", &addr.to_string()],
                    T,
                )
                .unwrap();
            }
        }
        assert_no_default_routes(&lab);
    }

    #[test]
    fn capture_records_packets() {
        if !root() {
            return;
        }
        let lab = Lab::routed().unwrap();
        let router = lab.router_ns().unwrap();
        let cap = lab
            .capture(router, lab.router_server_if().unwrap(), "router.pcap")
            .unwrap();
        let nginx = lab
            .nginx(
                lab.server_ns(),
                NginxSite {
                    tls: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let ca = nginx
            .tls
            .as_ref()
            .unwrap()
            .ca_cert
            .to_str()
            .unwrap()
            .to_owned();
        let url = nginx.url(lab.server_v4().into(), "/");
        assert_eq!(
            curl(&lab, lab.client_ns(), &["--cacert", &ca], &url),
            "ok\n"
        );
        let path = cap.stop().unwrap();
        assert!(
            fs::metadata(&path).unwrap().len() > 24,
            "pcap has no packets"
        );
        let out = run_host(
            &[
                OsStr::new("tcpdump"),
                "-nn".as_ref(),
                "-r".as_ref(),
                path.as_os_str(),
            ],
            T,
        )
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let n = text.lines().count();
        assert!(
            n > 0 && text.contains(&format!("{}.443", lab.server_v4())),
            "{n} packets:\n{text}"
        );
    }

    #[test]
    fn drop_removes_namespaces_processes_and_dir() {
        if !root() {
            return;
        }
        let lab = Lab::routed().unwrap();
        let (tag, dir) = (lab.tag().to_owned(), lab.dir().to_owned());
        let mut handles = Vec::new();
        for ns in lab.namespaces() {
            handles.push(lab.spawn(ns, "sleeper", &["sleep", "1000"]).unwrap());
        }
        // A grandchild the lab does not know about; only the namespace sweep in Drop gets it.
        handles.push(
            lab.spawn(
                lab.server_ns(),
                "nested",
                &["sh", "-c", "sleep 1000 & wait"],
            )
            .unwrap(),
        );
        let nginx = lab.nginx(lab.server_ns(), NginxSite::default()).unwrap();
        let mut pids: Vec<u32> = handles.iter().map(LabProcess::pid).collect();
        pids.push(nginx.process.pid());
        let mut backoff = Backoff::new(T);
        let in_server = loop {
            let out = host_ok(&["ip", "netns", "pids", lab.server_ns()]).unwrap();
            let found: Vec<u32> = out
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            // sleeper, sh, its sleep, nginx
            if found.len() >= 4 || !backoff.wait() {
                break found;
            }
        };
        assert!(in_server.len() >= 4, "{in_server:?}");
        pids.extend(in_server);
        // The lab goes first while the handles still exist: its Drop must not depend on
        // the order in which a test declared things.
        drop(lab);
        drop(handles);
        drop(nginx);
        assert!(
            !netns_list().contains(&tag),
            "namespaces left: {}",
            netns_list()
        );
        let mut backoff = Backoff::new(Duration::from_secs(5));
        while pids.iter().any(|&p| pid_running(p)) && backoff.wait() {}
        let alive: Vec<_> = pids.iter().filter(|&&p| pid_running(p)).collect();
        assert!(alive.is_empty(), "still running: {alive:?}");
        if env::var_os("LAB_KEEP").is_none() {
            assert!(!dir.exists(), "{} left", dir.display());
        }
    }

    #[test]
    fn panic_in_test_body_still_cleans_up() {
        if !root() {
            return;
        }
        let seen = Mutex::new(None);
        let result = catch_unwind(AssertUnwindSafe(|| {
            let lab = Lab::direct().unwrap();
            let sleeper = lab
                .spawn(lab.server_ns(), "sleeper", &["sleep", "1000"])
                .unwrap();
            *lock(&seen) = Some((lab.tag().to_owned(), sleeper.pid()));
            panic!("deliberate panic inside a lab test");
        }));
        assert!(result.is_err());
        let (tag, pid) = lock(&seen).clone().unwrap();
        assert!(
            !netns_list().contains(&tag),
            "namespaces left: {}",
            netns_list()
        );
        assert!(!pid_running(pid));
    }

    #[test]
    fn sweep_stale_removes_only_dead_owners() {
        if !root() {
            return;
        }
        let live = Lab::direct().unwrap();
        // A pid that is not running: pids are below pid_max, and the top of the range is
        // rarely in use; check to be sure.
        let dead = (0x10_0000..0x10_0100)
            .rev()
            .find(|&p| !pid_alive(p))
            .unwrap();
        let ns = format!("{NAME_PREFIX}{dead:06x}fff-client");
        let dir = env::temp_dir().join(format!("{NAME_PREFIX}{dead:06x}fff"));
        host_ok(&["ip", "netns", "add", &ns]).unwrap();
        fs::create_dir_all(&dir).unwrap();
        // What a killed run leaves running: a server nobody will stop.
        let mut orphan = Command::new("ip")
            .args(["netns", "exec", &ns, "sleep", "1000"])
            .spawn()
            .unwrap();
        let mut backoff = Backoff::new(T);
        while host_ok(&["ip", "netns", "pids", &ns])
            .unwrap()
            .trim()
            .is_empty()
            && backoff.wait()
        {}
        // Another test's Lab::new may sweep first when tests run in parallel, so the count
        // returned here proves nothing; the namespace being gone does.
        sweep_stale().unwrap();
        let list = netns_list();
        assert!(!list.contains(&ns), "{list}");
        assert!(!dir.exists());
        assert!(
            !pid_running(orphan.id()),
            "process in the stale netns survived the sweep"
        );
        let _ = orphan.wait();
        for own in live.namespaces() {
            assert!(
                list.contains(own.as_str()),
                "live lab's {own} was swept: {list}"
            );
        }
    }

    #[test]
    fn in_netns_runs_inside_the_namespace() {
        if !root() {
            return;
        }
        let lab = Lab::direct().unwrap();
        let nginx = lab.nginx(lab.server_ns(), NginxSite::default()).unwrap();
        let server = SocketAddr::new(lab.server_v4().into(), nginx.port);
        let response = in_netns(lab.client_ns(), || -> io::Result<String> {
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok(r)
        })
        .unwrap()
        .unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200") && response.ends_with("\r\n\r\nok\n"),
            "{response}"
        );
        assert!(in_netns("dlab-no-such-netns", || ()).is_err());
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            in_netns(lab.client_ns(), || panic!("inside"))
        }));
        assert!(panicked.is_err());
    }

    #[test]
    fn run_timeout_names_the_command() {
        if !root() {
            return;
        }
        let lab = Lab::direct().unwrap();
        let start = Instant::now();
        let err = lab
            .run(
                lab.client_ns(),
                &["sleep", "30"],
                Duration::from_millis(300),
            )
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("sleep 30") && msg.contains("timed out"),
            "{msg}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        let out = lab
            .run(
                lab.client_ns(),
                &["sh", "-c", "echo out; echo err >&2; exit 3"],
                T,
            )
            .unwrap();
        assert_eq!(
            (out.status.code(), &out.stdout[..], &out.stderr[..]),
            (Some(3), &b"out\n"[..], &b"err\n"[..])
        );
        let err = lab
            .run_ok(lab.client_ns(), &["sh", "-c", "echo why >&2; exit 1"], T)
            .unwrap_err();
        assert!(format!("{err:#}").contains("why"), "{err:#}");
        assert!(lab.run("not-a-lab-ns", &["true"], T).is_err());
    }

    #[test]
    fn s_server_stdin_and_unknown_ca() {
        if !root() {
            return;
        }
        let lab = Lab::direct().unwrap();
        let good = lab.tls_cert(DEFAULT_CN).unwrap();
        let bad = lab.untrusted_cert().unwrap();
        assert_eq!(
            good.ca_cert,
            lab.tls_cert("other.test").unwrap().ca_cert,
            "one lab CA"
        );
        assert_ne!(good.ca_cert, bad.ca_cert);
        let text = host_ok(&[
            OsStr::new("openssl"),
            "x509".as_ref(),
            "-noout".as_ref(),
            "-text".as_ref(),
            "-in".as_ref(),
            good.cert.as_os_str(),
        ])
        .unwrap();
        for san in [
            format!("DNS:{DEFAULT_CN}"),
            format!("IP Address:{}", lab.server_v4()),
        ] {
            assert!(text.contains(&san), "{san} missing:\n{text}");
        }

        let files = |t: &TlsFiles| {
            [
                os("-cert"),
                t.cert.clone().into(),
                os("-key"),
                t.key.clone().into(),
            ]
        };
        let mut srv = lab.s_server(lab.server_ns(), 4433, &files(&good)).unwrap();
        let connect = SocketAddr::new(lab.server_v6().into(), 4433).to_string();
        let ca = good.ca_cert.to_str().unwrap();
        let client_args = [
            "openssl",
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            ca,
            "-verify_return_error",
        ];
        let mut cli = lab
            .spawn_with_stdin(lab.client_ns(), "s_client", &client_args)
            .unwrap();
        srv.wait_for_output("CIPHER is", T).unwrap();
        cli.write_stdin(b"hello from the client\n").unwrap();
        srv.wait_for_output("hello from the client", T).unwrap();
        srv.write_stdin(b"hello from the server\n").unwrap();
        cli.wait_for_output("hello from the server", T).unwrap();
        cli.close_stdin();
        cli.wait_timeout(T).unwrap();
        assert!(
            cli.output().contains("Verify return code: 0 (ok)"),
            "{}",
            cli.output()
        );

        let _bad_srv = lab.s_server(lab.server_ns(), 4434, &files(&bad)).unwrap();
        let connect = SocketAddr::new(lab.server_v4().into(), 4434).to_string();
        let out = lab
            .run(
                lab.client_ns(),
                &[
                    "openssl",
                    "s_client",
                    "-connect",
                    &connect,
                    "-CAfile",
                    ca,
                    "-verify_return_error",
                ],
                T,
            )
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success() && text.contains("unable to get local issuer certificate"),
            "{text}"
        );
    }

    #[test]
    fn set_offloads_toggles_segmentation() {
        if !root() {
            return;
        }
        let lab = Lab::direct().unwrap();
        let (ns, iface) = (lab.server_ns(), lab.server_if());
        lab.set_offloads(ns, iface, false).unwrap();
        if find_in_path("ethtool").is_none() {
            return;
        }
        let k = lab.run_ok(ns, &["ethtool", "-k", iface], T).unwrap();
        assert!(k.contains("generic-segmentation-offload: off"), "{k}");
        lab.set_offloads(ns, iface, true).unwrap();
        let k = lab.run_ok(ns, &["ethtool", "-k", iface], T).unwrap();
        assert!(k.contains("generic-segmentation-offload: on"), "{k}");
    }
}
