//! Shared pieces of the detector's kernel tests: the program under BPF_PROG_TEST_RUN, and
//! the crafted frames it runs on (kept in crate `detector-lab`, whose spoof flooder sends
//! them too). The lab of the live tests is that crate (tests/lab).

pub use detector_lab::frames;
pub mod harness;
pub mod kernel_fuzz;
pub mod sessions;
