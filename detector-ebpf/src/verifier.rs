//! Values rewritten so that older verifiers can bound them.
//!
//! Before Linux 6.8 the verifier forgets everything about a register after XOR, OR and
//! the other ALU operations whose source operand is not a constant (only ADD, SUB and AND
//! keep bounds), and the compiler derives a flow's sending side from its two role bits
//! with an XOR. Indexing the flow's per-side state with that value is then "math between
//! map_value pointer and register with unbounded min value" on 6.1.

use detector_common::Side;

/// `side` again, as a value the verifier knows is 0 or 1. The compiler knows that already
/// and would delete a plain mask; a volatile read hides the value from it, so the mask is
/// kept and proves the bound.
#[inline(always)]
pub fn side(side: Side) -> Side {
    let v = side as u8;
    // SAFETY: reads a local.
    let v = unsafe { core::ptr::read_volatile(&v) };
    if v & 1 == 0 {
        Side::Client
    } else {
        Side::Server
    }
}
