//! What the `pcap-file` crate (2.0.0) does with the captures our reader's tests build: the
//! evidence for keeping our own reader (see the module documentation of `capture`).
//!
//! Each test asserts the crate's current behaviour where it differs from ours, so a
//! version that changes it fails here and the decision can be revisited.

use std::{
    io::{self, Cursor, ErrorKind, Read},
    time::Duration,
};

use pcap_file::{
    PcapError as CrateError,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};

use super::{
    classic::{PCAP_HEADER_LEN, PCAP_MAGIC_MICRO},
    link::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, LINKTYPE_ETHERNET},
    pcapng::{MAX_INTERFACES, NG_BYTE_ORDER_MAGIC, OPT_IF_TSRESOL},
    reader::{MAX_RECORD_LEN, PcapError},
    test_capture::*,
};

/// (timestamp, data, original length) of every packet the crate's classic reader
/// returns, and the error that stopped it, if any. Stops at the first error because
/// the crate's reader is not fused (see [`errors_repeat_forever`]).
type Crate = (Vec<(Duration, Vec<u8>, u32)>, Option<CrateError>);

fn crate_pcap(bytes: &[u8]) -> Crate {
    let mut r = match PcapReader::new(Cursor::new(bytes)) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut pkts = Vec::new();
    while let Some(p) = r.next_packet() {
        match p {
            Ok(p) => pkts.push((p.timestamp, p.data.into_owned(), p.orig_len)),
            Err(e) => return (pkts, Some(e)),
        }
    }
    (pkts, None)
}

/// The same for pcapng, keeping enhanced and simple packet blocks (simple ones get a
/// zero timestamp: the crate gives them none).
fn crate_pcapng(bytes: &[u8]) -> Crate {
    let mut r = match PcapNgReader::new(Cursor::new(bytes)) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut pkts = Vec::new();
    while let Some(b) = r.next_block() {
        match b {
            Ok(Block::EnhancedPacket(p)) => {
                pkts.push((p.timestamp, p.data.into_owned(), p.original_len))
            }
            Ok(Block::SimplePacket(p)) => {
                pkts.push((Duration::ZERO, p.data.into_owned(), p.original_len))
            }
            Ok(_) => {}
            Err(e) => return (pkts, Some(e)),
        }
    }
    (pkts, None)
}

fn is_eof(e: &Option<CrateError>) -> bool {
    matches!(e, Some(CrateError::IoError(io)) if io.kind() == ErrorKind::UnexpectedEof)
}

fn two_packet_pcap() -> (Vec<u8>, [usize; 2]) {
    let mut w = pcap_header(false, false, LINKTYPE_ETHERNET);
    pcap_record(&mut w, 10, 1, &eth_frame(ETHERTYPE_IPV4, IPV4_STUB), 100);
    let b1 = w.out.len();
    pcap_record(&mut w, 11, 2, &eth_frame(ETHERTYPE_IPV6, IPV6_STUB), 200);
    (w.out.clone(), [b1, w.out.len()])
}

/// Where the crate agrees: well-formed classic files in all four magics.
#[test]
fn agrees_on_well_formed_classic_pcap() {
    let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
    for big in [false, true] {
        for nanos in [false, true] {
            let mut w = pcap_header(big, nanos, LINKTYPE_ETHERNET);
            pcap_record(&mut w, 1_700_000_000, 123_456, &f, 1500);
            let ours = read_ok(&w.out);
            let (theirs, err) = crate_pcap(&w.out);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(theirs.len(), 1);
            assert_eq!(theirs[0].0.as_nanos() as u64, ours[0].ts_ns);
            assert_eq!(theirs[0].1, ours[0].frame);
            assert_eq!(theirs[0].2, ours[0].orig_len);
        }
    }
}

/// Truncation at every offset is an error, never a silent end or a panic, and the
/// complete packets before it come out; but the error is a bare `UnexpectedEof` ("Error
/// reading bytes"), with no offset to report and no word of what was cut.
#[test]
fn truncation_is_an_error_without_an_offset() {
    let (full, boundaries) = two_packet_pcap();
    for cut in 0..=full.len() {
        let (pkts, err) = crate_pcap(&full[..cut]);
        let complete = boundaries.iter().filter(|&&b| b <= cut).count();
        let clean = cut == PCAP_HEADER_LEN || boundaries.contains(&cut);
        assert_eq!(pkts.len(), if cut < PCAP_HEADER_LEN { 0 } else { complete });
        assert_eq!(err.is_none(), clean, "cut at {cut}: {err:?}");
        if !clean {
            assert!(is_eof(&err), "cut at {cut}: {err:?}");
            assert_eq!(err.unwrap().to_string(), "Error reading bytes");
        }
    }
    // Ours says where: "truncated packet record at offset 64".
    let (_, res, _) = read_all(&full[..boundaries[0] + 3]);
    assert_eq!(
        res.unwrap_err().offset(),
        Some(boundaries[0] as u64),
        "ours names the record's offset"
    );
}

/// The same for pcapng in both byte orders: an error at every cut inside a block, none
/// at block boundaries, and never an offset.
#[test]
fn pcapng_truncation_is_an_error_without_an_offset() {
    for big in [false, true] {
        let mut w = W::new(big);
        ng_shb(&mut w);
        let shb = w.out.len();
        ng_idb(&mut w, LINKTYPE_ETHERNET as u16, 0, &[]);
        let idb = w.out.len();
        ng_epb(&mut w, 0, 5, &eth_frame(ETHERTYPE_IPV4, IPV4_STUB), 100);
        let b1 = w.out.len();
        ng_epb(&mut w, 0, 6, &eth_frame(ETHERTYPE_IPV6, IPV6_STUB), 200);
        let b2 = w.out.len();
        for cut in 0..=b2 {
            let (pkts, err) = crate_pcapng(&w.out[..cut]);
            let clean = [shb, idb, b1, b2].contains(&cut);
            assert_eq!(pkts.len(), [b1, b2].iter().filter(|&&b| b <= cut).count());
            assert_eq!(err.is_none(), clean, "big={big} cut at {cut}: {err:?}");
            if !clean {
                assert!(is_eof(&err), "big={big} cut at {cut}: {err:?}");
            }
        }
    }
}

/// `tcpdump -s 96` writes records whose original length exceeds the file's snapshot
/// length: the crate's `next_packet` rejects every such record as invalid.
#[test]
fn short_snaplen_captures_are_rejected() {
    let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
    let mut w = W::new(false);
    w.u32(PCAP_MAGIC_MICRO).u16(2).u16(4).u32(0).u32(0);
    w.u32(f.len() as u32).u32(LINKTYPE_ETHERNET);
    pcap_record(&mut w, 1, 0, &f, 1500);
    let (pkts, err) = crate_pcap(&w.out);
    assert!(pkts.is_empty());
    assert!(
        matches!(err, Some(CrateError::InvalidField(m)) if m.contains("orig_len > snap_len")),
        "{err:?}"
    );
    let ours = read_ok(&w.out);
    assert_eq!((ours[0].frame.len(), ours[0].orig_len), (f.len(), 1500));
}

/// A record claiming more than any snapshot length is, for the crate, a file that ends
/// early (it waits for the bytes, up to its 8 MB buffer): corruption and truncation are
/// indistinguishable. Ours reports a corrupt record at its offset.
#[test]
fn absurd_record_length_reads_as_truncation() {
    let mut w = pcap_header(false, false, LINKTYPE_ETHERNET);
    let second = w.out.len() + 16 + 14 + IPV4_STUB.len();
    pcap_record(&mut w, 1, 0, &eth_frame(ETHERTYPE_IPV4, IPV4_STUB), 100);
    w.u32(2)
        .u32(0)
        .u32(MAX_RECORD_LEN + 1)
        .u32(MAX_RECORD_LEN + 1);
    w.bytes(&[0; 64]);
    let (pkts, err) = crate_pcap(&w.out);
    assert_eq!(pkts.len(), 1);
    assert!(is_eof(&err), "{err:?}");
    let (_, res, _) = read_all(&w.out);
    assert!(matches!(res, Err(PcapError::Corrupt { offset, .. }) if offset == second as u64));
}

/// pcapng timestamps are handed out as if every interface counted nanoseconds: the
/// default microsecond resolution (what tcpdump and dumpcap write) comes out 1000 times
/// too small, and `if_tsresol` is parsed but never applied.
#[test]
fn pcapng_timestamps_ignore_the_interface_resolution() {
    let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
    let mut w = W::new(false);
    ng_shb(&mut w);
    ng_idb(&mut w, 1, 0, &[]); // microseconds by default
    ng_idb(&mut w, 1, 0, &[(OPT_IF_TSRESOL, &[3])]); // milliseconds
    ng_epb(&mut w, 0, 1_700_000_000_123_456, &f, 60);
    ng_epb(&mut w, 1, 1_700_000_000_123, &f, 60);
    let (pkts, err) = crate_pcapng(&w.out);
    assert!(err.is_none(), "{err:?}");
    let theirs: Vec<u128> = pkts.iter().map(|p| p.0.as_nanos()).collect();
    assert_eq!(theirs, [1_700_000_000_123_456, 1_700_000_000_123]);
    let ours: Vec<u64> = read_ok(&w.out).iter().map(|p| p.ts_ns).collect();
    assert_eq!(ours, [1_700_000_000_123_456_000, 1_700_000_000_123_000_000]);
}

/// A simple packet block's data is the whole block body, padding included, and the
/// interface's snapshot length does not limit it.
#[test]
fn simple_packet_blocks_keep_their_padding() {
    let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
    let mut w = W::new(false);
    ng_shb(&mut w);
    ng_idb(&mut w, 1, 20, &[]);
    ng_spb(&mut w, &f[..10], 10);
    ng_spb(&mut w, &f[..22], f.len() as u32);
    let (pkts, err) = crate_pcapng(&w.out);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        pkts[0].1,
        [&f[..10], &[0, 0]].concat(),
        "two bytes of padding"
    );
    assert_eq!(pkts[1].1.len(), 24, "past the 20-byte snapshot length");
    let ours = read_ok(&w.out);
    assert_eq!((ours[0].frame.len(), ours[1].frame.len()), (10, 20));
}

/// Interface options the crate cannot decode end the whole capture: an `if_name` that is
/// not UTF-8, or an option list with no end-of-options marker (which Wireshark and ours
/// accept). Ours reads only the options it needs.
#[test]
fn undecodable_interface_options_end_the_capture() {
    let f = eth_frame(ETHERTYPE_IPV4, IPV4_STUB);
    let latin1 = {
        let mut w = W::new(false);
        ng_shb(&mut w);
        ng_idb(&mut w, 1, 0, &[(2, b"caf\xe9")]);
        ng_epb(&mut w, 0, 1, &f, 60);
        w.out
    };
    let unterminated = {
        let mut b = W::new(false);
        b.u16(1).u16(0).u32(0).u16(2).u16(4).bytes(b"eth0");
        let mut w = W::new(false);
        ng_shb(&mut w);
        ng_block(&mut w, 1, &b.out);
        ng_epb(&mut w, 0, 1, &f, 60);
        w.out
    };
    let (pkts, err) = crate_pcapng(&latin1);
    assert!(pkts.is_empty());
    assert!(matches!(err, Some(CrateError::Utf8Error(_))), "{err:?}");
    let (pkts, err) = crate_pcapng(&unterminated);
    assert!(pkts.is_empty());
    assert!(
        matches!(err, Some(CrateError::InvalidField("Invalid option"))),
        "{err:?}"
    );
    assert_eq!(read_ok(&latin1).len(), 1);
    assert_eq!(read_ok(&unterminated).len(), 1);
}

/// The crate takes any number of interfaces in a section; ours stops at
/// [`MAX_INTERFACES`].
#[test]
fn interface_list_is_unbounded() {
    let mut w = W::new(false);
    ng_shb(&mut w);
    for _ in 0..=MAX_INTERFACES {
        ng_idb(&mut w, 1, 0, &[]);
    }
    let mut r = PcapNgReader::new(Cursor::new(&w.out)).unwrap();
    while let Some(b) = r.next_block() {
        b.unwrap();
    }
    assert_eq!(r.interfaces().len(), MAX_INTERFACES + 1);
    let (_, res, _) = read_all(&w.out);
    assert!(matches!(res, Err(PcapError::Corrupt { .. })), "{res:?}");
}

/// A section of an unknown major version is read as if it were 1.x.
#[test]
fn unknown_pcapng_version_is_accepted() {
    let mut w = W::new(false);
    let mut b = W::new(false);
    b.u32(NG_BYTE_ORDER_MAGIC).u16(2).u16(0).u64(0);
    ng_block(&mut w, 0x0a0d_0d0a, &b.out);
    let r = PcapNgReader::new(Cursor::new(&w.out)).unwrap();
    assert_eq!(r.section().major_version, 2);
    let (_, res, _) = read_all(&w.out);
    assert!(
        matches!(res, Err(PcapError::Corrupt { offset: 0, .. })),
        "{res:?}"
    );
}

/// A read interrupted by a signal (`ErrorKind::Interrupted`, which `Read` callers are
/// meant to retry) ends the crate's reading with an error.
#[test]
fn interrupted_reads_are_errors() {
    #[derive(Debug)]
    struct InterruptFirst<'a> {
        data: &'a [u8],
        interrupted: bool,
    }
    impl Read for InterruptFirst<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !self.interrupted {
                self.interrupted = true;
                return Err(ErrorKind::Interrupted.into());
            }
            self.data.read(buf)
        }
    }
    let (full, _) = two_packet_pcap();
    let err = PcapReader::new(InterruptFirst {
        data: &full,
        interrupted: false,
    })
    .unwrap_err();
    assert!(
        matches!(&err, CrateError::IoError(e) if e.kind() == ErrorKind::Interrupted),
        "{err:?}"
    );
    let mut ours = super::Reader::new(InterruptFirst {
        data: &full,
        interrupted: false,
    })
    .unwrap();
    assert!(ours.next_packet().unwrap().is_some());
}

/// After an error the crate's reader stays where it was and returns the same error on
/// every call, so a loop that skips errors never ends; ours is fused.
#[test]
fn errors_repeat_forever() {
    let (full, [b1, _]) = two_packet_pcap();
    let cut = &full[..b1 + 3];
    let mut r = PcapReader::new(Cursor::new(cut)).unwrap();
    assert!(r.next_packet().unwrap().is_ok());
    for _ in 0..3 {
        assert!(matches!(r.next_packet(), Some(Err(CrateError::IoError(_)))));
    }
    let mut ours = super::Reader::new(Cursor::new(cut)).unwrap();
    assert!(ours.next_packet().unwrap().is_some());
    assert!(ours.next_packet().is_err());
    assert!(ours.next_packet().unwrap().is_none());
}
