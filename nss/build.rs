//! glibc loads NSS modules by their SONAME (`libnss_<name>.so.2`); cargo
//! does not set one for a cdylib, so ldconfig and dlopen need this.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnss_porthole.so.2");
}
