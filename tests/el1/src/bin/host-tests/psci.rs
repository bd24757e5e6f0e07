//! Trust rules 10 and 1 from the host's side: every host SMC traps to the hyp, which relays
//! PSCI and answers everything else NOT_SUPPORTED; a CPU the host turns on starts in the hyp and
//! enters the host at EL1 under the host stage-2; the host stage-2 maps its console and the GIC,
//! and no other device (fw_cfg and its DMA in particular).

use core::sync::atomic::{AtomicU64, Ordering};

use board::layout::{FW_CFG_BASE, GICD_BASE, GICR_BASE, GICR_SIZE_PER_CPU, HYP_BASE, PL011_BASE};
use host_shim::exceptions::probe_read;
use ontarget::{ensure, ensure_eq, register, TestResult};
use smccc::psci::error::{ALREADY_ON, INVALID_ADDRESS, INVALID_PARAMETERS, NOT_SUPPORTED};
use smccc::psci::{
    PSCI_AFFINITY_INFO_32, PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_32, PSCI_CPU_ON_64,
    PSCI_CPU_SUSPEND_64, PSCI_FEATURES, PSCI_MIGRATE_INFO_TYPE, PSCI_SYSTEM_OFF, PSCI_VERSION,
};

const NS: i64 = NOT_SUPPORTED as i64;

/// One SMC from the host: `x0..x3` after it.
fn smc(function: u64, a1: u64, a2: u64, a3: u64) -> [u64; 4] {
    host_shim::hvc::smc(function, [a1, a2, a3])
}

fn psci(function: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    smc(u64::from(function), a1, a2, a3)[0] as i64
}

/// CPUs of the machine the hyp serves: AFFINITY_INFO answers for each, INVALID_PARAMETERS past.
fn cpus_served() -> usize {
    (0..board::layout::MAX_CPUS)
        .take_while(|&c| psci(PSCI_AFFINITY_INFO_64, c as u64, 0, 0) >= 0)
        .count()
}

fn psci_version_is_relayed_and_features_match_the_offer() -> TestResult {
    let v = psci(PSCI_VERSION, 0, 0, 0);
    ensure!(v >= 2, "PSCI_VERSION answered {v:#x}");
    for f in [
        PSCI_VERSION,
        PSCI_FEATURES,
        PSCI_CPU_ON_64,
        PSCI_CPU_OFF,
        PSCI_AFFINITY_INFO_64,
        PSCI_MIGRATE_INFO_TYPE,
        PSCI_SYSTEM_OFF,
    ] {
        let r = psci(PSCI_FEATURES, u64::from(f), 0, 0);
        ensure!(r >= 0, "PSCI_FEATURES({f:#x}) answered {r}");
    }
    for f in [
        PSCI_CPU_SUSPEND_64,
        PSCI_CPU_ON_32,
        0x8000_0000,
        0x8400_00ff,
    ] {
        ensure_eq!(psci(PSCI_FEATURES, u64::from(f), 0, 0), NS);
    }
    ensure_eq!(psci(PSCI_MIGRATE_INFO_TYPE, 0, 0, 0), 2);
    Ok(())
}

fn psci_other_smcs_are_not_supported_and_the_host_goes_on() -> TestResult {
    // SMCCC_VERSION, SMCCC_ARCH_FEATURES, a vendor hyp call, CPU_SUSPEND, the 32-bit CPU_ON,
    // MIGRATE, an SiP call, nonsense; the upper half of x0 does not make a PSCI ID either.
    for f in [
        0x8000_0000u64,
        0x8000_0001,
        0xC600_0003,
        u64::from(PSCI_CPU_SUSPEND_64),
        u64::from(PSCI_CPU_ON_32),
        0xC400_0005,
        0xC200_0000,
        0x1234,
        u64::MAX,
    ] {
        let r = smc(f, 0x11, 0x22, 0x33);
        ensure_eq!(r[0] as i64, NS);
        ensure_eq!(&r[1..], &[0x11, 0x22, 0x33][..]);
    }
    // An SMC with a non-zero immediate is not a PSCI call at all.
    let r0: u64;
    // Raw: `smccc` (and so `hvc::smc`) issues only `SMC #0`.
    // SAFETY: an SMC traps to the hyp (HCR_EL2.TSC), which writes at most x0..x3 of the caller;
    // it answers this one in x0 and leaves the rest.
    unsafe {
        core::arch::asm!("smc #1", inout("x0") u64::from(PSCI_VERSION) => r0, options(nostack));
    }
    ensure_eq!(r0 as i64, NS);
    Ok(())
}

fn psci_cpu_on_refuses_bad_targets_and_entry_points() -> TestResult {
    let entry = psci_stub_entry_pa();
    let ctx = LANDING.addr();
    // CPU 0 runs this test: already on.
    ensure_eq!(psci(PSCI_CPU_ON_64, 0, entry, ctx), i64::from(ALREADY_ON));
    // Not a CPU the hyp is built for, or other affinity levels.
    for target in [
        board::layout::MAX_CPUS as u64,
        0x100,
        0x1_0000,
        1 << 32,
        u64::MAX,
    ] {
        ensure_eq!(
            psci(PSCI_CPU_ON_64, target, entry, ctx),
            i64::from(INVALID_PARAMETERS)
        );
    }
    // Entry points the host could not run: unaligned, below RAM, beyond RAM, in the hyp's own
    // memory (RAM the host does not own: it would only take aborts there).
    let (ram_base, ram_size) = host_shim::vm::ram().map_err(|e| alloc::format!("{e}"))?;
    for bad in [
        entry + 2,
        PL011_BASE as u64,
        ram_base + ram_size,
        !3,
        HYP_BASE as u64,
        HYP_BASE as u64 + 0x1000,
    ] {
        ensure_eq!(
            psci(PSCI_CPU_ON_64, 1, bad, ctx),
            i64::from(INVALID_ADDRESS)
        );
    }
    // A CPU the hyp is built for that the machine lacks (with -smp 2): the firmware says so,
    // and the hyp forgets the request (twice the same answer, never ON_PENDING).
    let absent = cpus_served() as u64;
    if absent < board::layout::MAX_CPUS as u64 {
        for _ in 0..2 {
            ensure_eq!(
                psci(PSCI_CPU_ON_64, absent, entry, ctx),
                i64::from(INVALID_PARAMETERS)
            );
        }
    }
    // AFFINITY_INFO: level 0 only, of a CPU the hyp is built for.
    ensure_eq!(psci(PSCI_AFFINITY_INFO_64, 0, 0, 0), 0);
    ensure_eq!(psci(PSCI_AFFINITY_INFO_32, 0, 0, 0), 0);
    ensure_eq!(
        psci(PSCI_AFFINITY_INFO_64, 0, 1, 0),
        i64::from(INVALID_PARAMETERS)
    );
    ensure_eq!(
        psci(PSCI_AFFINITY_INFO_64, 0x100, 0, 0),
        i64::from(INVALID_PARAMETERS)
    );
    Ok(())
}

/// What the secondary CPU's stub writes (see the assembly below; offsets are hard-wired there).
#[repr(C, align(64))]
struct Landing {
    flag: AtomicU64,
    current_el: AtomicU64,
    mpidr: AtomicU64,
    x0: AtomicU64,
    smc_result: AtomicU64,
    abort_esr: AtomicU64,
    cpu_off_result: AtomicU64,
    runs: AtomicU64,
    /// Set by the test: the stub may turn its CPU off.
    release: AtomicU64,
}

impl Landing {
    fn addr(&'static self) -> u64 {
        self as *const Self as u64
    }

    fn reset(&self) {
        for f in [
            &self.flag,
            &self.current_el,
            &self.mpidr,
            &self.x0,
            &self.smc_result,
            &self.abort_esr,
            &self.cpu_off_result,
            &self.release,
        ] {
            f.store(0, Ordering::SeqCst);
        }
    }
}

static LANDING: Landing = Landing {
    flag: AtomicU64::new(0),
    current_el: AtomicU64::new(0),
    mpidr: AtomicU64::new(0),
    x0: AtomicU64::new(0),
    smc_result: AtomicU64::new(0),
    abort_esr: AtomicU64::new(0),
    cpu_off_result: AtomicU64::new(0),
    runs: AtomicU64::new(0),
    release: AtomicU64::new(0),
};

// The host's code for CPU 1: records where it runs, tries an unknown SMC and a load from the
// hyp's image (its own vectors catch the abort the hyp injects), then waits for the test's
// release and turns itself off.
core::arch::global_asm!(
    r#"
    .section .text.psci_stub, "ax"
    .balign 0x800
psci_stub_vectors:
    .rept 16
    .balign 0x80
    b       psci_stub_fault
    .endr
    .global psci_stub_entry
psci_stub_entry:
    mov     x19, x0
    str     x0, [x19, #24]
    mrs     x1, CurrentEL
    str     x1, [x19, #8]
    mrs     x1, mpidr_el1
    str     x1, [x19, #16]
    adr     x1, psci_stub_vectors
    msr     vbar_el1, x1
    isb
    ldr     x0, =0x8400ff00
    smc     #0
    str     x0, [x19, #32]
    ldr     x2, ={hyp_base}
    ldr     x3, [x2]
    b       psci_stub_done
psci_stub_fault:
    mrs     x1, esr_el1
    str     x1, [x19, #40]
psci_stub_done:
    ldr     x1, [x19, #56]
    add     x1, x1, #1
    str     x1, [x19, #56]
    mov     x1, #1
    dsb     sy
    str     x1, [x19]
    dsb     sy
1:  ldr     x1, [x19, #64]
    cbz     x1, 1b
    ldr     x0, ={cpu_off}
    smc     #0
    str     x0, [x19, #48]
0:  wfe
    b       0b
    .ltorg
"#,
    hyp_base = const HYP_BASE,
    cpu_off = const PSCI_CPU_OFF,
);

fn psci_stub_entry_pa() -> u64 {
    extern "C" {
        fn psci_stub_entry();
    }
    psci_stub_entry as *const () as u64
}

fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..20_000_000u64 {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

fn psci_cpu_on_starts_the_cpu_at_el1_under_the_host_stage2_and_cpu_off_stops_it() -> TestResult {
    let entry = psci_stub_entry_pa();
    let ctx = LANDING.addr();
    for round in 1..=2u64 {
        LANDING.reset();
        ensure_eq!(psci(PSCI_CPU_ON_64, 1, entry, ctx), 0);
        ensure!(
            wait_for(|| LANDING.flag.load(Ordering::SeqCst) == 1),
            "round {round}: CPU 1 never reached the host's entry point"
        );
        ensure_eq!(LANDING.runs.load(Ordering::SeqCst), round);
        // At EL1, on CPU 1, with x0 = the context id the host passed.
        ensure_eq!((LANDING.current_el.load(Ordering::SeqCst) >> 2) & 3, 1);
        ensure_eq!(LANDING.mpidr.load(Ordering::SeqCst) & 0xff, 1);
        ensure_eq!(LANDING.x0.load(Ordering::SeqCst), ctx);
        // Its SMCs trap to the hyp too, and its stage-2 keeps the hyp out.
        ensure_eq!(LANDING.smc_result.load(Ordering::SeqCst) as i64, NS);
        let esr = LANDING.abort_esr.load(Ordering::SeqCst);
        ensure!(
            esr >> 26 == 0x25,
            "CPU 1's load from the hyp's image: ESR {esr:#x}, not a data abort"
        );
        // Running: on, and a second CPU_ON is refused.
        ensure_eq!(psci(PSCI_AFFINITY_INFO_64, 1, 0, 0), 0);
        ensure_eq!(psci(PSCI_CPU_ON_64, 1, entry, ctx), i64::from(ALREADY_ON));
        LANDING.release.store(1, Ordering::SeqCst);
        // It turns itself off; AFFINITY_INFO follows, and only then may it start again.
        ensure!(
            wait_for(|| psci(PSCI_AFFINITY_INFO_64, 1, 0, 0) == 1),
            "round {round}: CPU 1 never went off"
        );
        ensure_eq!(LANDING.cpu_off_result.load(Ordering::SeqCst), 0);
    }
    Ok(())
}

fn dev_host_reaches_its_console_and_the_gic_and_no_other_device() -> TestResult {
    // Mapped: the PL011 (its flag register), the GIC distributor, CPU 0's and CPU 1's
    // redistributors (their SGI_base frames at least: see the next test).
    for pa in [
        PL011_BASE + 0x18,
        GICD_BASE,
        GICR_BASE + 0x1_0000,
        GICR_BASE + GICR_SIZE_PER_CPU + 0x1_0000,
    ] {
        ensure!(
            probe_read(pa).is_ok(),
            "host read of device {pa:#x} aborted"
        );
    }
    // Not mapped: flash, the RTC, fw_cfg (and its DMA register), GPIO, virtio-mmio, the PCIe
    // MMIO window and ECAM, the redistributor frames of CPUs the hyp does not serve, the page
    // after the PL011, the GIC's ITS frame.
    for pa in [
        0x0usize,
        0x0400_0000,
        0x0808_0000,
        GICR_BASE + cpus_served() * GICR_SIZE_PER_CPU,
        PL011_BASE + 0x1000,
        0x0901_0000,
        FW_CFG_BASE,
        FW_CFG_BASE + 16,
        0x0903_0000,
        0x0a00_0000,
        0x1000_0000,
        0x3f00_0000,
    ] {
        match probe_read(pa) {
            Ok(v) => return Err(alloc::format!("host read of {pa:#x} returned {v:#x}")),
            Err(f) => ensure_eq!(f.ec(), 0x25),
        }
    }
    Ok(())
}

fn dev_redistributors_offer_the_host_no_lpi_tables() -> TestResult {
    // Redistributors with LPIs (GICR_TYPER.PLPIS) read and write tables wherever their RD_base
    // frame points them. Either they have none (QEMU's virt-6.1 machine, what the Makefile runs:
    // PLPIS = 0), or the hyp keeps their RD_base frames from the host.
    for cpu in 0..2 {
        let typer = GICR_BASE
            + cpu * GICR_SIZE_PER_CPU
            + core::mem::offset_of!(host_shim::gic::Redistributor, typer);
        if probe_read(typer).is_err() {
            continue;
        }
        // SAFETY: GICR_TYPER of a redistributor frame the host stage-2 maps (just probed); a
        // 32-bit read has no side effect.
        let v = unsafe { core::ptr::read_volatile(typer as *const u32) };
        ensure!(
            v & 1 == 0,
            "CPU {cpu}'s redistributor has LPIs and the host reaches its RD_base"
        );
    }
    Ok(())
}

fn dev_fw_cfg_dma_write_is_stopped_at_the_device_register() -> TestResult {
    let mut page = alloc::vec![0xeeu8; 64];
    let pa = page.as_mut_ptr() as u64;
    let r = host_shim::fwcfg::dma_write(pa, 0x5a);
    match r {
        Err(f) => {
            ensure_eq!(f.ec(), 0x25);
            ensure_eq!(f.far, FW_CFG_BASE as u64);
        }
        Ok(()) => return Err("fw_cfg DMA went through".into()),
    }
    // SAFETY: reading back our own heap buffer, which a DMA might have written.
    let seen = unsafe { core::ptr::read_volatile(page.as_ptr()) };
    ensure_eq!(seen, 0xee);
    Ok(())
}

register!(
    psci_version_is_relayed_and_features_match_the_offer,
    psci_other_smcs_are_not_supported_and_the_host_goes_on,
    psci_cpu_on_refuses_bad_targets_and_entry_points,
    psci_cpu_on_starts_the_cpu_at_el1_under_the_host_stage2_and_cpu_off_stops_it,
    dev_host_reaches_its_console_and_the_gic_and_no_other_device,
    dev_redistributors_offer_the_host_no_lpi_tables,
    dev_fw_cfg_dma_write_is_stopped_at_the_device_register,
);
