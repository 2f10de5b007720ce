//! Writes classic pcap files of crafted frames, for replay tests, and re-times captures
//! (stretching idle gaps to the field's full length).

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::Path,
    time::Duration,
};

use detector_user::capture::{PcapError, Reader};
use pcap_file::{
    DataLink, Endianness, TsResolution,
    pcap::{PcapHeader, PcapPacket, PcapWriter},
};

/// Most bytes a frame may have: libpcap's largest snapshot length, which the file header
/// declares.
const SNAPLEN: u32 = 262_144;

/// Ethernet frames with their capture times (Unix epoch nanoseconds), as a little-endian
/// nanosecond pcap, through `pcap-file`'s writer: a frame over the snapshot length or a
/// time past 2106 is an error rather than a record the reader would reject or misdate.
pub fn write(path: &Path, packets: &[(u64, Vec<u8>)]) -> io::Result<()> {
    let err = |e: pcap_file::PcapError| io::Error::other(format!("{}: {e}", path.display()));
    let header = PcapHeader {
        snaplen: SNAPLEN,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::NanoSecond,
        endianness: Endianness::Little,
        ..PcapHeader::default()
    };
    let mut w =
        PcapWriter::with_header(BufWriter::new(File::create(path)?), header).map_err(err)?;
    for (ts, frame) in packets {
        let len = u32::try_from(frame.len()).map_err(|_| io::Error::other("frame over 4 GiB"))?;
        w.write_packet(&PcapPacket::new(Duration::from_nanos(*ts), len, frame))
            .map_err(err)?;
    }
    w.into_writer().flush()
}

/// Every packet of a capture (pcap or pcapng, any link type `detector replay` takes), as
/// Ethernet frames with their capture times in Unix epoch nanoseconds: what [`write`]
/// takes back.
pub fn read(path: &Path) -> io::Result<Vec<(u64, Vec<u8>)>> {
    let err = |e: PcapError| io::Error::other(format!("{}: {e}", path.display()));
    let mut reader = Reader::open(path).map_err(err)?;
    let mut packets = Vec::new();
    while let Some(p) = reader.next_packet().map_err(err)? {
        packets.push((p.ts_ns, p.frame));
    }
    Ok(packets)
}

/// Re-times packets: the gap between each packet and the one before becomes `f(gap)`,
/// and every later packet moves by the same amount, so each gap is changed on its own.
/// The first packet keeps its time. Gaps that go backwards (captures merged from several
/// interfaces can do that) count as zero.
pub fn retime(
    packets: &[(u64, Vec<u8>)],
    mut f: impl FnMut(Duration) -> Duration,
) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::with_capacity(packets.len());
    let mut prev: Option<(u64, u64)> = None; // (original, new) time of the previous packet
    for (ts, frame) in packets {
        let new = match prev {
            None => *ts,
            Some((old, new)) => {
                let gap = Duration::from_nanos(ts.saturating_sub(old));
                let stretched = u64::try_from(f(gap).as_nanos()).unwrap_or(u64::MAX);
                new.saturating_add(stretched)
            }
        };
        prev = Some((*ts, new));
        out.push((new, frame.clone()));
    }
    out
}

/// Every gap longer than `above` becomes exactly `to`; shorter ones stay as they were.
/// This is how a live capture of a scaled-down timeout (a 3 s keep-alive) turns into the
/// field's full-length one (120 s) without waiting for it.
pub fn stretch_gaps(
    packets: &[(u64, Vec<u8>)],
    above: Duration,
    to: Duration,
) -> Vec<(u64, Vec<u8>)> {
    retime(packets, |gap| if gap > above { to } else { gap })
}

/// [`read`], [`stretch_gaps`], [`write`]: the capture at `input` with every gap longer than
/// `above` made `to`, written to `output` as an Ethernet nanosecond pcap. Returns how many
/// gaps were stretched.
pub fn stretch_file(
    input: &Path,
    output: &Path,
    above: Duration,
    to: Duration,
) -> io::Result<usize> {
    let packets = read(input)?;
    let stretched = packets
        .windows(2)
        .filter(|w| Duration::from_nanos(w[1].0.saturating_sub(w[0].0)) > above)
        .count();
    write(output, &stretch_gaps(&packets, above, to))?;
    Ok(stretched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("pcapfile-{}-{name}", std::process::id()))
    }

    #[test]
    fn stretch_moves_later_packets_and_keeps_frames() {
        const S: u64 = 1_000_000_000;
        let t0 = 1_700_000_000 * S + 123;
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 60 + usize::from(i)]).collect();
        // Gaps: 0.5 s, 3 s, 1 s, 4.2 s.
        let times = [
            t0,
            t0 + S / 2,
            t0 + 7 * S / 2,
            t0 + 9 * S / 2,
            t0 + 87 * S / 10,
        ];
        let packets: Vec<(u64, Vec<u8>)> = times.iter().copied().zip(frames.clone()).collect();
        let (input, output) = (temp("in.pcap"), temp("out.pcap"));
        write(&input, &packets).unwrap();
        assert_eq!(
            read(&input).unwrap(),
            packets,
            "write then read is lossless"
        );
        let n = stretch_file(
            &input,
            &output,
            Duration::from_secs(2),
            Duration::from_secs(350),
        )
        .unwrap();
        assert_eq!(n, 2);
        let got = read(&output).unwrap();
        let bytes = std::fs::read(&output).unwrap();
        let _ = (std::fs::remove_file(&input), std::fs::remove_file(&output));
        assert_eq!(
            &bytes[20..24],
            &1u32.to_le_bytes(),
            "link type stays Ethernet"
        );
        let want = [
            t0,
            t0 + S / 2,
            t0 + S / 2 + 350 * S,
            t0 + 3 * S / 2 + 350 * S,
            t0 + 3 * S / 2 + 700 * S,
        ];
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), want);
        assert_eq!(got.into_iter().map(|p| p.1).collect::<Vec<_>>(), frames);
        // A gap that runs backwards counts as none.
        let back = retime(&[(10, vec![1]), (5, vec![2]), (8, vec![3])], |g| g * 2);
        assert_eq!(back.iter().map(|p| p.0).collect::<Vec<_>>(), [10, 10, 16]);
    }

    /// The layout the lab's captures have always had, byte for byte: magic a1b23c4d (ns),
    /// version 2.4, zone and accuracy 0, snaplen 262144, Ethernet, all little-endian,
    /// then each record's seconds, nanoseconds, captured and original lengths.
    #[test]
    fn writes_little_endian_nanosecond_ethernet() {
        let path = temp("layout.pcap");
        let frame = vec![0xab; 61];
        write(&path, &[(1_700_000_000_987_654_321, frame.clone())]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let mut want = Vec::new();
        for word in [0xa1b2_3c4d_u32, 0x0004_0002, 0, 0, 262_144, 1] {
            want.extend_from_slice(&word.to_le_bytes());
        }
        for word in [1_700_000_000_u32, 987_654_321, 61, 61] {
            want.extend_from_slice(&word.to_le_bytes());
        }
        want.extend_from_slice(&frame);
        assert_eq!(bytes, want);
    }
}
