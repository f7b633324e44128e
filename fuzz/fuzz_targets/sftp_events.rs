//! Fuzz target `sftp_events`: the properties live in tests/fuzz_props
//! (shared with the stable corpus replay in tests/fuzz_corpus.rs).
#![no_main]

#[path = "../../tests/fuzz_props/mod.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::check_sftp_events(data);
});
