//! The MMIO command device through which the host drives the step-interpreter guest, the way a
//! VMM talks to a guest through a virtual device. It sits at [`crate::guest::CMD_DEVICE_IPA`],
//! outside every memslot, so each access is an MMIO exit to the host.
//!
//! The guest loads `CMD` (the host answers with the next command), loads the arguments it needs,
//! runs the step, stores results and finally stores `STATUS`, which ends the step.

/// Register offsets.
pub const REG_CMD: u64 = 0x00;
pub const REG_ARG0: u64 = 0x08;
pub const REG_ARG1: u64 = 0x10;
pub const REG_ARG2: u64 = 0x18;
pub const REG_ARG3: u64 = 0x20;
pub const REG_RESULT0: u64 = 0x40;
pub const REG_RESULT1: u64 = 0x48;
pub const REG_STATUS: u64 = 0x50;

/// Commands (value of `CMD`).
pub const OP_READ: u64 = 1; // ARG0 = IPA -> RESULT0 = byte
pub const OP_WRITE: u64 = 2; // ARG0 = IPA, ARG1 = byte
pub const OP_HVC: u64 = 3; // ARG0 = function ID, ARG1..3 = x1..x3 -> RESULT0/1 = x0/x1
pub const OP_TOUCH: u64 = 4; // ARG0 = IPA, ARG1 = count, ARG2 = stride: write 1 byte each
pub const OP_UNDEF: u64 = 5; // execute an undefined instruction (a guest's own exception)
pub const OP_HALT: u64 = 6; // stop: the guest parks
/// A pKVM range call the way a Linux guest makes it: ARG0 = function ID (MEM_SHARE,
/// MEM_UNSHARE, MEM_RELINQUISH), ARG1 = IPA, ARG2 = pages. Calls again from where the hyp
/// stopped until done or refused. RESULT0 = the last x0, RESULT1 = pages done in all.
pub const OP_MEM_RANGE: u64 = 7;
/// Enrolls in the MMIO guard and guards the command device's page in one step (after ENROLL
/// an unguarded device access would abort). RESULT0/1 = x0 of ENROLL / of MAP.
pub const OP_MMIO_GUARD: u64 = 8;
/// Measures one operation with the PMU's instruction counters (the hyp sets counter 0 to EL2
/// instructions, counter 1 to all levels): ARG0 = what (`MEASURE_*`), ARG1..3 = its arguments.
/// RESULT0 = EL2 instructions, RESULT1 = instructions at all levels, between the two reads.
pub const OP_MEASURE: u64 = 9;

/// Nothing between the two reads (the baseline of the reads themselves).
pub const MEASURE_EMPTY: u64 = 0;
/// Exactly [`MEASURE_NOPS_COUNT`] `nop`s (calibration).
pub const MEASURE_NOPS: u64 = 1;
/// A one-byte store at ARG1.
pub const MEASURE_WRITE: u64 = 2;
/// `HVC` with x0 = ARG1, x1 = ARG2, x2 = ARG3.
pub const MEASURE_HVC: u64 = 3;
/// A range call as in [`OP_MEM_RANGE`]: ARG1 = function, ARG2 = IPA, ARG3 = pages.
pub const MEASURE_MEM_RANGE: u64 = 4;
/// A one-byte load at ARG1 (an MMIO round trip when no memslot covers it).
pub const MEASURE_READ: u64 = 5;
/// Number of `nop`s of [`MEASURE_NOPS`].
pub const MEASURE_NOPS_COUNT: u64 = 1000;

/// `STATUS` values.
pub const STATUS_OK: u64 = 0;
/// The access took an abort the host injected (after a memory-fault exit).
pub const STATUS_ABORTED: u64 = 1;
/// The guest took an exception of its own (RESULT0 = ESR_EL1).
pub const STATUS_EXCEPTION: u64 = 2;
/// Unknown command.
pub const STATUS_BAD_COMMAND: u64 = 3;
