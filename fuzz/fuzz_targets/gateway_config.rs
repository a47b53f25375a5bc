//! Fuzz target: [`switchyard::fuzzing::gateway_config`] over arbitrary bytes; a violated invariant panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = switchyard::fuzzing::gateway_config(data) {
        panic!("{violation}");
    }
});
