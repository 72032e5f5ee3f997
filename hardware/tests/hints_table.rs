//! Root device hint cases against the server fixture's inventory disks
//! (nvme0n1, sda, sdb, sdc, in that order).

mod common;

use ferric_hardware::hints::{self, HintError};
use ferric_hardware::{list_block_devices, BlockDevice};
use serde_json::{json, Value};

fn disks() -> Vec<BlockDevice> {
    list_block_devices(&common::fixture("server"))
        .unwrap()
        .into_iter()
        .filter(|d| d.is_inventory_disk())
        .collect()
}

/// What a case expects.
enum Want {
    Dev(&'static str),
    NoMatch,
    /// A parse error whose variant name (Debug) starts with this.
    Invalid(&'static str),
}
use Want::*;

#[test]
fn hint_cases() {
    let disks = disks();
    let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["/dev/nvme0n1", "/dev/sda", "/dev/sdb", "/dev/sdc"]);

    let cases: Vec<(Value, Want)> = vec![
        // No hints: IPA's default rule.
        (json!(null), Dev("/dev/sda")),
        (json!({}), Dev("/dev/sda")),
        // serial: default s==, case-insensitive, trimmed.
        (json!({"serial": "S3Z1NB0K123456A"}), Dev("/dev/sda")),
        (json!({"serial": "  s3z1nb0k123456a "}), Dev("/dev/sda")),
        (json!({"serial": "s< S"}), Dev("/dev/sdc")),
        (json!({"serial": "s<= s3z1nb0k123456a"}), Dev("/dev/sda")),
        (json!({"serial": "s> zl"}), Dev("/dev/sdb")),
        (json!({"serial": "S3Z1NB0K"}), NoMatch),
        // wwn family.
        (json!({"wwn": "0x5002538E40123456"}), Dev("/dev/sda")),
        (json!({"wwn": "eui.0025388b71b2c3d4"}), Dev("/dev/nvme0n1")),
        (
            json!({"wwn_with_extension": "0x6000c500d1e2f3010000000000abcdef"}),
            Dev("/dev/sdb"),
        ),
        (
            json!({"wwn_vendor_extension": "0x0000000000abcdef"}),
            Dev("/dev/sdb"),
        ),
        // model / vendor with every string operator.
        (
            json!({"model": "Samsung SSD 860 EVO 500GB"}),
            Dev("/dev/sda"),
        ),
        (json!({"model": "s== samsung  ssd 860 evo 500gb"}), NoMatch),
        (json!({"model": "<in> MZQL2"}), Dev("/dev/nvme0n1")),
        (json!({"model": "<in> ssd 860"}), Dev("/dev/sda")),
        (
            json!({"model": "<or> nothing <or> ST16000NM004J"}),
            Dev("/dev/sdb"),
        ),
        (json!({"model": "s>= u"}), Dev("/dev/sdc")),
        (json!({"vendor": "seagate"}), Dev("/dev/sdb")),
        (json!({"vendor": "<or> ata <or> seagate"}), Dev("/dev/sda")),
        // nvme0n1 has no vendor: a hint on a missing attribute never matches.
        (json!({"vendor": "s!= ATA"}), Dev("/dev/sdb")),
        (
            json!({"vendor": "s!= ATA", "rotational": false}),
            Dev("/dev/sdc"),
        ),
        // size in GiB, numeric operators.
        (json!({"size": 16}), Dev("/dev/sdc")),
        (json!({"size": "16"}), Dev("/dev/sdc")),
        (json!({"size": "== 16"}), Dev("/dev/sdc")),
        (json!({"size": "!= 16"}), Dev("/dev/nvme0n1")),
        (json!({"size": ">= 400"}), Dev("/dev/nvme0n1")),
        (json!({"size": "> 1788"}), Dev("/dev/nvme0n1")),
        (json!({"size": "< 1000"}), Dev("/dev/sda")),
        (json!({"size": "<= 16"}), Dev("/dev/sdc")),
        (json!({"size": "= 2000"}), Dev("/dev/sdb")),
        (json!({"size": "<or> 8 <or> 16"}), Dev("/dev/sdc")),
        (json!({"size": 465}), NoMatch), // sda is 465.76 GiB: exact comparison
        // rotational, oslo booleans.
        (json!({"rotational": true}), Dev("/dev/sdb")),
        (json!({"rotational": "Yes"}), Dev("/dev/sdb")),
        (json!({"rotational": "0"}), Dev("/dev/nvme0n1")),
        (json!({"rotational": 1}), Dev("/dev/sdb")),
        // name, with or without /dev/.
        (json!({"name": "/dev/sdb"}), Dev("/dev/sdb")),
        (json!({"name": "sdb"}), Dev("/dev/sdb")),
        (json!({"name": "<in> nvme"}), Dev("/dev/nvme0n1")),
        (json!({"name": "s!= nvme0n1"}), Dev("/dev/sda")),
        (json!({"name": "<or> sdz <or> /dev/sdc"}), Dev("/dev/sdc")),
        // hctl, by_path, tran.
        (json!({"hctl": "2:0:0:0"}), Dev("/dev/sdb")),
        (json!({"hctl": "s>= 6"}), Dev("/dev/sdc")),
        (
            json!({"by_path": "/dev/disk/by-path/pci-0000:5e:00.0-nvme-1"}),
            Dev("/dev/nvme0n1"),
        ),
        (json!({"tran": "SAS"}), Dev("/dev/sdb")),
        (json!({"tran": "s== usb"}), Dev("/dev/sdc")),
        // Every field at once.
        (
            json!({"model": "samsung ssd 860 evo 500gb", "vendor": "ata", "rotational": false,
                   "size": "> 400", "tran": "sata", "hctl": "0:0:0:0", "name": "sda",
                   "serial": "S3Z1NB0K123456A", "wwn": "0x5002538e40123456",
                   "wwn_with_extension": "0x5002538e40123456",
                   "by_path": "/dev/disk/by-path/pci-0000:00:17.0-ata-1"}),
            Dev("/dev/sda"),
        ),
        // All hints must hold.
        (
            json!({"serial": "S3Z1NB0K123456A", "size": ">= 1000"}),
            NoMatch,
        ),
        // Numeric operator on a string field: models are not numbers.
        (json!({"model": "== 5"}), NoMatch),
        // Parse errors.
        (json!("sda"), Invalid("NotAnObject")),
        (
            json!({"colour": "red", "serial": "x"}),
            Invalid("UnknownHints"),
        ),
        (json!({"serial": 12345}), Invalid("NotString")),
        (json!({"model": "   "}), Invalid("Empty")),
        (json!({"model": "s== "}), Invalid("BadOperator")),
        (json!({"model": "<all-in> a b"}), Invalid("BadOperator")),
        (json!({"model": "> big"}), Invalid("NotNumber")),
        (json!({"size": 0}), Invalid("NotPositive")),
        (json!({"size": "<= -5"}), Invalid("NotPositive")),
        (json!({"size": "big"}), Invalid("NotNumber")),
        (json!({"size": 10.0}), Invalid("NotNumber")),
        (json!({"size": true}), Invalid("NotNumber")),
        (json!({"size": "s== 16"}), Invalid("BadOperator")),
        (json!({"size": "<in> 16"}), Invalid("BadOperator")),
        (json!({"rotational": "maybe"}), Invalid("NotBoolean")),
        (json!({"rotational": 2}), Invalid("NotBoolean")),
    ];

    let mut failures = Vec::new();
    for (i, (input, want)) in cases.iter().enumerate() {
        let parsed = hints::parse(input);
        let outcome = match (&parsed, want) {
            (Err(e), Invalid(variant)) if format!("{e:?}").starts_with(variant) => continue,
            (Err(e), _) => format!("parse error {e:?}"),
            (Ok(h), _) => match (hints::select(&disks, h), want) {
                (Ok(d), Dev(name)) if d.name == *name => continue,
                (Err(HintError::NoMatch { .. }), NoMatch) => continue,
                (Ok(d), _) => format!("selected {}", d.name),
                (Err(e), _) => format!("select error {e}"),
            },
        };
        let wanted = match want {
            Dev(n) => format!("device {n}"),
            NoMatch => "NoMatch".to_string(),
            Invalid(v) => format!("parse error {v}"),
        };
        failures.push(format!("case {i} {input}: wanted {wanted}, got {outcome}"));
    }
    assert!(cases.len() >= 25);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn no_match_message_names_hints_and_every_disk() {
    let disks = disks();
    let h = hints::parse(&json!({"serial": "NOPE-123"})).unwrap();
    let err = hints::select(&disks, &h).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(r#"{"serial":"NOPE-123"}"#), "{msg}");
    for needle in [
        "/dev/nvme0n1 (size 1920383410176 bytes, serial S64GNE0R123456, wwn eui.0025388b71b2c3d4, model \"SAMSUNG MZQL21T9HCJR-00A07\")",
        "/dev/sda (size 500107862016 bytes, serial S3Z1NB0K123456A, wwn 0x5002538e40123456",
        "/dev/sdb (size 16000900661248 bytes, serial ZL2ABCDE0000C1234567, wwn 0x6000c500d1e2f301",
        "/dev/sdc (size 17179869184 bytes, serial 4C530001230617115024, wwn -, model \"Ultra Fit\")",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in {msg}");
    }
    let none = hints::select(&[], &h).unwrap_err().to_string();
    assert!(none.ends_with("disks seen: none"), "{none}");
    let default = hints::select(&[], &hints::parse(&json!({})).unwrap())
        .unwrap_err()
        .to_string();
    assert!(default.contains("at least 4 GiB"), "{default}");
}

#[test]
fn parse_error_messages_carry_the_facts() {
    let e = hints::parse(&json!({"colour": "red"}))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"colour\"") && e.contains("wwn_vendor_extension"),
        "{e}"
    );
    let e = hints::parse(&json!({"size": "abc"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("size") && e.contains("abc"), "{e}");
    let h = hints::parse(&json!({"rotational": "no"})).unwrap();
    assert!(!h.is_empty());
    assert_eq!(h.to_string(), r#"{"rotational":"no"}"#);
}
