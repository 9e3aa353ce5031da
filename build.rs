//! `embed_migrations!` reads the `migrations` folder while compiling, and cargo does not track
//! that folder by itself: without this, a new migration would not reach the binary until some
//! source file changed.
//!
//! The PostgreSQL variants of the tests exist only when `FLOWD_TEST_POSTGRES_URL` is set at
//! build time (cfg `flowd_postgres_tests`): without a server they are not compiled, so the test
//! summary counts only what ran instead of reporting skipped tests as passed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rustc-check-cfg=cfg(flowd_postgres_tests)");
    println!("cargo:rerun-if-env-changed=FLOWD_TEST_POSTGRES_URL");
    if std::env::var_os("FLOWD_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo:rustc-cfg=flowd_postgres_tests");
    }
}
