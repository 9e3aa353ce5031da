//! `embed_migrations!` reads the `migrations` folder while compiling, and cargo does not track
//! that folder by itself: without this, a new migration would not reach the binary until some
//! source file changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
