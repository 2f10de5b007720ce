//! What the running kernel offers the program, probed before anything is loaded or
//! attached: the agent either runs, or says in one line what is missing and which Linux
//! release brings it.

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported},
    util::KernelVersion,
};

/// One thing the program needs, and the mainline release that brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub what: &'static str,
    pub since: &'static str,
}

const RINGBUF: Need = Need {
    what: "BPF ring buffer maps",
    since: "5.8",
};
const LOOP: Need = Need {
    what: "the bpf_loop helper",
    since: "5.17",
};
const XDP_LOAD_BYTES: Need = Need {
    what: "the bpf_xdp_load_bytes helper",
    since: "5.18",
};
const BOOT_NS: Need = Need {
    what: "the bpf_ktime_get_boot_ns helper",
    since: "5.8",
};

/// What was found.
#[derive(Debug)]
pub struct Features {
    /// Needs the kernel lacks.
    pub missing: Vec<Need>,
    /// TCX links (6.6): the TC egress program attaches as a link that dies with the
    /// agent; without them, as a netlink filter on a `clsact` qdisc.
    pub tcx: bool,
    /// Kernel BTF: not needed by the program (it uses no CO-RE), reported for diagnosis.
    pub btf: bool,
}

impl Features {
    pub fn probe() -> Features {
        let mut missing = Vec::new();
        let mut need = |ok: Result<bool, String>, n: Need| match ok {
            Ok(true) => {}
            Ok(false) => missing.push(n),
            // A probe that could not run proves nothing: loading will say.
            Err(e) => log::debug!("probing {}: {e}", n.what),
        };
        need(
            is_map_supported(MapType::RingBuf).map_err(|e| e.to_string()),
            RINGBUF,
        );
        for (helper, n) in [
            (BpfHelper::BPF_FUNC_loop, LOOP),
            (BpfHelper::BPF_FUNC_xdp_load_bytes, XDP_LOAD_BYTES),
            (BpfHelper::BPF_FUNC_ktime_get_boot_ns, BOOT_NS),
        ] {
            need(
                is_helper_supported(ProgramType::Xdp, helper).map_err(|e| e.to_string()),
                n,
            );
        }
        Features {
            missing,
            // aya's own test when it chooses how to attach.
            tcx: KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)),
            btf: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        }
    }

    /// Fails, in one line, when anything needed is missing.
    pub fn check(&self, kernel: &str) -> anyhow::Result<()> {
        if self.missing.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = self
            .missing
            .iter()
            .map(|n| format!("{} (Linux {})", n.what, n.since))
            .collect();
        let newest = self
            .missing
            .iter()
            .map(|n| n.since)
            .max_by_key(|v| version_key(v))
            .expect("not empty");
        anyhow::bail!(
            "kernel {kernel} lacks {}: the detector needs Linux {newest} or newer",
            list.join(", ")
        )
    }

    /// One line for the log: how the program will attach and what else was found.
    pub fn describe(&self) -> String {
        format!(
            "TC egress through {}; kernel BTF {}",
            if self.tcx {
                "a TCX link"
            } else {
                "a netlink filter on a clsact qdisc (no TCX before Linux 6.6)"
            },
            if self.btf { "present" } else { "absent" }
        )
    }
}

fn version_key(v: &str) -> Vec<u32> {
    v.split('.').filter_map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_features_are_one_line_with_the_release_that_brings_them() {
        let f = Features {
            missing: vec![LOOP, XDP_LOAD_BYTES],
            tcx: false,
            btf: true,
        };
        let e = format!("{:#}", f.check("5.15.0").unwrap_err());
        assert_eq!(
            e,
            "kernel 5.15.0 lacks the bpf_loop helper (Linux 5.17), the bpf_xdp_load_bytes \
             helper (Linux 5.18): the detector needs Linux 5.18 or newer"
        );
        assert!(!e.contains('\n'));
        let f = Features {
            missing: vec![],
            tcx: true,
            btf: false,
        };
        f.check("6.18.0").unwrap();
        assert_eq!(
            f.describe(),
            "TC egress through a TCX link; kernel BTF absent"
        );
        // 5.8 sorts below 5.17.
        let f = Features {
            missing: vec![LOOP, RINGBUF],
            tcx: false,
            btf: false,
        };
        assert!(format!("{}", f.check("5.4").unwrap_err()).ends_with("Linux 5.17 or newer"));
    }
}
