//! Shared pieces of the detector's kernel tests: crafted frames for the kernel program, and
//! the program under BPF_PROG_TEST_RUN. The lab of the live tests is crate `detector-lab`
//! (tests/lab).

pub mod frames;
pub mod harness;
