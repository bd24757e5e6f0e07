//! Conversion benchmark of the shareability range store (issue 3).
//!
//! Stages on a 1 GiB gmem file (262,144 pages): (1) convert all of it to private in one call;
//! (2) convert every other 4 KiB page to shared (131,072 calls: the worst case of the store);
//! (3) convert all of it back to private in one call (back to uniform). Criterion times each
//! stage; the store's memory is measured exactly with a counting global allocator (heap bytes
//! of a clone of the store, which has the same node layout, plus its inline size).
//!
//! The mean of stage (1) is also measured directly with `std::time::Instant` (30 runs, after
//! criterion) and written as a plain integer of nanoseconds to `<workspace>/target/convert_1g_host_ns`
//! (or to the path in `CONVERT_1G_NS_OUT`), for `make bench`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bench_host::{all_to_private, alternate, convert, runs, shared_1g, Setup, GIB};
use criterion::{BatchSize, Criterion};
use hyp_core::{ConvertTo, RangeStore, Shareability};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is `System`'s; the counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, which the caller guarantees is valid.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a block this allocator (i.e. `System`) returned, with its layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's block came from `System`; arguments forwarded unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Exact memory of the shareability store: inline size + heap bytes of an identical clone.
fn store_bytes(s: &Setup) -> usize {
    let Some(store) = s
        .world
        .gmem(s.gmem)
        .ok()
        .and_then(|f| f.shareability_store())
    else {
        return 0;
    };
    let before = LIVE.load(Ordering::Relaxed);
    let copy: RangeStore<Shareability> = store.clone();
    let after = LIVE.load(Ordering::Relaxed);
    drop(copy);
    std::mem::size_of::<RangeStore<Shareability>>() + (after - before).max(0) as usize
}

fn report(stage: &str, s: &Setup, took: Duration) {
    let store = s
        .world
        .gmem(s.gmem)
        .ok()
        .and_then(|f| f.shareability_store());
    println!(
        "stage {stage:<22} time {:>12.3} ms   runs {:>7}   store {:>9} bytes (estimate {} bytes)",
        took.as_secs_f64() * 1e3,
        runs(s),
        store_bytes(s),
        store.map_or(0, |st| st.memory_bytes_estimate()),
    );
}

fn once_and_report() {
    println!("--- one pass, 1 GiB = {} pages ---", GIB / 4096);
    let mut s = shared_1g();
    report("initial (all shared)", &s, Duration::ZERO);
    let t = Instant::now();
    black_box(all_to_private(&mut s));
    report("1 uniform private", &s, t.elapsed());
    let t = Instant::now();
    alternate(&mut s);
    report("2 alternating", &s, t.elapsed());
    let t = Instant::now();
    let inv = black_box(all_to_private(&mut s));
    report("3 back to uniform", &s, t.elapsed());
    println!(
        "    (stage 3 returned {} host_unmap ranges)",
        inv.host_unmap.len()
    );
}

fn write_mean_ns() {
    const RUNS: u32 = 30;
    let mut total = Duration::ZERO;
    for _ in 0..RUNS {
        let mut s = shared_1g();
        let t = Instant::now();
        black_box(all_to_private(&mut s));
        total += t.elapsed();
    }
    let mean = total.as_nanos() / u128::from(RUNS);
    let path = std::env::var("CONVERT_1G_NS_OUT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/convert_1g_host_ns").to_string()
    });
    if let Some(dir) = std::path::Path::new(&path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, format!("{mean}\n")) {
        Ok(()) => println!("convert 1 GiB to private: mean {mean} ns over {RUNS} runs -> {path}"),
        Err(e) => eprintln!("cannot write {path}: {e}"),
    }
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("convert_1g");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("1_all_to_private", |b| {
        b.iter_batched(
            shared_1g,
            |mut s| all_to_private(&mut s),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("2_alternate_every_other_page", |b| {
        b.iter_batched(
            || {
                let mut s = shared_1g();
                all_to_private(&mut s);
                s
            },
            |mut s| {
                alternate(&mut s);
                s
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("3_back_to_uniform", |b| {
        b.iter_batched(
            || {
                let mut s = shared_1g();
                all_to_private(&mut s);
                alternate(&mut s);
                s
            },
            |mut s| {
                let inv = all_to_private(&mut s);
                (s, inv)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("single_page_in_alternating_store", |b| {
        let mut s = shared_1g();
        all_to_private(&mut s);
        alternate(&mut s);
        let off = (GIB / 2) + 4096;
        b.iter(|| {
            convert(&mut s, off, 4096, ConvertTo::Shared);
            convert(&mut s, off, 4096, ConvertTo::Private)
        })
    });
    g.finish();
}

fn main() {
    once_and_report();
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    write_mean_ns();
}
