//! The hardware-manager registry: step listings (golden, against the
//! recorded conversation with a real conductor), de-duplication across
//! managers, `Incompatible` fall-through, versions, and vendor managers
//! taking over `erase_block_device` (the last two tests use loop devices).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use common::loopdev::{root_facility, Backing, Loop, MIB};
use ferric_hardware::{
    BlockDevice, DeviceFilter, EraseJob, GenericHardwareManager, HardwareManager, HardwareSupport,
    ManagerVersion, Managers, NoManagers, Step, StepCall, StepContext, StepError, StepKind,
};
use serde_json::{json, Value};

/// A configurable fake vendor manager.
struct Vendor {
    name: &'static str,
    support: HardwareSupport,
    steps: Vec<Step>,
    /// Step name -> answer (`None` = Incompatible).
    answers: Vec<(&'static str, Option<Value>)>,
    calls: Mutex<Vec<String>>,
    /// Devices this vendor erases itself (without writing).
    claims: Vec<PathBuf>,
    /// When set, erase_block_device waits until this many calls are in flight.
    rendezvous: Option<usize>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    gate: (Mutex<usize>, Condvar),
}

impl Vendor {
    fn new(name: &'static str, support: HardwareSupport) -> Vendor {
        Vendor {
            name,
            support,
            steps: Vec::new(),
            answers: Vec::new(),
            calls: Mutex::new(Vec::new()),
            claims: Vec::new(),
            rendezvous: None,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            gate: (Mutex::new(0), Condvar::new()),
        }
    }
}

impl HardwareManager for Vendor {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> ManagerVersion {
        ManagerVersion {
            name: self.name.to_lowercase(),
            version: "7".into(),
        }
    }
    fn evaluate_hardware_support(&self, _root: &Path) -> HardwareSupport {
        self.support
    }
    fn get_steps(&self, kind: StepKind, _ctx: &StepContext<'_>) -> Vec<Step> {
        if kind == StepKind::Clean {
            self.steps.clone()
        } else {
            Vec::new()
        }
    }
    fn execute(&self, method: &str, _call: &StepCall<'_>) -> Result<Value, StepError> {
        self.calls.lock().unwrap().push(method.to_string());
        match self.answers.iter().find(|(m, _)| *m == method) {
            Some((_, Some(v))) => Ok(v.clone()),
            _ => Err(StepError::incompatible(format!(
                "{} cannot {method} here",
                self.name
            ))),
        }
    }
    fn erase_block_device(
        &self,
        dev: &BlockDevice,
        _job: &EraseJob,
        _call: &StepCall<'_>,
    ) -> Result<String, StepError> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        let result = if let Some(want) = self.rendezvous {
            // Proves concurrency without timing: returns "together" only if
            // `want` calls were in here at the same time (bounded wait).
            let (lock, cv) = &self.gate;
            let mut arrived = lock.lock().unwrap();
            *arrived += 1;
            cv.notify_all();
            let (arrived, _) = cv
                .wait_timeout_while(arrived, Duration::from_secs(30), |a| *a < want)
                .unwrap();
            Ok(if *arrived >= want {
                "together"
            } else {
                "alone"
            }
            .to_string())
        } else if self.claims.iter().any(|c| c.to_str() == Some(&dev.name)) {
            Ok(format!("{} erased it", self.name))
        } else {
            Err(StepError::incompatible(format!(
                "{} does not know {}",
                self.name, dev.name
            )))
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

fn ctx<'a>(node: &'a Value, ports: &'a Value, devices: &'a [PathBuf]) -> StepContext<'a> {
    StepContext::new(Path::new("/"), node, ports, DeviceFilter::only(devices))
}

/// The three cleaning steps exactly as the recorded IPA stand-in listed them
/// (recordings/03-provide-clean.jsonl, get_clean_steps answer).
fn golden_clean_steps() -> Value {
    json!([
        {"step": "erase_devices", "priority": 10, "interface": "deploy",
         "reboot_requested": false, "abortable": true},
        {"step": "erase_devices_metadata", "priority": 99, "interface": "deploy",
         "reboot_requested": false, "abortable": true},
        {"step": "erase_devices_express", "priority": 0, "interface": "deploy",
         "reboot_requested": false, "abortable": true},
    ])
}

#[test]
fn generic_clean_steps_answer_is_golden() {
    let managers = Managers::generic(Path::new("/"));
    let (node, ports) = (json!({}), json!([]));
    let answer = managers.steps_response(StepKind::Clean, &ctx(&node, &ports, &[]));
    assert_eq!(
        answer,
        json!({
            "clean_steps": {"GenericHardwareManager": golden_clean_steps()},
            "hardware_manager_version": {"generic_hardware_manager": "1.2"},
        })
    );
}

/// The same steps, compared with the recording itself when the shared
/// directory is beside the checkout (it is in CI).
#[test]
fn generic_clean_steps_match_the_recording() {
    let rec = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/recordings/03-provide-clean.jsonl");
    let Ok(text) = std::fs::read_to_string(&rec) else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{} is missing (CI runs with shared/ beside the checkout)",
                rec.display()
            );
        }
        eprintln!("\n*** SKIPPING: {} not found ***\n", rec.display());
        return;
    };
    let answer = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["body"]["name"] == "clean.get_clean_steps")
        .expect("a get_clean_steps exchange in the recording")["response"]["command_result"]
        .clone();
    let recorded = answer["clean_steps"]["GenericHardwareManager"]
        .as_array()
        .unwrap()
        .clone();
    let managers = Managers::generic(Path::new("/"));
    let (node, ports) = (json!({}), json!([]));
    let ours = managers.get_steps(StepKind::Clean, &ctx(&node, &ports, &[]));
    for step in &ours["GenericHardwareManager"] {
        let mine = serde_json::to_value(step).unwrap();
        assert!(recorded.contains(&mine), "{mine} is not in the recording");
    }
    assert_eq!(
        answer["hardware_manager_version"],
        managers.current_versions()
    );
}

#[test]
fn deploy_steps_and_agent_registered_steps() {
    let generic = GenericHardwareManager::new().with_step(
        StepKind::Deploy,
        Step::deploy("write_image", 0, None),
        |call: &StepCall<'_>| Ok(json!({"wrote": call.args["image_info"]["id"]})),
    );
    let managers = Managers::new(Path::new("/"), vec![Box::new(generic)]).unwrap();
    let (node, ports) = (json!({}), json!([]));
    let c = ctx(&node, &ports, &[]);
    let answer = managers.steps_response(StepKind::Deploy, &c);
    assert_eq!(
        answer["deploy_steps"]["GenericHardwareManager"],
        json!([
            {"step": "erase_devices_metadata", "priority": 0, "interface": "deploy", "reboot_requested": false},
            {"step": "write_image", "priority": 0, "interface": "deploy", "reboot_requested": false},
        ])
    );
    assert_eq!(
        managers.steps_response(StepKind::Service, &c)["service_steps"],
        json!({})
    );
    let step = json!({"step": "write_image", "interface": "deploy", "args": {"image_info": {"id": "disk.raw"}}});
    assert_eq!(
        managers.execute_step(&step, &c).unwrap(),
        json!({"wrote": "disk.raw"})
    );
}

#[test]
fn steps_are_deduplicated_by_support_then_priority_then_name() {
    let mut vendor = Vendor::new("AcmeHardwareManager", HardwareSupport::SERVICE_PROVIDER);
    vendor.steps = vec![
        Step::deploy("erase_devices_metadata", 50, Some(true)),
        Step::deploy("acme_firmware", 0, Some(false)),
    ];
    // Two equally supported managers offering the same step.
    let mut high = Vendor::new("Zeta", HardwareSupport::MAINLINE);
    high.steps = vec![
        Step::deploy("tie", 5, None),
        Step::deploy("tie_same", 1, None),
    ];
    let mut low = Vendor::new("Alpha", HardwareSupport::MAINLINE);
    low.steps = vec![
        Step::deploy("tie", 3, None),
        Step::deploy("tie_same", 1, None),
    ];
    let managers = Managers::new(
        Path::new("/"),
        vec![
            Box::new(GenericHardwareManager::new()),
            Box::new(low),
            Box::new(vendor),
            Box::new(high),
        ],
    )
    .unwrap();
    let order: Vec<&str> = managers.iter().map(|(m, _)| m.name()).collect();
    assert_eq!(
        order,
        [
            "AcmeHardwareManager",
            "Alpha",
            "Zeta",
            "GenericHardwareManager"
        ]
    );

    let (node, ports) = (json!({}), json!([]));
    let steps = serde_json::to_value(managers.get_steps(StepKind::Clean, &ctx(&node, &ports, &[])))
        .unwrap();
    let names = |m: &str| -> Vec<String> {
        steps[m]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap().to_string())
            .collect()
    };
    // The vendor's higher support wins erase_devices_metadata, despite priority 50 < 99.
    assert_eq!(
        names("AcmeHardwareManager"),
        ["erase_devices_metadata", "acme_firmware"]
    );
    assert_eq!(steps["AcmeHardwareManager"][0]["priority"], 50);
    assert_eq!(
        names("GenericHardwareManager"),
        ["erase_devices", "erase_devices_express"]
    );
    // Equal support: the higher priority wins; equal priority: the earlier name.
    assert_eq!(names("Zeta"), ["tie"]);
    assert_eq!(names("Alpha"), ["tie_same"]);
    assert_eq!(
        managers.current_versions(),
        json!({"acmehardwaremanager": "7", "alpha": "7", "zeta": "7", "generic_hardware_manager": "1.2"})
    );
}

#[test]
fn incompatible_falls_through_to_the_next_manager() {
    let mut vendor = Vendor::new("AcmeHardwareManager", HardwareSupport::SERVICE_PROVIDER);
    vendor.answers = vec![
        ("acme_only", Some(json!("acme did it"))),
        ("erase_devices_metadata", None),
    ];
    let mut second = Vendor::new("Second", HardwareSupport::MAINLINE);
    second.answers = vec![("acme_only", Some(json!("second"))), ("both_decline", None)];
    let managers = Managers::new(
        Path::new("/"),
        vec![
            Box::new(GenericHardwareManager::new()),
            Box::new(second),
            Box::new(vendor),
        ],
    )
    .unwrap();
    let (node, ports) = (json!({}), json!([]));
    let no_devices: [PathBuf; 0] = [];
    let c = ctx(&node, &ports, &no_devices);
    // The most specific manager answers first.
    assert_eq!(
        managers.dispatch("acme_only", &c, &json!({})).unwrap(),
        json!("acme did it")
    );
    // The vendor declines; the generic manager runs it (on no devices here).
    let out = managers
        .execute_step(&json!({"step": "erase_devices_metadata"}), &c)
        .unwrap();
    assert_eq!(out, json!({}));
    // Nobody implements it: every manager's reason is in the error.
    let err = managers
        .dispatch("both_decline", &c, &json!({}))
        .unwrap_err();
    assert_eq!(err.ipa_type(), "HardwareManagerMethodNotFound");
    let msg = err.to_string();
    assert!(
        msg.starts_with("No HardwareManager found to handle method: both_decline"),
        "{msg}"
    );
    assert!(
        msg.contains("Second: Second cannot both_decline here"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "GenericHardwareManager: GenericHardwareManager does not implement both_decline"
        ),
        "{msg}"
    );
    // dispatch_to_all collects the answers of those that did not decline.
    let all = managers
        .dispatch_to_all("acme_only", &c, &json!({}))
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all["Second"], json!("second"));
}

#[test]
fn unsupported_managers_are_dropped() {
    let none = Vendor::new("Absent", HardwareSupport::NONE);
    let managers = Managers::new(
        Path::new("/"),
        vec![Box::new(none), Box::new(GenericHardwareManager::new())],
    )
    .unwrap();
    assert_eq!(managers.iter().count(), 1);
    assert_eq!(
        managers.current_versions(),
        json!({"generic_hardware_manager": "1.2"})
    );
    let err = Managers::new(
        Path::new("/"),
        vec![Box::new(Vendor::new("Absent", HardwareSupport::NONE))],
    )
    .unwrap_err();
    assert_eq!(err, NoManagers);
}

#[test]
fn versions_are_checked_like_ipa() {
    let managers = Managers::generic(Path::new("/"));
    assert_eq!(
        ferric_hardware::current_versions(&managers),
        json!({"generic_hardware_manager": "1.2"})
    );
    assert!(managers.check_versions(None).is_ok());
    assert!(managers.check_versions(Some(&Value::Null)).is_ok());
    assert!(managers
        .check_versions(Some(&json!({"generic_hardware_manager": "1.2"})))
        .is_ok());
    let e = managers
        .check_versions(Some(&json!({"generic_hardware_manager": "1.1"})))
        .unwrap_err();
    assert_eq!(e.node, json!({"generic_hardware_manager": "1.1"}));
    assert_eq!(e.agent, json!({"generic_hardware_manager": "1.2"}));
    assert!(e.to_string().contains("mismatch"));
}

#[test]
fn malformed_steps_and_settings_are_invalid_parameters() {
    let managers = Managers::generic(Path::new("/"));
    let (node, ports) = (json!({}), json!([]));
    let c = ctx(&node, &ports, &[]);
    for bad in [
        json!({}),
        json!({"step": 5}),
        json!("erase_devices"),
        json!({"step": "erase_devices", "args": [1]}),
    ] {
        let e = managers.execute_step(&bad, &c).unwrap_err();
        assert_eq!(
            (e.ipa_type(), e.code()),
            ("InvalidCommandParamsError", 400),
            "{bad}"
        );
    }
    let node = json!({"driver_internal_info": {"disk_erasure_concurrency": "lots"}});
    let c = ctx(&node, &ports, &[]);
    let e = managers
        .execute_step(&json!({"step": "erase_devices"}), &c)
        .unwrap_err();
    assert!(e.to_string().contains("disk_erasure_concurrency"), "{e}");
    let node = json!({"properties": {"skip_block_devices": "sda"}});
    let c = ctx(&node, &ports, &[]);
    let e = managers
        .execute_step(&json!({"step": "erase_devices_metadata"}), &c)
        .unwrap_err();
    assert!(e.to_string().contains("skip_block_devices"), "{e}");
}

#[test]
fn a_vendor_erases_the_devices_it_knows_and_the_generic_manager_the_rest() {
    if !root_facility("vendor_erase_block_device") {
        return;
    }
    let a = Backing::new(8 * MIB, 0x21);
    let b = Backing::new(8 * MIB, 0x22);
    let (la, lb) = (Loop::attach(&a), Loop::attach(&b));
    let a0 = a.read();
    let mut vendor = Vendor::new("AcmeHardwareManager", HardwareSupport::SERVICE_PROVIDER);
    vendor.claims = vec![la.dev.clone()];
    let managers = Managers::new(
        Path::new("/"),
        vec![Box::new(GenericHardwareManager::new()), Box::new(vendor)],
    )
    .unwrap();
    let node = json!({"driver_internal_info": {"agent_erase_devices_iterations": 0, "agent_erase_devices_zeroize": true}});
    let ports = json!([]);
    let devices = [la.dev.clone(), lb.dev.clone()];
    let out = managers
        .execute_step(
            &json!({"step": "erase_devices"}),
            &ctx(&node, &ports, &devices),
        )
        .unwrap();
    assert_eq!(out[la.path_str()], "AcmeHardwareManager erased it");
    assert!(out[lb.path_str()]
        .as_str()
        .unwrap()
        .starts_with("overwritten"));
    assert_eq!(
        a.read(),
        a0,
        "the vendor's device went to the generic manager"
    );
    assert!(b.read().iter().all(|&x| x == 0));
    // skip_block_devices hints keep a device out entirely.
    let node = json!({"properties": {"skip_block_devices": [{"name": lb.path_str()}]},
                      "driver_internal_info": {"agent_erase_devices_iterations": 1}});
    let b_now = b.read();
    let out = managers
        .execute_step(
            &json!({"step": "erase_devices"}),
            &ctx(&node, &ports, &devices),
        )
        .unwrap();
    assert_eq!(
        out[lb.path_str()],
        "skipped: matches node.properties.skip_block_devices"
    );
    assert_eq!(b.read(), b_now);
}

#[test]
fn erase_block_device_calls_run_in_parallel_up_to_the_concurrency() {
    if !root_facility("erase_concurrency_rendezvous") {
        return;
    }
    let backs: Vec<Backing> = (0..3).map(|i| Backing::new(MIB, i)).collect();
    let loops: Vec<Loop> = backs.iter().map(Loop::attach).collect();
    let devices: Vec<PathBuf> = loops.iter().map(|l| l.dev.clone()).collect();
    let ports = json!([]);
    for (concurrency, expect_max) in [(3u64, 3usize), (1, 1)] {
        let node = json!({"driver_internal_info": {"disk_erasure_concurrency": concurrency}});
        let mut vendor = Vendor::new("Rendezvous", HardwareSupport::SERVICE_PROVIDER);
        vendor.rendezvous = (concurrency == 3).then_some(3);
        vendor.claims = devices.clone();
        let vendor = std::sync::Arc::new(vendor);
        let managers = Managers::new(
            Path::new("/"),
            vec![
                Box::new(GenericHardwareManager::new()),
                Box::new(Shared(vendor.clone())),
            ],
        )
        .unwrap();
        let out = managers
            .execute_step(
                &json!({"step": "erase_devices"}),
                &ctx(&node, &ports, &devices),
            )
            .unwrap();
        let expected = if concurrency == 3 {
            "together"
        } else {
            "Rendezvous erased it"
        };
        for d in &devices {
            assert_eq!(
                out[d.to_str().unwrap()],
                expected,
                "concurrency {concurrency}"
            );
        }
        assert_eq!(vendor.max_in_flight.load(Ordering::SeqCst), expect_max);
    }
}

/// Lets a test keep a handle on a manager it registered.
struct Shared(std::sync::Arc<Vendor>);

impl HardwareManager for Shared {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn version(&self) -> ManagerVersion {
        self.0.version()
    }
    fn evaluate_hardware_support(&self, root: &Path) -> HardwareSupport {
        self.0.evaluate_hardware_support(root)
    }
    fn erase_block_device(
        &self,
        dev: &BlockDevice,
        job: &EraseJob,
        call: &StepCall<'_>,
    ) -> Result<String, StepError> {
        self.0.erase_block_device(dev, job, call)
    }
}
