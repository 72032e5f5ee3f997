//! The metadata wipe's plan (`erase_devices_metadata`): GPT (primary and backup, 512 and 4096
//! byte sectors), MBR with its EBR chain, and the signatures probed inside each partition
//! (btrfs mirrors, LUKS2 secondary headers, DDF anchors) are read from a disk the previous
//! tenant wrote, then turned into byte ranges to zero.
//!
//! Checked beyond "no panic": every range lies on the device, the ranges are sorted and
//! disjoint, and the first and last MiB of the device are always in them (the metadata wipe
//! must never skip the ends, whatever the tables say).
//!
//! Input: flag byte (bit 0: 4096-byte logical sectors), the device size as a little-endian
//! u64 (reduced below 2^44, raised to the data length, rounded up to whole sectors), a split
//! byte s, then data: its first len×s/255 bytes are the device's start, the rest its end.
#![no_main]

use ferric_hardware::clean::metadata_wipe_plan;
use libfuzzer_sys::fuzz_target;

const MIB: u64 = 1 << 20;

fuzz_target!(|input: &[u8]| {
    if input.len() < 10 {
        return;
    }
    let lbs: u64 = if input[0] & 1 == 1 { 4096 } else { 512 };
    let claimed = u64::from_le_bytes(input[1..9].try_into().unwrap()) % (1 << 44);
    let data = &input[10..];
    let split = data.len() * usize::from(input[9]) / 255;
    let (head, tail) = data.split_at(split);
    let size = claimed.max(data.len() as u64).div_ceil(lbs) * lbs;
    if size == 0 {
        return;
    }
    let plan = metadata_wipe_plan(head, tail, size, lbs);

    let mut prev_end: Option<u64> = None;
    for &(start, len) in &plan {
        assert!(len > 0, "empty range at {start}: {plan:?}");
        let end = start.checked_add(len).expect("range end overflows");
        assert!(
            end <= size,
            "range {start}+{len} beyond the {size}-byte device"
        );
        if let Some(p) = prev_end {
            assert!(start > p, "ranges not sorted and disjoint: {plan:?}");
        }
        prev_end = Some(end);
    }
    let covers = |a: u64, b: u64| plan.iter().any(|&(s, l)| s <= a && b <= s + l);
    assert!(
        covers(0, MIB.min(size)),
        "the first MiB is not wiped: {:?}",
        &plan[..plan.len().min(4)]
    );
    assert!(
        covers(size.saturating_sub(MIB), size),
        "the last MiB is not wiped: {:?}",
        &plan[plan.len().saturating_sub(4)..]
    );
});
