//! Fuzz target: [`switchyard::fuzzing::kserve_request`] over arbitrary bytes; a violated invariant panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = switchyard::fuzzing::kserve_request(data) {
        panic!("{violation}");
    }
});
