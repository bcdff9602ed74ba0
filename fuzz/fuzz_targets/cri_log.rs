//! The CRI log line splitter of crust-shim: whatever a container writes, the
//! records it makes are at most MAX_RECORD_CONTENT long and put back together
//! give exactly what was written.
#![no_main]

#[allow(dead_code)]
#[path = "../../runtime/shim/src/crilog.rs"]
mod crilog;

use crilog::{LineSplitter, MAX_RECORD_CONTENT, Tag};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunking of the rest, as reads would.
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut splitter = LineSplitter::new(false);
    let mut rebuilt = Vec::new();
    let mut emit = |tag: Tag, content: &[u8]| {
        assert!(content.len() <= MAX_RECORD_CONTENT);
        rebuilt.extend_from_slice(content);
        if tag == Tag::Full {
            rebuilt.push(b'\n');
        }
    };
    for chunk in rest.chunks(step) {
        splitter.push(chunk, &mut emit);
    }
    splitter.finish(&mut emit);
    let mut expected = rest.to_vec();
    if !expected.is_empty() && expected.last() != Some(&b'\n') {
        expected.push(b'\n');
    }
    assert_eq!(rebuilt, expected);
});
