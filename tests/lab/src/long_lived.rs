//! Long-lived TLS connections that outlive an agent start: a TLS line-echo server and
//! line clients written with Python's `ssl` module, driven over stdin.
//!
//! openssl's s_client cannot be told to connect and then wait silently for minutes while a
//! test starts (or restarts) the agent elsewhere and later resumes the very same
//! connection at a moment of its choosing; these can. The client prints `connected
//! VERSION PORT` once the handshake is done and `got LINE` for each echoed line, so a test
//! waits on its output like it does on openssl's.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{DEFAULT_CN, Lab, LabProcess, TlsFiles, path_str};

/// Bound for a handshake or one echoed line.
const T: Duration = Duration::from_secs(15);

/// `python3 -c SERVER CERT KEY HOST PORT VERSION`: accepts connections and echoes every
/// chunk back prefixed with `echo `, each connection on a thread of its own.
const SERVER: &str = r#"
import socket, ssl, sys, threading
cert, key, host, port, version = sys.argv[1:6]
v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.minimum_version = ctx.maximum_version = v
srv = socket.create_server((host, int(port)))
print("listening", flush=True)
def serve(conn):
    try:
        with ctx.wrap_socket(conn, server_side=True) as s:
            while True:
                data = s.recv(4096)
                if not data:
                    break
                s.sendall(b"echo " + data)
    except Exception as e:
        print("connection ended:", e, flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// `python3 -c CLIENT CA HOST PORT VERSION NAME`: one TLS connection; each stdin line is
/// sent and its echo awaited; stdin EOF closes the connection (close_notify, FIN).
const CLIENT: &str = r#"
import socket, ssl, sys
ca, host, port, version, name = sys.argv[1:6]
v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ctx.maximum_version = v
raw = socket.create_connection((host, int(port)), timeout=30)
s = ctx.wrap_socket(raw, server_hostname=name)
print("connected", s.version(), s.getsockname()[1], flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    s.sendall(line.encode())
    buf = b""
    while not buf.endswith(b"\n"):
        d = s.recv(4096)
        if not d:
            sys.exit("server closed")
        buf += d
    print("got", buf.decode().strip(), flush=True)
s.close()
print("closed", flush=True)
"#;

/// TLS version of a long-lived connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Tls12,
    Tls13,
}

impl Version {
    fn arg(self) -> &'static str {
        match self {
            Version::Tls12 => "1.2",
            Version::Tls13 => "1.3",
        }
    }

    /// What Python's `SSLSocket.version()` says.
    fn name(self) -> &'static str {
        match self {
            Version::Tls12 => "TLSv1.2",
            Version::Tls13 => "TLSv1.3",
        }
    }
}

/// The echo server.
pub struct EchoServer {
    pub process: LabProcess,
    pub addr: SocketAddr,
    pub tls: TlsFiles,
    pub version: Version,
}

impl EchoServer {
    /// Starts the server in the lab's server namespace on `port` of its IPv4 address.
    pub fn start(lab: &Lab, port: u16, version: Version) -> Result<EchoServer> {
        let tls = lab.tls_cert(DEFAULT_CN)?;
        let addr = SocketAddr::new(lab.server_v4().into(), port);
        let process = lab.spawn(
            lab.server_ns(),
            &format!("tls-echo-{port}"),
            &[
                "python3",
                "-c",
                SERVER,
                path_str(&tls.cert)?,
                path_str(&tls.key)?,
                &addr.ip().to_string(),
                &port.to_string(),
                version.arg(),
            ],
        )?;
        process
            .wait_for_output("listening", T)
            .context("the Python TLS echo server did not start")?;
        Ok(EchoServer {
            process,
            addr,
            tls,
            version,
        })
    }
}

/// One connection to an [`EchoServer`] from the lab's client namespace.
pub struct LineClient {
    pub process: LabProcess,
    /// The client's local port (to find the connection with `ss`).
    pub local_port: u16,
    /// Lines echoed so far.
    echoed: usize,
    /// When the last echo arrived: the start of the connection's current quiet spell.
    pub last_answer: Instant,
}

impl LineClient {
    /// Connects (full handshake) and checks the negotiated version.
    pub fn connect(lab: &Lab, server: &EchoServer, name: &str) -> Result<LineClient> {
        let process = lab.spawn_with_stdin(
            lab.client_ns(),
            name,
            &[
                "python3",
                "-c",
                CLIENT,
                path_str(&server.tls.ca_cert)?,
                &server.addr.ip().to_string(),
                &server.addr.port().to_string(),
                server.version.arg(),
                DEFAULT_CN,
            ],
        )?;
        process
            .wait_for_output("connected", T)
            .context("the Python TLS client did not connect")?;
        let out = process.stdout();
        let line = out
            .lines()
            .find(|l| l.starts_with("connected "))
            .context("no `connected` line")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        ensure!(
            words.get(1) == Some(&server.version.name()),
            "negotiated {line:?}, wanted {}",
            server.version.name()
        );
        let local_port = words
            .get(2)
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("no local port in {line:?}"))?;
        Ok(LineClient {
            process,
            local_port,
            echoed: 0,
            last_answer: Instant::now(),
        })
    }

    /// Sends `line` (no newline) and waits for its echo.
    pub fn exchange(&mut self, line: &str) -> Result<()> {
        self.send(line)?;
        self.wait_echo(T)
    }

    /// Sends `line` without waiting for the echo (a flow the path will drop).
    pub fn send(&mut self, line: &str) -> Result<()> {
        self.process.write_stdin(format!("{line}\n").as_bytes())
    }

    /// Waits (bounded) for the echo of the last line sent.
    pub fn wait_echo(&mut self, timeout: Duration) -> Result<()> {
        let want = self.echoed + 1;
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.answered();
            if got >= want {
                self.echoed = got;
                self.last_answer = Instant::now();
                return Ok(());
            }
            if Instant::now() > deadline || self.process.try_wait()?.is_some() {
                bail!(
                    "{} echoes of {want} after {timeout:?}; client output:\n{}",
                    got,
                    self.process.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Echoes received so far.
    pub fn answered(&self) -> usize {
        self.process
            .stdout()
            .lines()
            .filter(|l| l.starts_with("got "))
            .count()
    }

    /// Closes the connection cleanly (close_notify, FIN) and waits for the client to exit.
    pub fn close(mut self) -> Result<()> {
        self.process.close_stdin();
        let status = self.process.wait_timeout(T)?;
        ensure!(
            status.success(),
            "the client exited with {status}:\n{}",
            self.process.output()
        );
        Ok(())
    }

    /// Destroys the connection in the client's kernel (`ss -K`: a RST, and no more
    /// retransmissions), for flows the path has dropped; then stops the client.
    pub fn kill(mut self, lab: &Lab) -> Result<()> {
        let port = format!(":{}", self.local_port);
        lab.run_ok(
            lab.client_ns(),
            &["ss", "-tnK", "state", "established", "sport", "=", &port],
            T,
        )?;
        if self.process.wait_timeout(Duration::from_secs(3)).is_err() {
            self.process.stop();
        }
        Ok(())
    }
}

/// Connections opened before the agent started, and their server: what a scenario of
/// [`crate::scenarios::Play::OpenedBefore`] hands from its opening to its resumption.
pub struct LongLived {
    pub server: EchoServer,
    pub clients: Vec<LineClient>,
}

impl LongLived {
    /// A server and `n` clients, each of which has exchanged one line.
    pub fn open(lab: &Lab, port: u16, version: Version, n: usize) -> Result<LongLived> {
        let server = EchoServer::start(lab, port, version)?;
        let mut clients = Vec::new();
        for i in 0..n {
            let mut c = LineClient::connect(lab, &server, &format!("tls-client-{port}-{i}"))?;
            c.exchange(&format!("before the agent {i}"))?;
            clients.push(c);
        }
        Ok(LongLived { server, clients })
    }
}
