//! QEMU's fw_cfg DMA interface, as a hostile host would use it: a DMA-capable device of the
//! board asked to store a byte at a physical address (`host dma-write` in scenarios). The hyp
//! maps no DMA-capable device for the host (Trust rules 1 and 11), so the host's first touch of
//! the device's registers takes a stage-2 abort, which comes back as a [`HostFault`].
//!
//! The device (QEMU `docs/specs/fw_cfg.rst`, Arm MMIO layout at [`FW_CFG_BASE`]): the data
//! register at +0 (byte reads return the selected item's bytes in order), the selector at +8
//! (16-bit, big-endian), the DMA address register at +16 (64-bit, big-endian: writing the
//! address of a `FWCfgDmaAccess { be32 control, be32 length, be64 address }` in RAM runs the
//! transfer). The store: select the item `opt/dma-bytes` (a 256-byte file holding 0..255, given
//! to QEMU with `-fw_cfg name=opt/dma-bytes,file=...`) and skip `value` bytes in one transfer,
//! then read 1 byte to `pa` in a second: the device writes byte `value` at `pa`, wherever that
//! is, past every stage-2.

use core::mem::offset_of;
use core::ptr::read_volatile;
use core::sync::atomic::{fence, Ordering};

use board::layout::FW_CFG_BASE;
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, WriteOnly};

use crate::exceptions::{probe_read, HostFault};

/// The fw_cfg item whose byte `n` is `n`.
pub const DMA_ITEM: &str = "opt/dma-bytes";

register_structs! {
    /// The device's registers (the selector and the DMA address are big-endian).
    FwCfg {
        (0x00 => data: ReadOnly<u8>),
        (0x01 => _reserved0),
        (0x08 => selector: WriteOnly<u16>),
        (0x0a => _reserved1),
        (0x10 => dma_address: WriteOnly<u64>),
        (0x18 => @END),
    }
}

const DATA: usize = FW_CFG_BASE + offset_of!(FwCfg, data);
const SELECTOR: usize = FW_CFG_BASE + offset_of!(FwCfg, selector);
const DMA_ADDRESS: usize = FW_CFG_BASE + offset_of!(FwCfg, dma_address);

/// The registers, once the first (probed) access showed they can be reached.
fn regs() -> &'static FwCfg {
    // SAFETY: fw_cfg's register block at its fixed address on QEMU `virt` (MMU off: the physical
    // address is the address); only used after `probe_read(DATA)` went through, so it is mapped.
    unsafe { &*(FW_CFG_BASE as *const FwCfg) }
}

const FW_CFG_SIGNATURE: u16 = 0x0000;
const FW_CFG_ID: u16 = 0x0001;
const FW_CFG_FILE_DIR: u16 = 0x0019;
/// `FW_CFG_ID` bit 1: the DMA interface exists.
const ID_DMA: u32 = 1 << 1;

const CTL_ERROR: u32 = 1 << 0;
const CTL_READ: u32 = 1 << 1;
const CTL_SKIP: u32 = 1 << 2;
const CTL_SELECT: u32 = 1 << 3;

/// Bytes of one file directory entry (`be32 size, be16 select, be16 reserved, name[56]`).
const DIR_ENTRY: usize = 64;
/// Where the entry's selector key and name start, and the name's length.
const DIR_KEY: usize = 4;
const DIR_NAME: usize = 8;
const NAME_LEN: usize = 56;
/// Most directory entries read (QEMU has a few dozen).
const MAX_DIR_ENTRIES: u32 = 0x1000;
/// Polls of a DMA descriptor's control word before giving up.
const DMA_SPIN_LIMIT: usize = 1_000_000;
/// What the signature item reads.
const SIGNATURE: [u8; 4] = *b"QEMU";
/// Where the selector key sits in a DMA descriptor's control word.
const CTL_SELECT_SHIFT: u32 = 16;

/// What [`dma_write`] returns when no abort was taken but the device did not behave as fw_cfg
/// with the item (no DMA interface, no `opt/dma-bytes`, a transfer error): `esr` is `u64::MAX`
/// (no exception has that syndrome), `far` the register or descriptor concerned. A caller must
/// not count it as the hyp's abort.
pub const NOT_A_FAULT: u64 = u64::MAX;

fn device_error(far: usize) -> HostFault {
    HostFault {
        esr: NOT_A_FAULT,
        far: far as u64,
    }
}

/// The descriptor of one DMA transfer (every field big-endian in memory).
#[repr(C, align(16))]
struct DmaAccess {
    control: u32,
    length: u32,
    address: u64,
}

fn select(key: u16) {
    regs().selector.set(key.to_be());
}

/// The next byte of the selected item.
fn read_u8() -> u8 {
    regs().data.get()
}

fn read_be32() -> u32 {
    u32::from_be_bytes([read_u8(), read_u8(), read_u8(), read_u8()])
}

fn read_le32() -> u32 {
    u32::from_le_bytes([read_u8(), read_u8(), read_u8(), read_u8()])
}

/// The selector key of the file item `name`, from the file directory.
fn find_item(name: &str) -> Option<u16> {
    select(FW_CFG_FILE_DIR);
    let count = read_be32();
    for _ in 0..count.min(MAX_DIR_ENTRIES) {
        let mut entry = [0u8; DIR_ENTRY];
        for b in entry.iter_mut() {
            *b = read_u8();
        }
        let key = u16::from_be_bytes([entry[DIR_KEY], entry[DIR_KEY + 1]]);
        let raw = &entry[DIR_NAME..DIR_NAME + NAME_LEN];
        let len = raw.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        if &raw[..len] == name.as_bytes() {
            return Some(key);
        }
    }
    None
}

/// Runs one DMA transfer and waits for it: `Ok` when the device cleared `control`.
fn transfer(control: u32, length: u32, address: u64) -> Result<(), HostFault> {
    let mut d = DmaAccess {
        control: control.to_be(),
        length: length.to_be(),
        address: address.to_be(),
    };
    let desc = &mut d as *mut DmaAccess;
    fence(Ordering::SeqCst);
    // The descriptor lives on this stack frame (host RAM, physical address == address, the host
    // runs with its MMU off) until the transfer ends.
    regs().dma_address.set((desc as u64).to_be());
    for _ in 0..DMA_SPIN_LIMIT {
        fence(Ordering::SeqCst);
        // SAFETY: `desc` points at `d`, alive here; the device writes its control field.
        let c = u32::from_be(unsafe { read_volatile(core::ptr::addr_of!((*desc).control)) });
        if c & CTL_ERROR != 0 {
            return Err(device_error(desc as usize));
        }
        if c == 0 {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err(device_error(desc as usize))
}

/// Asks fw_cfg's DMA engine to store `value` at physical address `pa`. `Err` carries the abort
/// the hyp injected when the host touched the device's register (or, with `esr` =
/// [`NOT_A_FAULT`], says the device could not be used).
pub fn dma_write(pa: u64, value: u8) -> Result<(), HostFault> {
    // The first touch of the device: one byte of its data register. The hyp does not map fw_cfg
    // for the host, so on this system this load takes the stage-2 abort, injected at EL1.
    probe_read(DATA)?;
    select(FW_CFG_SIGNATURE);
    if read_be32() != u32::from_be_bytes(SIGNATURE) {
        return Err(device_error(DATA));
    }
    select(FW_CFG_ID);
    if read_le32() & ID_DMA == 0 {
        return Err(device_error(DMA_ADDRESS));
    }
    let key = find_item(DMA_ITEM).ok_or_else(|| device_error(SELECTOR))?;
    transfer(
        (u32::from(key) << CTL_SELECT_SHIFT) | CTL_SELECT | CTL_SKIP,
        u32::from(value),
        0,
    )?;
    transfer(CTL_READ, 1, pa)
}
