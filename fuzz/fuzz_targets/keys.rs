//! Fuzz target `keys`: the properties live in tests/fuzz_props (shared with
//! the stable corpus replay in tests/fuzz_corpus.rs).
#![no_main]

#[path = "../../tests/fuzz_props/mod.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = props::check_keys(data);
});
