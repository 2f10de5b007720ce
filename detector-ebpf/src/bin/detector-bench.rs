//! Reference programs for `cargo xtask bench`, measured beside the detector in one run:
//! an XDP program that does nothing, and a minimal flow tracker (parse Ethernet/IPv4/TCP,
//! look the 4-tuple up in an LRU hash, write a timestamp); for `--live`, a TC program that
//! does nothing too. Never loaded by the agent.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{BPF_NOEXIST, TC_ACT_UNSPEC, xdp_action},
        helpers::bpf_ktime_get_boot_ns,
        macros::{classifier, map, xdp},
        maps::LruHashMap,
        programs::{TcContext, XdpContext},
    };

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Key {
        src: u32,
        dst: u32,
        ports: u32,
    }

    #[map]
    static BENCH_FLOWS: LruHashMap<Key, u64> = LruHashMap::with_max_entries(65_536, 0);

    /// The same tracker with a key the size of the detector's (two IPv6-sized addresses,
    /// ports, padding: 40 bytes), to tell hashing cost from the detector's own work.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct WideKey {
        a: [u64; 2],
        b: [u64; 2],
        ports: u32,
        pad: u32,
    }

    #[map]
    static BENCH_FLOWS_WIDE: LruHashMap<WideKey, u64> = LruHashMap::with_max_entries(65_536, 0);

    #[xdp]
    pub fn bench_empty(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// The empty program on TC egress, where the detector's TC program sits.
    #[classifier]
    pub fn bench_empty_tc(_ctx: TcContext) -> i32 {
        TC_ACT_UNSPEC
    }

    /// Source, destination and both ports of an Ethernet/IPv4/TCP frame without options.
    #[inline(always)]
    fn four_tuple(ctx: &XdpContext) -> Option<(u32, u32, u32)> {
        let (start, end) = (ctx.data(), ctx.data_end());
        // Ethernet (14) + IPv4 without options (20) + TCP ports (4).
        if start + 14 + 20 + 4 > end {
            return None;
        }
        // SAFETY: bounds checked above.
        let (ethertype, proto, src, dst, ports) = unsafe {
            (
                core::ptr::read_unaligned((start + 12) as *const u16),
                *((start + 23) as *const u8),
                core::ptr::read_unaligned((start + 26) as *const u32),
                core::ptr::read_unaligned((start + 30) as *const u32),
                core::ptr::read_unaligned((start + 34) as *const u32),
            )
        };
        (ethertype == 0x0008 && proto == 6).then_some((src, dst, ports))
    }

    /// Writes the timestamp into the flow's entry, creating it if needed.
    #[inline(always)]
    fn touch<K>(map: &LruHashMap<K, u64>, key: K) {
        // SAFETY: boot-time clock helper, no preconditions.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        match map.get_ptr_mut(&key) {
            // SAFETY: a live map value.
            Some(ts) => unsafe { *ts = now },
            None => {
                let _ = map.insert(&key, now, BPF_NOEXIST as u64);
            }
        }
    }

    #[xdp]
    pub fn bench_tracker(ctx: XdpContext) -> u32 {
        if let Some((src, dst, ports)) = four_tuple(&ctx) {
            touch(&BENCH_FLOWS, Key { src, dst, ports });
        }
        xdp_action::XDP_PASS
    }

    #[xdp]
    pub fn bench_tracker_wide(ctx: XdpContext) -> u32 {
        if let Some((src, dst, ports)) = four_tuple(&ctx) {
            let key = WideKey {
                a: [0, 0xffff_0000 | (src as u64) << 32],
                b: [0, 0xffff_0000 | (dst as u64) << 32],
                ports,
                pad: 0,
            };
            touch(&BENCH_FLOWS_WIDE, key);
        }
        xdp_action::XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // SAFETY: the verifier rejects any reachable path to here.
        unsafe { core::hint::unreachable_unchecked() }
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
