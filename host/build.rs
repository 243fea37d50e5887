//! Embeds libtorch's folder as an rpath so `host` runs without `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        // Resolve the `.libtorch` link so the binary keeps working from another checkout.
        let dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.into());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}/lib", dir.display());
    }
}
