//! Fuzz target: [`switchyard::fuzzing::typed_keys`] over arbitrary bytes; a violated invariant
//! panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = switchyard::fuzzing::typed_keys(data) {
        panic!("{violation}");
    }
});
