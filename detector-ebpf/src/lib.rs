// Exists so that detector-user can name this crate as a build dependency (cargo rebuilds
// the agent when it changes); the program itself is the `detector-ebpf` binary.
#![no_std]
