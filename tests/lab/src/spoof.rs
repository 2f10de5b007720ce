//! A spoofed-segment flooder: one-byte TCP segments (ACK|PSH, random sequence numbers) from
//! random source addresses of the benchmarking range 198.18.0.0/15 (RFC 2544) to one
//! server, sent through a raw socket from inside a lab namespace.
//!
//! This is what a scanner or a spoofing host looks like to the detector: traffic from one
//! side only, to flows it never saw start. The detector must neither diagnose these flows
//! nor let them push real flows out of its table (issue 8).
//!
//! Bounded twice: by a count (at most [`MAX_SEGMENTS`]) and by time (the segments are
//! paced over the flood's duration, and sending stops at the duration plus a grace
//! whatever is left). The segments never leave the lab: the sending namespace routes only
//! to lab subnets, and [`route_answers_into_lab`] sends the server's answers (RSTs) back to
//! the client namespace, which drops them (it owns no 198.18/15 address and forwards
//! nothing).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    Lab,
    frames::{ACK, Frame, PSH},
    in_netns,
};

/// The benchmarking range the spoofed sources come from, and its prefix length.
pub const SPOOF_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);
/// Most segments one flood may send.
pub const MAX_SEGMENTS: u32 = 100_000;
/// Sending stops this long after the flood's planned duration, even if segments are left.
const GRACE: Duration = Duration::from_secs(5);

/// What to send.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    /// The server the segments go to.
    pub target: SocketAddrV4,
    /// How many segments (each from its own random source address and port).
    pub count: u32,
    /// Over how long they are spread.
    pub duration: Duration,
}

/// What was sent.
#[derive(Clone, Copy, Debug)]
pub struct FloodReport {
    pub sent: u32,
    pub took: Duration,
}

/// Whether `ip` is one of the flood's spoofed sources.
pub fn is_spoofed(ip: IpAddr) -> bool {
    let IpAddr::V4(v4) = ip else { return false };
    let mask = u32::MAX << (32 - SPOOF_NET.1);
    u32::from(v4) & mask == u32::from(SPOOF_NET.0)
}

/// Sends the flood from namespace `ns`; returns when it is done.
pub fn flood(ns: &str, f: Flood) -> Result<FloodReport> {
    ensure!(
        f.count <= MAX_SEGMENTS,
        "a flood of {} segments is over the bound of {MAX_SEGMENTS}",
        f.count
    );
    let sock = in_netns(ns, raw_socket)?.with_context(|| format!("raw socket in {ns}"))?;
    let started = Instant::now();
    let deadline = started + f.duration + GRACE;
    let pace = f.duration / f.count.max(1);
    let mut rng = XorShift::seeded();
    let mut sent = 0;
    while sent < f.count && Instant::now() < deadline {
        let packet = spoofed_segment(&mut rng, f.target);
        send_to(&sock, &packet, f.target)
            .with_context(|| format!("sending spoofed segment {sent} to {}", f.target))?;
        sent += 1;
        // Paced against the start, so slow sends do not stretch the flood.
        let due = started + pace * sent;
        thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    Ok(FloodReport {
        sent,
        took: started.elapsed(),
    })
}

/// [`flood`] on a thread of its own, for floods that run while real sessions do.
pub fn spawn_flood(ns: &str, f: Flood) -> JoinHandle<Result<FloodReport>> {
    let ns = ns.to_owned();
    thread::spawn(move || flood(&ns, f))
}

/// Routes 198.18.0.0/15 from the server namespace through the router to the client
/// namespace, so the server's answers to spoofed segments (RSTs) cross the router like
/// real answers would, and die in the client namespace instead of leaving the lab.
pub fn route_answers_into_lab(lab: &Lab) -> Result<()> {
    const T: Duration = Duration::from_secs(10);
    let (router, _, rs) = lab.router_parts()?;
    let net = format!("{}/{}", SPOOF_NET.0, SPOOF_NET.1);
    let via_router = lab
        .iface(&rs)
        .context("router's server-side interface")?
        .v4
        .to_string();
    lab.run_ok(
        lab.server_ns(),
        &["ip", "route", "replace", &net, "via", &via_router],
        T,
    )?;
    let via_client = lab.client_v4().to_string();
    lab.run_ok(
        &router,
        &["ip", "route", "replace", &net, "via", &via_client],
        T,
    )?;
    Ok(())
}

/// An IPv4 raw socket that takes whole IP packets (IPPROTO_RAW implies IP_HDRINCL; the
/// kernel fills in the IP checksum and the packet ID).
pub fn raw_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends a whole IP `packet` towards `to`'s address through a [`raw_socket`].
pub fn send_to(sock: &OwnedFd, packet: &[u8], to: SocketAddrV4) -> std::io::Result<()> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid socket, buffer and correctly sized sockaddr_in.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One spoofed segment as an IPv4 packet: random source in [`SPOOF_NET`], random port,
/// sequence and acknowledgement numbers, ACK|PSH, one random payload byte, a correct TCP
/// checksum (the server's stack drops the segment otherwise, and never answers).
fn spoofed_segment(rng: &mut XorShift, to: SocketAddrV4) -> Vec<u8> {
    let host_bits = (1u32 << (32 - SPOOF_NET.1)) - 1;
    let src = Ipv4Addr::from(u32::from(SPOOF_NET.0) | (rng.next() as u32 & host_bits));
    let sport = 1024 + (rng.next() % (65536 - 1024)) as u16;
    let mut f = Frame::tcp(src.into(), sport, (*to.ip()).into(), to.port());
    f.flags = ACK | PSH;
    f.seq = rng.next() as u32;
    f.ack = rng.next() as u32;
    f.payload = vec![rng.next() as u8];
    // The frame builder writes Ethernet + IPv4 (no options) + TCP with a zero checksum.
    let mut packet = f.build().split_off(14);
    let sum = tcp_checksum(src, *to.ip(), &packet[20..]);
    packet[20 + 16..20 + 18].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// The TCP checksum over the IPv4 pseudo-header and `segment` (header with a zero
/// checksum field, and payload).
fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map_or(0, u32::from);
            sum += hi | lo;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, 6]);
    add(&(segment.len() as u16).to_be_bytes());
    add(segment);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// xorshift64, seeded from the clock: a different set of sources every flood, and no
/// dependency for something this simple.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        XorShift(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_spoofed_one_byte_ack_psh_with_a_valid_checksum() {
        let mut rng = XorShift(42);
        let to = SocketAddrV4::new(Ipv4Addr::new(10, 200, 2, 2), 443);
        for _ in 0..100 {
            let p = spoofed_segment(&mut rng, to);
            assert_eq!(p.len(), 20 + 20 + 1);
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            assert!(is_spoofed(src.into()), "{src}");
            assert_eq!(&p[16..20], &to.ip().octets());
            assert_eq!(u16::from_be_bytes([p[22], p[23]]), 443);
            assert_eq!(p[20 + 13], ACK | PSH);
            // Summing a segment with its checksum in place gives zero.
            assert_eq!(tcp_checksum(src, *to.ip(), &p[20..]), 0);
        }
        assert!(!is_spoofed(Ipv4Addr::new(198, 20, 0, 1).into()));
        assert!(is_spoofed(Ipv4Addr::new(198, 19, 255, 254).into()));
    }
}
