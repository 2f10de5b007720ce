//! Forged packets on a live session, with the agent attached on the lab's router: a RST
//! outside the window and a SYN-ACK with a new ISN change nothing and are counted; the
//! session's real RST is still diagnosed.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use detector_lab::{
    Lab,
    agent::{LiveAgent, metric},
    frames::{self, ACK, Frame, RST, SYN},
    idle_lab::{connect, listen, set_linger_zero},
    in_netns,
    spoof::{raw_socket, send_to},
};

const T: Duration = Duration::from_secs(15);
/// Longer than the agent's correlation window, so a diagnosis the forged packets caused
/// would have been printed.
const SETTLE: Duration = Duration::from_millis(3000);

/// The next sequence number `s` will send (its SND.NXT once all is acknowledged), read in
/// TCP repair mode, which needs CAP_NET_ADMIN like the rest of the lab.
fn send_seq(s: &TcpStream) -> Result<u32> {
    const TCP_SEND_QUEUE: libc::c_int = 2;
    let fd = s.as_raw_fd();
    let set = |opt: libc::c_int, v: libc::c_int| -> Result<()> {
        // SAFETY: a valid socket and a correctly sized int option.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                opt,
                (&v as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ensure!(
            r == 0,
            "setsockopt {opt}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    };
    set(libc::TCP_REPAIR, 1)?;
    set(libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    let mut seq: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: a valid socket and a u32 with its size for TCP_QUEUE_SEQ.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUEUE_SEQ,
            (&mut seq as *mut u32).cast(),
            &mut len,
        )
    };
    let read = std::io::Error::last_os_error();
    set(libc::TCP_REPAIR, 0)?;
    ensure!(r == 0, "getsockopt TCP_QUEUE_SEQ: {read}");
    Ok(seq)
}

/// Sends `f` as an IP packet through a raw socket in `ns`. Its TCP checksum is left zero:
/// the detector on the router reads it, the endpoints' kernels drop it.
fn send_raw(ns: &str, f: &Frame) -> Result<()> {
    let IpAddr::V4(dst) = f.dst else {
        anyhow::bail!("IPv4 only");
    };
    let packet = f.build()[14..].to_vec();
    in_netns(ns, move || -> Result<()> {
        let sock = raw_socket().context("raw socket")?;
        send_to(&sock, &packet, SocketAddrV4::new(dst, 0)).context("sendto")?;
        Ok(())
    })?
}

#[test]
fn forged_rst_and_synack_on_a_live_session_are_ignored_and_counted() -> Result<()> {
    let lab = Lab::routed()?;
    let (router, rc, rs) = lab.router_parts()?;
    let agent = LiveAgent::start(&lab, &router, &[&rc, &rs], &["--no-egress"])?;
    let (c4, s4) = (lab.client_v4(), lab.server_v4());
    let server: SocketAddr = SocketAddrV4::new(s4, 443).into();

    // A handshake left open: the server reads the ClientHello and answers nothing.
    let listener = listen(lab.server_ns(), server)?;
    let mut client = connect(lab.client_ns(), server)?;
    let (mut accepted, _) = listener.accept().context("accepting")?;
    let hello = frames::client_hello("forged.example");
    client.write_all(&hello)?;
    let mut got = vec![0; hello.len()];
    accepted.read_exact(&mut got)?;
    let cport = client.local_addr()?.port();
    let next = send_seq(&client)?;

    // A RST in the client's name behind where its stream is: bytes the detector saw go
    // by, so taken at its word it would be a handshake reset; outside the server's
    // window, it is a guess.
    let mut rst = Frame::tcp(IpAddr::V4(c4), cport, IpAddr::V4(s4), 443);
    rst.flags = RST;
    rst.seq = next.wrapping_sub(100_000);
    send_raw(lab.client_ns(), &rst)?;
    // A SYN-ACK in the server's name with a new ISN, for no SYN: it would make the server
    // a new connection's server and drop what the flow knows.
    let mut synack = Frame::tcp(IpAddr::V4(s4), 443, IpAddr::V4(c4), cport);
    synack.flags = SYN | ACK;
    synack.seq = 0x1234_5678;
    synack.ack = 0x0bad_cafe;
    send_raw(lab.server_ns(), &synack)?;
    std::thread::sleep(SETTLE);
    let quiet = agent.collect(1, Duration::from_millis(100))?;
    ensure!(quiet.is_empty(), "forged packets diagnosed: {quiet:#?}");

    // The client's own RST (SO_LINGER 0) ends the handshake: diagnosed as ever, so the
    // flow's state survived the forgeries (a restarted flow would not know the hello).
    set_linger_zero(&client)?;
    drop(client);
    let live = agent.wait_for(1, T)?;
    std::thread::sleep(SETTLE);
    let text = agent.metrics(&lab)?;
    let all = agent.stop()?;
    ensure!(all.len() == 1, "{all:#?}");
    let d = &live[0];
    assert_eq!(d["kind"], "handshake_reset", "{d:#}");
    assert_eq!(d["detail"]["ended_by"], "rst", "{d:#}");
    assert_eq!(d["detail"]["sender"], "client", "{d:#}");
    assert_eq!(d["client"], format!("{c4}:{cport}"), "{d:#}");
    assert_eq!(d["server"], server.to_string(), "{d:#}");
    assert_eq!(d["sni"], "forged.example", "{d:#}");
    for (name, want) in [
        ("detector_kernel_ignored_rst_outside_window_total", 1.0),
        ("detector_kernel_ignored_synack_without_syn_total", 1.0),
    ] {
        assert_eq!(metric(&text, name), Some(want), "{name} in\n{text}");
    }
    drop(accepted);
    Ok(())
}
