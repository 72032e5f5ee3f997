//! End to end: automated cleaning (recording 03's flow) by the real agent on a loop device.
//! Needs root and loop devices: FAILS under `CI` when they are missing, skips loudly elsewhere.

use std::time::Duration;

use ferric_tests::conductor::{CleanPlan, Conductor, Plan};
use ferric_tests::e2e::{first_difference, report, spawn_agent_for_ironic};
use ferric_tests::fake_ironic::{FakeIronic, FakeIronicConfig};
use ferric_tests::loopdev::LoopDevice;

#[test]
fn automated_cleaning_erases_metadata_then_the_disk_and_ends_available() {
    let Some(dev) = LoopDevice::create_or_skip(
        "e2e_clean::automated_cleaning_erases_metadata_then_the_disk_and_ends_available",
        32 << 20,
    ) else {
        return;
    };
    dev.fill(0xaa).expect("pre-fill loop device");
    let ironic = FakeIronic::start(FakeIronicConfig::default()).expect("fake Ironic");
    let conductor = Conductor::start(&ironic, Plan::Clean(CleanPlan::default()));
    let agent = spawn_agent_for_ironic(&ironic, dev.path(), "", &[]);
    let rep = || report(Some(&agent), Some(&ironic), Some(&conductor), None);
    let st = conductor
        .wait_until_settled(Duration::from_secs(55))
        .unwrap_or_else(|st| panic!("cleaning did not finish (phase {:?}){}", st.phase, rep()));
    assert_eq!(st.provision_state, "available", "{}", rep());
    let steps: Vec<String> = st
        .sent("clean.execute_clean_step")
        .iter()
        .map(|c| {
            c.params["step"]["step"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        steps,
        ["erase_devices_metadata", "erase_devices"],
        "{}",
        rep()
    );
    // agent_erase_devices_zeroize=true (recording 03): the last pass writes zeros.
    let disk = std::fs::read(dev.backing_file()).unwrap();
    if let Some(d) = first_difference(&disk, &vec![0u8; disk.len()]) {
        panic!("disk not zeroed by erase_devices: {d}{}", rep());
    }
    drop(agent);
}
