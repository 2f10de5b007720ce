//! What runs inside the VM: the steps (test binaries and filters), the script that sets up
//! the guest and runs them, and reading back what they left in the shared directory.

use std::{fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::Context as _;

use super::{Accel, Binaries, kernel::Kernel};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// What CI runs: the kernel-program tests of the main binaries and one live scenario
    /// per attach path.
    Quick,
    /// Every kernel-program test binary and the live scenarios that run in the lab's
    /// namespaces.
    Full,
    /// Only the programs' sizes and the verifier's work on each kernel: a minute's check
    /// after a change to the kernel program, which older verifiers may check many times
    /// over (their limit is a million instructions).
    Size,
}

/// One test binary run, with the arguments that choose its tests.
pub struct Step {
    pub name: &'static str,
    pub target: &'static str,
    pub args: &'static [&'static str],
    pub timeout: Duration,
}

const fn step(
    name: &'static str,
    target: &'static str,
    args: &'static [&'static str],
    secs: u64,
) -> Step {
    Step {
        name,
        target,
        args,
        timeout: Duration::from_secs(secs),
    }
}

/// XDP (generic, the lab's veth pairs) on the router, where both directions are ingress.
const LIVE_XDP: Step = step(
    "live_xdp_router",
    "live",
    &["--exact", "router_sees_both_directions_as_ingress"],
    300,
);
/// XDP ingress and the TC egress classifier on the server's interface.
const LIVE_TC: Step = step(
    "live_tc_egress",
    "live",
    &["--exact", "server_host_sees_its_replies_through_tc_egress"],
    300,
);

/// The egress attachment's clean-up: netlink filter and clsact qdisc before 6.6.
const LIVE_TC_CLEANUP: Step = step(
    "live_tc_cleanup",
    "live",
    &["--exact", "egress_attachment_leaves_nothing_behind"],
    300,
);

/// The kernel-program tests; their output goes to the log, where `program_size_as_loaded`
/// gives each program's size and the verifier's work on this kernel (shown on the console).
const KERNEL: Step = step("kernel", "kernel", &["--nocapture"], 600);

const QUICK: &[Step] = &[KERNEL, LIVE_XDP, LIVE_TC, LIVE_TC_CLEANUP];

const FULL: &[Step] = &[
    KERNEL,
    step("kernel_tls", "kernel_tls", &[], 600),
    step("kernel_tls_sync", "kernel_tls_sync", &[], 600),
    step("kernel_forgery", "kernel_forgery", &[], 600),
    step("kernel_idle", "kernel_idle", &[], 600),
    step("kernel_ring", "kernel_ring", &[], 600),
    step("kernel_fuzz", "kernel_fuzz", &[], 1200),
    step("live", "live", &["--test-threads=1"], 1200),
    step("live_tls", "live_tls", &["--test-threads=1"], 900),
    step("live_forgery", "live_forgery", &["--test-threads=1"], 900),
];

const SIZE: &[Step] = &[step(
    "kernel",
    "kernel",
    &["--exact", "program_size_as_loaded", "--nocapture"],
    600,
)];

pub fn steps(suite: Suite) -> &'static [Step] {
    match suite {
        Suite::Quick => QUICK,
        Suite::Full => FULL,
        Suite::Size => SIZE,
    }
}

/// The test targets `suite` runs.
pub fn targets(suite: Suite) -> Vec<&'static str> {
    let mut t: Vec<&str> = steps(suite).iter().map(|s| s.target).collect();
    t.sort();
    t.dedup();
    t
}

/// The guest's script: mounts what the host's init would have, makes the kernel's own
/// modules loadable (the kernel asks `/sbin/modprobe`, busybox's here, for veth, clsact
/// and the rest), runs each step with its output in `out/NAME.log`, records `NAME rc ms`
/// in `out/results`, and powers off. Under emulation (TCG) it tells the lab so
/// (`DETECTOR_LAB_EMULATED`): the kernel verifies the agent's programs many times slower
/// there, and the lab gives the agent longer to attach.
pub fn script(k: &Kernel, accel: Accel, steps: &[Step], out: &Path, bins: &Binaries) -> String {
    let mut s = String::new();
    let o = out.display();
    let tests_dir = crate::workspace_root().join("tests");
    let _ = write!(
        s,
        r#"#!/bin/bash
# Written by `cargo xtask vmtest`; runs as PID 1 of the test VM.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root RUST_BACKTRACE=1 DETECTOR_BIN={detector}
{emulated}out={o}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mkdir -p /lib/modules/{release}
mount --bind {modules} /lib/modules/{release}
ln -sf "$(command -v busybox)" /sbin/modprobe
echo /sbin/modprobe > /proc/sys/kernel/modprobe
# Loaded up front: on first use the kernel would load them while an agent attaches, and
# under emulation that can outlast the lab's wait for the agent.
modprobe -a veth sch_ingress cls_bpf || echo "vmtest: could not load veth, sch_ingress, cls_bpf"
ip link set lo up
hostname vmtest
echo "vmtest: kernel $(uname -r), $(nproc) CPUs"
for f in /sys/kernel/btf/vmlinux; do [ -e $f ] && echo "vmtest: BTF present"; done
cd {tests_dir}
: > "$out/results"
step() {{
    local name=$1 limit=$2; shift 2
    echo "vmtest: $name ..."
    local start=$(date +%s%N)
    timeout -k 10 "$limit" "$@" > "$out/$name.log" 2>&1 < /dev/null
    local rc=$?
    local ms=$(( ($(date +%s%N) - start) / 1000000 ))
    echo "$name $rc $ms" >> "$out/results"
    grep -E '^test result:|instructions as loaded' "$out/$name.log" | sed "s/^/vmtest: $name: /"
    echo "vmtest: $name exit $rc after $((ms / 1000)) s"
}}
"#,
        detector = bins.detector.display(),
        emulated = if accel == Accel::Tcg {
            "export DETECTOR_LAB_EMULATED=1\n"
        } else {
            ""
        },
        release = k.release,
        modules = k.modules.display(),
        tests_dir = tests_dir.display(),
    );
    for st in steps {
        let exe = bins
            .tests
            .iter()
            .find(|(n, _)| n == st.target)
            .map(|(_, p)| p.display().to_string())
            .unwrap_or_else(|| format!("/nonexistent/test-binary-{}", st.target));
        let _ = writeln!(
            s,
            "step {} {} {} {}",
            st.name,
            st.timeout.as_secs(),
            exe,
            st.args.join(" ")
        );
    }
    let _ = write!(
        s,
        "echo finished > \"$out/finished\"\nsync\necho \"vmtest: done\"\nbusybox poweroff -f\n"
    );
    s
}

pub struct Results {
    pub ok: bool,
    /// One line per step: name, outcome, duration, the test harness's summary.
    pub lines: Vec<String>,
}

/// What the guest recorded; a step without a record (the VM stopped first) fails.
pub fn results(out: &Path, steps: &[Step]) -> Results {
    let recorded = fs::read_to_string(out.join("results")).unwrap_or_default();
    let mut ok = out.join("finished").exists();
    let mut lines = Vec::new();
    for st in steps {
        let rec = recorded.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(st.name)).then(|| {
                let rc: i32 = f.next().and_then(|x| x.parse().ok()).unwrap_or(-1);
                let ms: u64 = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                (rc, ms)
            })
        });
        let summary = summary(&out.join(format!("{}.log", st.name))).unwrap_or_default();
        match rec {
            Some((0, ms)) => lines.push(format!(
                "{:<18} ok     {:>5.0} s  {summary}",
                st.name,
                ms as f64 / 1000.0
            )),
            Some((rc, ms)) => {
                ok = false;
                lines.push(format!(
                    "{:<18} FAILED {:>5.0} s  exit {rc}{}  {summary} (see {})",
                    st.name,
                    ms as f64 / 1000.0,
                    if rc == 124 { " (timed out)" } else { "" },
                    out.join(format!("{}.log", st.name)).display()
                ));
            }
            None => {
                ok = false;
                lines.push(format!("{:<18} did not run", st.name));
            }
        }
    }
    Results { ok, lines }
}

/// The harness's `test result:` lines of a step's log, joined.
fn summary(log: &Path) -> anyhow::Result<String> {
    let text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("test result: "))
        .collect::<Vec<_>>()
        .join("; "))
}
