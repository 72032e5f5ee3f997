//! Powering off and rebooting. The conductor does not wait for the result of
//! `power_off`/`run_image`; it watches the power state. So: sync, let the HTTP answer go
//! out, then act. Outside the ramdisk the default action is to end the agent's own process,
//! so that no test, demo or mistake ever powers off the machine the agent runs on.

use std::time::Duration;

use nix::sys::reboot::{reboot, RebootMode};

use crate::config::PowerAction;

/// What the conductor asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// standby.power_off
    PowerOff,
    /// standby.run_image
    Reboot,
}

/// The action for an intent. `forced` (--power-action) wins; otherwise the intent decides
/// in the ramdisk, and outside it the agent only ever exits.
pub fn resolve(forced: Option<PowerAction>, in_ramdisk: bool, intent: Intent) -> PowerAction {
    match (forced, in_ramdisk, intent) {
        (Some(a), _, _) => a,
        (None, false, _) => PowerAction::Exit,
        (None, true, Intent::PowerOff) => PowerAction::Poweroff,
        (None, true, Intent::Reboot) => PowerAction::Reboot,
    }
}

/// Sync now, and perform the action a moment later on its own thread.
pub fn schedule(action: PowerAction, intent: Intent) {
    nix::unistd::sync();
    log::info!("disks synced; {action:?} in 1 s ({intent:?} requested)");
    let _ = std::thread::Builder::new()
        .name("power".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            perform(action);
        });
}

fn sysrq(key: &str) {
    let _ = std::fs::write("/proc/sys/kernel/sysrq", "1");
    if let Err(e) = std::fs::write("/proc/sysrq-trigger", key) {
        log::error!("sysrq {key} failed: {e}");
    }
}

/// Do it now. Only returns if every method failed.
pub fn perform(action: PowerAction) {
    log::logger().flush();
    match action {
        PowerAction::Exit => {
            log::info!("power action is 'exit': the agent process ends here");
            log::logger().flush();
            std::process::exit(0);
        }
        PowerAction::Poweroff => {
            nix::unistd::sync();
            let Err(e) = reboot(RebootMode::RB_POWER_OFF);
            log::error!("reboot(RB_POWER_OFF) failed: {e}; trying sysrq");
            sysrq("o");
        }
        PowerAction::Reboot => {
            nix::unistd::sync();
            let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
            log::error!("reboot(RB_AUTOBOOT) failed: {e}; trying sysrq");
            sysrq("b");
        }
    }
    std::thread::sleep(Duration::from_secs(30));
    log::error!("the machine is still up after {action:?}");
}

/// `system.lockdown` in the ramdisk (IPA `_lockdown_system`): every network interface but
/// loopback goes down, so nothing reaches the agent or the machine through the ramdisk any
/// more. Only called in the ramdisk.
pub fn lock_down_network(sys_root: &std::path::Path) {
    let Ok(dir) = std::fs::read_dir(sys_root.join("sys/class/net")) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "lo" {
            continue;
        }
        match std::process::Command::new("ip")
            .args(["link", "set", &name, "down"])
            .status()
        {
            Ok(s) if s.success() => log::info!("lockdown: {name} is down"),
            Ok(s) => log::warn!("lockdown: ip link set {name} down: {s}"),
            Err(e) => log::warn!("lockdown: cannot run ip for {name}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_the_ramdisk_the_default_is_exit() {
        use PowerAction::{Exit, Poweroff, Reboot};
        assert_eq!(resolve(None, false, Intent::PowerOff), Exit);
        assert_eq!(resolve(None, false, Intent::Reboot), Exit);
        assert_eq!(resolve(None, true, Intent::PowerOff), Poweroff);
        assert_eq!(resolve(None, true, Intent::Reboot), Reboot);
        assert_eq!(resolve(Some(Exit), true, Intent::PowerOff), Exit);
        assert_eq!(resolve(Some(Poweroff), false, Intent::Reboot), Poweroff);
    }
}
