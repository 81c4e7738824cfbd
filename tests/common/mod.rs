//! Test support shared by every integration test: one fresh backend per test for each backend
//! kind, and instrumented store wrappers.
//!
//! ```ignore
//! mod common;
//! use common::*;
//!
//! async fn blob_put_then_get(b: TestBackend) { /* ... */ }
//! async fn other_test(b: TestBackend) { /* ... */ }
//!
//! // memory::blob_put_then_get, filesystem::blob_put_then_get, s3::..., azure::...
//! backend_tests!(blob_put_then_get, other_test);
//! ```
//!
//! S3 and Azure run only when their servers are configured (see [`backends::make`]); otherwise
//! their tests print `skipped: ...` and pass, except under `CI=true`, where they fail.

// Each test binary compiles this module whole but uses only part of it: unused items,
// re-exports and the macro must not warn there.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod backends;
pub mod counting;
pub mod data;
pub mod faulty;
pub mod faulty_fs;
pub mod images;
pub mod power_cut;
pub mod redis;
pub mod server;
pub mod stores;
pub mod token_issuer;
pub mod webhook;

pub use backends::{BackendKind, TestBackend, make, run_backend_test};
pub use counting::{CountingStore, Counts};
pub use data::{in_pieces, keys, keys_of, pattern, repo};
pub use faulty::FaultyStore;
pub use faulty_fs::FaultyFs;
pub use images::{push_image, push_referrer, put_index, put_manifest, tag};
pub use power_cut::{PowerCut, PowerCutFs};
pub use stores::{
    backend_on, counting_store_on, counting_store_with_cache, faulty_store_on, store_on, store_over,
};

/// For each `async fn name(b: TestBackend)` listed, generates one test per backend kind:
/// `memory::name`, `filesystem::name`, `s3::name` and `azure::name`, each on a two-worker
/// multi-thread runtime (so tests can exercise real concurrency) with a fresh backend.
///
/// The test file must declare this support module as `mod common;` at its crate root, and the
/// listed functions must be in the module where the macro is invoked.
macro_rules! backend_tests {
    ($($test:ident),+ $(,)?) => {
        $crate::common::backend_tests!(@kind memory, Memory, $($test),+);
        $crate::common::backend_tests!(@kind filesystem, Filesystem, $($test),+);
        $crate::common::backend_tests!(@kind s3, S3, $($test),+);
        $crate::common::backend_tests!(@kind azure, Azure, $($test),+);
    };
    (@kind $module:ident, $kind:ident, $($test:ident),+) => {
        mod $module {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    $crate::common::run_backend_test(
                        $crate::common::BackendKind::$kind,
                        super::$test,
                    )
                    .await;
                }
            )+
        }
    };
}
pub(crate) use backend_tests;
