//! Memory stays bounded under hostile input, measured by a counting allocator: a request
//! claiming 2^58 rows allocates nothing proportional to the claim, and a 100 MiB download
//! without a Content-Length holds about the cap (1 MiB here), not the stream.
//!
//! The allocator counts per thread, so the measured work runs on the test's own thread (a
//! current-thread runtime for the download, the local server included) and the other tests of
//! this binary do not disturb the figures.
#![allow(clippy::unwrap_used)]
// A counting global allocator is `unsafe impl GlobalAlloc` by definition; it only forwards to
// the system allocator and counts.
#![allow(unsafe_code)]

mod hostile_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use hostile_support::{MIB, Reply, serve};
use policyserve_agent::engine::TensorSpec;
use policyserve_agent::fetch::{FetchOptions, Fetcher, Retry};
use policyserve_agent::grpc::proto::InferTensorContents;
use policyserve_agent::grpc::proto::model_infer_request::InferInputTensor;
use policyserve_agent::grpc::tensor::decode_input;
use policyserve_crds::{ModelSource, UrlModel};

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // try_with: allocations during thread teardown find no thread-local; they do not matter.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the counting
// touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: as the caller promised for `Counting::alloc`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System.alloc` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: as the caller promised for `Counting::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes live at once on this thread while `work` runs, above what was live before.
fn peak_during<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let result = work();
    let peak = PEAK.with(Cell::get) - base;
    (result, usize::try_from(peak).unwrap_or(0))
}

#[test]
fn a_request_claiming_2_to_the_58_rows_allocates_nothing_for_them() {
    let spec = TensorSpec {
        name: "obs".into(),
        row_shape: vec![64],
    };
    let claim = 1i64 << 58;
    for (max_rows, raw) in [
        (usize::MAX, None),
        (usize::MAX, Some(vec![0u8; 256])),
        (32, None),
        (32, Some(vec![0u8; 256])),
    ] {
        let mut tensor = InferInputTensor {
            name: "obs".into(),
            datatype: "FP32".into(),
            shape: vec![claim, 64],
            contents: raw.is_none().then(InferTensorContents::default),
            ..Default::default()
        };
        let (result, peak) =
            peak_during(|| decode_input(&mut tensor, raw.as_deref(), &spec, max_rows));
        assert!(result.is_err());
        println!("claim 2^58 rows, max_rows {max_rows}: {peak} bytes at peak");
        // The error message is the only allocation: far below one row of 64 floats per claim.
        assert!(
            peak < 16 * 1024,
            "max_rows {max_rows}: {peak} bytes allocated"
        );
    }
}

#[test]
fn a_chunked_download_of_100_mib_holds_about_the_cap() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (error, peak) = peak_during(|| {
        runtime.block_on(async {
            let server = serve(|_, _| Reply::Chunked { total: 100 * MIB }).await;
            let config = kube::Config::new(server.url("").parse().unwrap());
            let client = kube::Client::try_from(config).unwrap();
            let cache = tempfile::tempdir().unwrap();
            let options = FetchOptions {
                max_model_bytes: MIB,
                read_timeout: Duration::from_secs(10),
                retry: Retry::NEVER,
                ..FetchOptions::default()
            };
            let fetcher = Fetcher::with_options(client, cache.path().to_owned(), options).unwrap();
            let source = ModelSource {
                url: Some(UrlModel {
                    uri: server.url("/m.onnx"),
                    sha256: "0".repeat(64),
                }),
                ..Default::default()
            };
            fetcher.fetch("robots", &source).await.unwrap_err()
        })
    });
    assert!(
        error.to_string().contains("passed 1048576 bytes"),
        "{error}"
    );
    println!("100 MiB chunked download, 1 MiB cap: {peak} bytes at peak");
    // The body buffer (at most 2 MiB once it doubles past 1 MiB), HTTP buffers and the TLS
    // stack's set-up: some megabytes, against 100 MiB read whole.
    assert!(
        peak < 12 * MIB as usize,
        "{} MiB at peak",
        peak as u64 / MIB
    );
}
