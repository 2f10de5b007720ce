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
    fs::{self, File},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Child,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::{process::host_ok, teardown::sweep_stale};

/// Prefix of every namespace and temp dir a lab creates; [`sweep_stale`] touches nothing else.
pub const NAME_PREFIX: &str = "dlab-";

/// How long a process gets between SIGTERM and SIGKILL when it is stopped.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Where `ip netns add` bind-mounts namespaces (iproute2's `NETNS_RUN_DIR`).
pub(crate) const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub(crate) const IFNAME_MAX: usize = 15;

/// Bound for the short setup commands (`ip`, `sysctl`, `openssl`, `ss`).
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Bound for a server to start listening, and for tcpdump to attach.
pub(crate) const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Proxy variables are dropped from lab commands: a proxy is never reachable from inside
/// the lab, and obeying one would send traffic towards an address the lab does not own.
pub(crate) const PROXY_VARS: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "ftp_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "FTP_PROXY",
];

/// Distinguishes labs created by one process; see the module docs on naming.
pub(crate) static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) type SharedChild = Arc<Mutex<Child>>;

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

/// A set of namespaces, veths, processes and files that is removed as a whole on drop.
/// See the module docs for naming, addressing and cleanup.
#[derive(Debug)]
pub struct Lab {
    pub(crate) tag: String,
    pub(crate) topology: Topology,
    pub(crate) dir: PathBuf,
    pub(crate) client_ns: String,
    pub(crate) router_ns: Option<String>,
    pub(crate) server_ns: String,
    /// Namespaces actually created so far, so a half-built lab is still torn down.
    pub(crate) created_ns: Vec<String>,
    pub(crate) ifaces: Vec<LabIface>,
    pub(crate) procs: Mutex<Vec<SharedChild>>,
    pub(crate) seq: AtomicU32,
    /// The trusted CA (cert, key), made on first use and shared by all `tls_cert` calls so
    /// that one `--cacert` trusts every server of the lab.
    pub(crate) ca: Mutex<Option<(PathBuf, PathBuf)>>,
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

    pub(crate) fn build(&mut self, k: u8) -> Result<()> {
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

    pub(crate) fn add_ns(&mut self, ns: &str, forwarding: bool) -> Result<()> {
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

    pub(crate) fn add_link(&mut self, a: LabIface, b: LabIface) -> Result<()> {
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

    pub(crate) fn check_ns(&self, ns: &str) -> Result<()> {
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

    pub(crate) fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Relative paths are taken inside the lab dir, so tests need not build paths.
    pub(crate) fn lab_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.dir.join(path)
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

pub(crate) fn add_routes(ns: &str, via: &LabIface, to: &LabIface) -> Result<()> {
    let net4 = Ipv4Addr::from(u32::from(to.v4) & 0xffff_ff00);
    let net6 = Ipv6Addr::from(u128::from(to.v6) & !0u128 << 64);
    let (net4, net6) = (format!("{net4}/24"), format!("{net6}/64"));
    let (gw4, gw6) = (via.v4.to_string(), via.v6.to_string());
    host_ok(&["ip", "-n", ns, "route", "add", &net4, "via", &gw4])?;
    host_ok(&["ip", "-n", ns, "-6", "route", "add", &net6, "via", &gw6])?;
    Ok(())
}
