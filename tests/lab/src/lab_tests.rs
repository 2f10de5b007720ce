//! Tests of the lab itself: topologies, captures, cleanup, sweeping, timeouts.

use std::{
    env,
    ffi::OsStr,
    fs,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    panic::{AssertUnwindSafe, catch_unwind},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{certs::*, netns::*, process::*, servers::*, teardown::*, util::*};

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

/// A fresh lab of `topology`, or `None` (the test then passes with a note) when not root.
fn lab_as_root(topology: Topology) -> Option<Lab> {
    root().then(|| Lab::new(topology).unwrap())
}

/// Pings each server address from the client, if ping is installed (whether it is).
fn ping_servers(lab: &Lab) -> bool {
    let installed = find_in_path("ping").is_some();
    if installed {
        for addr in lab.server_addrs() {
            lab.run_ok(
                lab.client_ns(),
                &["ping", "-c", "1", "-W", "2", &addr.to_string()],
                T,
            )
            .unwrap();
        }
    }
    installed
}

/// The CA file that verifies a TLS nginx's certificate, as a command-line argument.
fn ca_of(nginx: &Nginx) -> String {
    nginx
        .tls
        .as_ref()
        .unwrap()
        .ca_cert
        .to_str()
        .unwrap()
        .to_owned()
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
    let Some(lab) = lab_as_root(Topology::Direct) else {
        return;
    };
    assert_eq!(lab.namespaces().len(), 2);
    assert!(lab.router_ns().is_none() && lab.router_client_if().is_none());
    assert_eq!(lab.iface_ns(lab.client_if()), Some(lab.client_ns()));
    assert_eq!(lab.iface_ns(lab.server_if()), Some(lab.server_ns()));
    assert!(
        lab.interfaces()
            .iter()
            .all(|i| i.name.len() <= IFNAME_MAX && i.name.contains(lab.tag()))
    );
    if !ping_servers(&lab) {
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
    let Some(lab) = lab_as_root(Topology::Routed) else {
        return;
    };
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
    let ca = ca_of(&nginx);
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
    ping_servers(&lab);
    assert_no_default_routes(&lab);
}

#[test]
fn capture_records_packets() {
    let Some(lab) = lab_as_root(Topology::Routed) else {
        return;
    };
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
    let ca = ca_of(&nginx);
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
    let Some(lab) = lab_as_root(Topology::Routed) else {
        return;
    };
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
    let Some(lab) = lab_as_root(Topology::Direct) else {
        return;
    };
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
    let Some(lab) = lab_as_root(Topology::Direct) else {
        return;
    };
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
    let Some(lab) = lab_as_root(Topology::Direct) else {
        return;
    };
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
    let client_args = |connect: &str| {
        [
            "openssl",
            "s_client",
            "-connect",
            connect,
            "-CAfile",
            ca,
            "-verify_return_error",
        ]
        .map(String::from)
    };
    let mut cli = lab
        .spawn_with_stdin(lab.client_ns(), "s_client", &client_args(&connect))
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
    let out = lab.run(lab.client_ns(), &client_args(&connect), T).unwrap();
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
    let Some(lab) = lab_as_root(Topology::Direct) else {
        return;
    };
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
