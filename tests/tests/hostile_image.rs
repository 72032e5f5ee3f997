//! Hostile images and config drives (issue 6 item 3): one standalone agent per table, each
//! row a `standby.prepare_image` (wait=true) against the fault-injecting image server. After
//! every row: the result is checked (a clear FAILED, or exactly the expected bytes), the disk
//! (pre-filled with 0xAA) is untouched, wiped at both ends, or holds exactly the expected
//! image, never a half image behind a valid partition table, the agent's peak memory is
//! recorded, and `GET /v1/status` answers.
//!
//! Downloads are bounded with `ipa-image-download-connection-retries=1` and a 0.2 s interval.
//! qcow2 files are built from the spec in `ferric_tests::hostile` (checked against qemu-img in
//! its unit tests); where a corrupt-looking qcow2 is still readable, reading it exactly as
//! qemu does ([`qcow2_guest`]) is accepted as well as a refusal.
//! The tables are printed and written to `$CARGO_TARGET_TMPDIR/hostile-*.md`.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use ferric_tests::conductor::DeployPlan;
use ferric_tests::e2e::{first_difference, RunningAgent, TestDisk};
use ferric_tests::fixtures::{configdrive_b64, pattern, sha256_hex, test_image, TableKind};
use ferric_tests::hostile::{
    build_qcow2, check_alive, disk_verdict, ensure, gzip, gzip_bomb, mem_kib, qcow2_guest,
    raw_exchange, reset_peak_rss, send_large_body, set_be32, set_be64, spawn_standalone_with,
    DiskVerdict, Qcow2File, Qcow2Spec, RawExchange, Table, QCOW2_EXT_DATA_FILE,
    QCOW2_EXT_ENCRYPTION, QCOW2_INCOMPAT_DATA_FILE,
};
use ferric_tests::image_server::{Fault, ImageServer};
use ferric_tests::util::truncate;
use serde_json::{json, Value};

const TOKEN: &str = "hostile-image-token-0123456789abcdefghijklmnopq";
const FILL: u8 = 0xaa;
const MIB: u64 = 1 << 20;
const ROW: Duration = Duration::from_secs(30);
/// Short download retries so that failing rows stay fast (IPA's names).
const CMDLINE: &str =
    "ipa-image-download-connection-retries=1 ipa-image-download-connection-retry-interval=0.2";
/// By default a row may not grow the agent's peak RSS by more than this: the image pipeline's
/// buffers, the qcow2 prefix, and a 64 MiB config drive are all below it.
const MAX_GROWTH: u64 = 128 * MIB;

/// What a row must produce.
enum Expect {
    /// FAILED with one of these (case-insensitive) in the error's type or details (any
    /// non-empty details when the list is empty); the disk untouched or wiped.
    Fails(&'static [&'static str]),
    /// SUCCEEDED, and the disk starts with these bytes.
    Writes(Vec<u8>),
    /// Either of the above.
    FailsOrWrites(&'static [&'static str], Vec<u8>),
    /// A request whose body is this many bytes is refused by the API itself with this HTTP
    /// status (sent as filler: the content never matters); nothing runs.
    Http(u16, u64),
}

impl Expect {
    fn describe(&self) -> String {
        match self {
            Expect::Fails([]) => "FAILED with details; disk untouched or wiped".into(),
            Expect::Fails(k) => format!("FAILED naming {k:?}; disk untouched or wiped"),
            Expect::Writes(b) => format!("SUCCEEDED; disk holds the expected {} bytes", b.len()),
            Expect::FailsOrWrites(k, _) => format!(
                "FAILED naming {k:?} (disk untouched or wiped), or SUCCEEDED with exactly what \
                 qemu reads"
            ),
            Expect::Http(s, _) => format!("HTTP {s}; nothing run; disk untouched"),
        }
    }
}

struct Case {
    name: String,
    /// Blobs to serve: (name, bytes, fault).
    blobs: Vec<(String, Vec<u8>, Fault)>,
    image_info: Value,
    configdrive: Option<Value>,
    expect: Expect,
}

struct Rig {
    /// Peak RSS growth allowed for the next rows.
    max_growth: u64,
    agent: RunningAgent,
    disk: TestDisk,
    images: ImageServer,
    table: Table,
}

impl Rig {
    fn new(test: &str, table: &str, disk_size: u64) -> Option<Rig> {
        let disk = TestDisk::create(test, disk_size)?;
        let agent = spawn_standalone_with(CMDLINE, TOKEN, &disk.path());
        Some(Rig {
            max_growth: MAX_GROWTH,
            agent,
            disk,
            images: ImageServer::start().expect("image server"),
            table: Table::new(table),
        })
    }

    fn url(&self, name: &str) -> String {
        self.images.url(name)
    }

    fn run(&mut self, case: Case) {
        for (n, b, f) in &case.blobs {
            self.images.add(n, b.clone());
            self.images.set_fault(n, f.clone());
        }
        self.disk.fill(FILL);
        let pid = self.agent.process.pid();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.agent.port));
        let agent = &mut self.agent;
        let disk = &self.disk;
        let expect = case.expect;
        let max_growth = self.max_growth;
        // A config drive adds a partition to the image's table: compare past the first sector.
        let skip = if case.configdrive.is_some() { 512 } else { 0 };
        let mut params = json!({"image_info": case.image_info});
        if let Some(cd) = case.configdrive {
            params["configdrive"] = cd;
        }
        let body = json!({"name": "standby.prepare_image", "params": params}).to_string();
        self.table.row(&case.name, &expect.describe(), ROW, |d| {
            let can_reset = reset_peak_rss(pid);
            let rss0 = mem_kib(pid, "VmRSS").unwrap_or(0) * 1024;
            let mut req = format!(
                "POST /v1/commands/?wait=true&agent_token={TOKEN} HTTP/1.1\r\nHost: x\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            req.extend_from_slice(body.as_bytes());
            let ex = match expect {
                Expect::Http(_, len) => {
                    let head = format!(
                        "POST /v1/commands/?wait=true&agent_token={TOKEN} HTTP/1.1\r\n\
                         Host: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
                    );
                    let lb =
                        send_large_body(addr, head.as_bytes(), len, false, b' ', d.remaining())
                            .map_err(|e| e.to_string())?;
                    RawExchange {
                        responses: lb.response.into_iter().collect(),
                        ..Default::default()
                    }
                }
                _ => raw_exchange(addr, &req, 1, d.remaining()),
            };
            let peak = mem_kib(pid, "VmHWM").unwrap_or(0) * 1024;
            let growth = if can_reset {
                peak.saturating_sub(rss0)
            } else {
                0
            };
            let r = ex
                .responses
                .first()
                .ok_or_else(|| format!("no answer: {}", ex.describe()))?;
            let bytes = disk.read_all();
            let image = match &expect {
                Expect::Writes(b) | Expect::FailsOrWrites(_, b) => Some(b.as_slice()),
                _ => None,
            };
            let verdict = match disk_verdict(&bytes, FILL, None) {
                DiskVerdict::Untouched => DiskVerdict::Untouched,
                _ => match image {
                    Some(img)
                        if bytes.len() >= img.len() && bytes[skip..img.len()] == img[skip..] =>
                    {
                        DiskVerdict::Image
                    }
                    _ => disk_verdict(&bytes, FILL, image),
                },
            };
            let mem = if can_reset {
                format!("peak RSS +{} MiB", growth >> 20)
            } else {
                "peak RSS not measurable".into()
            };
            let outcome = if let Expect::Http(want, _) = expect {
                ensure(r.status == want, || format!("HTTP {}", r.describe()))?;
                ensure(verdict == DiskVerdict::Untouched, || {
                    format!("HTTP {} but the disk is {verdict:?}", r.status)
                })?;
                format!("HTTP {}; disk {verdict:?}; {mem}", r.describe())
            } else {
                ensure(r.status == 200, || format!("HTTP {}", r.describe()))?;
                let v = r.json().unwrap_or(Value::Null);
                let status = v["command_status"].as_str().unwrap_or("?").to_string();
                let kind = v["command_error"]["type"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let details = v["command_error"]["details"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let text = format!("{kind}: {details}").to_ascii_lowercase();
                let failed_ok = |keys: &[&str]| -> Result<(), String> {
                    ensure(status == "FAILED", || {
                        format!("{status} (want FAILED): {}", truncate(&v.to_string(), 300))
                    })?;
                    ensure(!details.is_empty(), || {
                        format!("FAILED without details: {v}")
                    })?;
                    ensure(
                        keys.is_empty()
                            || keys.iter().any(|k| text.contains(&k.to_ascii_lowercase())),
                        || {
                            format!(
                                "FAILED but the error names none of {keys:?}: {kind}: {details}"
                            )
                        },
                    )?;
                    ensure(
                        matches!(verdict, DiskVerdict::Untouched | DiskVerdict::Wiped),
                        || format!("FAILED ({kind}: {details}) but the disk is {verdict:?}"),
                    )
                };
                let wrote_ok = || -> Result<(), String> {
                    ensure(status == "SUCCEEDED", || {
                        format!("{status} (want SUCCEEDED): {kind}: {details}")
                    })?;
                    ensure(verdict == DiskVerdict::Image, || {
                        let diff = image
                            .and_then(|img| first_difference(&bytes[..img.len()], img))
                            .unwrap_or_default();
                        format!("SUCCEEDED but the disk is {verdict:?}: {diff}")
                    })
                };
                match &expect {
                    Expect::Fails(k) => failed_ok(k)?,
                    Expect::Writes(_) => wrote_ok()?,
                    Expect::FailsOrWrites(k, _) => {
                        if status == "SUCCEEDED" {
                            wrote_ok()?
                        } else {
                            failed_ok(k)?
                        }
                    }
                    Expect::Http(..) => unreachable!(),
                }
                if status == "SUCCEEDED" {
                    format!("SUCCEEDED; disk {verdict:?}; {mem}")
                } else {
                    format!(
                        "FAILED {kind}: {}; disk {verdict:?}; {mem}",
                        truncate(&details, 200)
                    )
                }
            };
            ensure(growth <= max_growth, || {
                format!("{outcome}: memory grew too much")
            })?;
            check_alive(agent, Duration::from_secs(5))
                .map_err(|e| format!("{outcome}; but afterwards {e}"))?;
            Ok(outcome)
        });
    }

    fn finish(self) {
        let Rig { table, .. } = self;
        table.finish(env!("CARGO_TARGET_TMPDIR"));
    }
}

/// `image_info` for `url` with sha256 `sha` and `disk_format`.
fn info(url: &str, sha: &str, disk_format: Option<&str>) -> Value {
    let mut p = DeployPlan::whole_disk_raw(url, sha, None);
    p.disk_format = disk_format.map(str::to_string);
    p.image_info("hostile")
}

fn blob(name: &str, bytes: Vec<u8>, fault: Fault) -> (String, Vec<u8>, Fault) {
    (name.to_string(), bytes, fault)
}

/// A case serving `bytes` (fault `fault`) as `name`, declared `disk_format`, correct sha256.
fn served(
    rig: &Rig,
    case: &str,
    name: &str,
    bytes: Vec<u8>,
    fault: Fault,
    disk_format: Option<&str>,
    expect: Expect,
) -> Case {
    let sha = sha256_hex(&bytes);
    Case {
        name: case.to_string(),
        image_info: info(&rig.url(name), &sha, disk_format),
        blobs: vec![blob(name, bytes, fault)],
        configdrive: None,
        expect,
    }
}

#[test]
fn image_table() {
    let Some(mut rig) = Rig::new("hostile_image::image_table", "image", 32 << 20) else {
        return;
    };
    let img = test_image(TableKind::Mbr, 16 << 20, 0x1a6e).bytes;
    let len = img.len() as u64;

    // --- Controls: the rig tells a good write from a refusal -------------------------------
    let c = served(
        &rig,
        "valid raw MBR image (control)",
        "ok.raw",
        img.clone(),
        Fault::None,
        Some("raw"),
        Expect::Writes(img.clone()),
    );
    rig.run(c);
    let c = served(
        &rig,
        "503 once, then the image (control: retries work)",
        "retry.raw",
        img.clone(),
        Fault::ErrorFirst {
            times: 1,
            status: 503,
        },
        Some("raw"),
        Expect::Writes(img.clone()),
    );
    rig.run(c);
    let c = served(
        &rig,
        "gzip of a valid raw image declared raw (control)",
        "ok.raw.gz",
        gzip(&img),
        Fault::None,
        Some("raw"),
        Expect::Writes(img.clone()),
    );
    rig.run(c);
    let hop = Case {
        name: "one redirect to the image (control)".into(),
        image_info: info(&rig.url("hop"), &sha256_hex(&img), Some("raw")),
        blobs: vec![
            blob("hop", Vec::new(), Fault::Redirect(rig.url("ok.raw"))),
            blob("ok.raw", img.clone(), Fault::None),
        ],
        configdrive: None,
        expect: Expect::Writes(img.clone()),
    };
    rig.run(hop);

    // --- Broken transfers ------------------------------------------------------------------
    let transfer: Vec<(&str, Fault, &'static [&'static str])> = vec![
        (
            "body truncated after 4 MiB (each attempt)",
            Fault::TruncateAfter(4 * MIB),
            &[],
        ),
        (
            "Content-Length 4 MiB short of the body",
            Fault::WrongContentLength(len - 4 * MIB),
            &["checksum", "length"],
        ),
        (
            "Content-Length 4 MiB beyond the body",
            Fault::WrongContentLength(len + 4 * MIB),
            &[],
        ),
        (
            "connection reset after 4 MiB (each attempt)",
            Fault::ResetAfter(4 * MIB),
            &[],
        ),
        (
            "404 forever",
            Fault::ErrorFirst {
                times: 1000,
                status: 404,
            },
            &["404"],
        ),
        (
            "500 forever (bounded by retries=1)",
            Fault::ErrorFirst {
                times: 1000,
                status: 500,
            },
            &["500"],
        ),
    ];
    for (i, (name, fault, keys)) in transfer.into_iter().enumerate() {
        let c = served(
            &rig,
            name,
            &format!("t{i}.raw"),
            img.clone(),
            fault,
            Some("raw"),
            Expect::Fails(keys),
        );
        rig.run(c);
    }
    let redirect_self = Case {
        name: "redirect loop (to itself)".into(),
        image_info: info(&rig.url("loop"), &sha256_hex(&img), Some("raw")),
        blobs: vec![blob("loop", Vec::new(), Fault::Redirect(rig.url("loop")))],
        configdrive: None,
        expect: Expect::Fails(&["redirect"]),
    };
    rig.run(redirect_self);
    let ping_pong = Case {
        name: "redirect ping-pong a → b → a".into(),
        image_info: info(&rig.url("ping"), &sha256_hex(&img), Some("raw")),
        blobs: vec![
            blob("ping", Vec::new(), Fault::Redirect(rig.url("pong"))),
            blob("pong", Vec::new(), Fault::Redirect(rig.url("ping"))),
        ],
        configdrive: None,
        expect: Expect::Fails(&["redirect"]),
    };
    rig.run(ping_pong);
    let bigger = test_image(TableKind::Mbr, 40 << 20, 0xb16).bytes;
    let c = served(
        &rig,
        "raw image larger than the device (honest Content-Length)",
        "big.raw",
        bigger,
        Fault::None,
        Some("raw"),
        Expect::Fails(&["does not fit"]),
    );
    rig.run(c);

    // --- Checksums ----------------------------------------------------------------------------
    let wrong = Case {
        name: "sha256 mismatch".into(),
        image_info: info(
            &rig.url("ok.raw"),
            &sha256_hex(b"not the image"),
            Some("raw"),
        ),
        blobs: vec![blob("ok.raw", img.clone(), Fault::None)],
        configdrive: None,
        expect: Expect::Fails(&["ImageChecksumError"]),
    };
    rig.run(wrong);
    let mut by_url = |name: &str, sums: Option<(Vec<u8>, Fault)>, keys: &'static [&'static str]| {
        let mut ii = info(&rig.url("ok.raw"), "", Some("raw"));
        let o = ii.as_object_mut().expect("object");
        o.remove("os_hash_algo");
        o.remove("os_hash_value");
        o.insert("checksum".into(), json!(rig.url("ok.raw.sha256sum")));
        let mut blobs = vec![blob("ok.raw", img.clone(), Fault::None)];
        match sums {
            Some((b, f)) => blobs.push(blob("ok.raw.sha256sum", b, f)),
            None => blobs.push(blob(
                "ok.raw.sha256sum",
                Vec::new(),
                Fault::ErrorFirst {
                    times: 1000,
                    status: 404,
                },
            )),
        }
        let c = Case {
            name: name.into(),
            image_info: ii,
            blobs,
            configdrive: None,
            expect: Expect::Fails(keys),
        };
        rig.run(c);
    };
    by_url("checksum URL that 404s", None, &["404"]);
    by_url(
        "checksum file without a line for the image",
        Some((
            format!("{}  other.raw\n", sha256_hex(&img)).into_bytes(),
            Fault::None,
        )),
        &["checksum"],
    );
    by_url(
        "checksum URL serving 100 MiB",
        Some((vec![b'0'; 100 << 20], Fault::None)),
        &["checksum", "exceeds", "too large"],
    );

    // --- Formats --------------------------------------------------------------------------------
    let guest = test_image(TableKind::Mbr, 8 << 20, 0x9c0).bytes;
    let qcow = build_qcow2(&Qcow2Spec::plain(guest.clone()));
    let c = served(
        &rig,
        "valid qcow2, 64 KiB clusters (control)",
        "ok.qcow2",
        qcow.bytes.clone(),
        Fault::None,
        Some("qcow2"),
        Expect::Writes(guest.clone()),
    );
    rig.run(c);
    let small = build_qcow2(&Qcow2Spec {
        cluster_bits: 9,
        ..Qcow2Spec::plain(guest.clone())
    });
    let c = served(
        &rig,
        "valid qcow2, 512-byte clusters: 16 384 clusters, 256 L2 tables (control)",
        "small.qcow2",
        small.bytes,
        Fault::None,
        Some("qcow2"),
        Expect::Writes(guest.clone()),
    );
    rig.run(c);
    let c = served(
        &rig,
        "declared raw, bytes are qcow2",
        "q-as-raw",
        qcow.bytes.clone(),
        Fault::None,
        Some("raw"),
        Expect::Fails(&["actually qcow2"]),
    );
    rig.run(c);
    let c = served(
        &rig,
        "declared qcow2, bytes are raw",
        "raw-as-q",
        img.clone(),
        Fault::None,
        Some("qcow2"),
        Expect::Fails(&["expected format was qcow2"]),
    );
    rig.run(c);
    let c = served(
        &rig,
        "disk_format vmdk",
        "vmdk-decl",
        img.clone(),
        Fault::None,
        Some("vmdk"),
        Expect::Fails(&["vmdk"]),
    );
    rig.run(c);
    let mut vmdk = vec![0u8; 4 << 20];
    vmdk[..4].copy_from_slice(b"KDMV");
    let c = served(
        &rig,
        "vmdk bytes declared raw",
        "v.vmdk",
        vmdk,
        Fault::None,
        Some("raw"),
        Expect::Fails(&["vmdk"]),
    );
    rig.run(c);

    // --- Compression ------------------------------------------------------------------------
    // An MBR image's first MiB, then 256 MiB of zeros: 8 × the disk, ~256 KiB on the wire.
    let bomb = gzip_bomb(&img[..MIB as usize], 256 * MIB);
    let c = served(
        &rig,
        "gzip bomb (256 MiB inflated, 32 MiB disk) declared raw",
        "bomb.gz",
        bomb.clone(),
        Fault::None,
        Some("raw"),
        Expect::Fails(&["does not fit"]),
    );
    rig.run(c);
    let c = served(
        &rig,
        "gzip bomb declared qcow2",
        "bomb-q.gz",
        bomb,
        Fault::None,
        Some("qcow2"),
        Expect::Fails(&["expected format was qcow2"]),
    );
    rig.run(c);
    let c = served(
        &rig,
        "gzip inside gzip",
        "nested.gz",
        gzip(&gzip(&img)),
        Fault::None,
        Some("raw"),
        Expect::Fails(&["nested"]),
    );
    rig.run(c);
    let gz = gzip(&img);
    let c = served(
        &rig,
        "gzip cut at 60 %",
        "cut.gz",
        gz[..gz.len() * 6 / 10].to_vec(),
        Fault::None,
        Some("raw"),
        Expect::Fails(&[]),
    );
    rig.run(c);
    let mut trailing = gz.clone();
    trailing.extend_from_slice(b"TRAILING GARBAGE AFTER THE GZIP STREAM");
    let c = served(
        &rig,
        "gzip followed by garbage",
        "trailing.gz",
        trailing,
        Fault::None,
        Some("raw"),
        Expect::Fails(&["trailing", "garbage", "gzip"]),
    );
    rig.run(c);

    // --- Hostile qcow2 -----------------------------------------------------------------------
    let spec = Qcow2Spec::plain(guest.clone());
    let mut q = |name: &str, file: Vec<u8>, expect: Expect| {
        let c = served(
            &rig,
            name,
            &format!("q{}.qcow2", sha256_hex(name.as_bytes())),
            file,
            Fault::None,
            Some("qcow2"),
            expect,
        );
        rig.run(c);
    };
    q(
        "qcow2 with a backing file",
        build_qcow2(&Qcow2Spec {
            backing_file: Some("/etc/shadow".into()),
            ..spec.clone()
        })
        .bytes,
        Expect::Fails(&["backing file"]),
    );
    q(
        "qcow2 with an external data file (feature bit and extension)",
        build_qcow2(&Qcow2Spec {
            incompatible: QCOW2_INCOMPAT_DATA_FILE,
            extensions: vec![(QCOW2_EXT_DATA_FILE, b"/dev/sda".to_vec())],
            ..spec.clone()
        })
        .bytes,
        Expect::Fails(&["data file"]),
    );
    q(
        "qcow2 naming a data file without the feature bit",
        build_qcow2(&Qcow2Spec {
            extensions: vec![(QCOW2_EXT_DATA_FILE, b"/dev/sda".to_vec())],
            ..spec.clone()
        })
        .bytes,
        Expect::Fails(&["data file"]),
    );
    q(
        "qcow2 encrypted (crypt_method 1, AES)",
        build_qcow2(&Qcow2Spec {
            crypt_method: 1,
            ..spec.clone()
        })
        .bytes,
        Expect::Fails(&["encrypt"]),
    );
    let mut luks_ext = vec![0u8; 16];
    set_be64(&mut luks_ext, 0, 1 << 16);
    set_be64(&mut luks_ext, 8, 1 << 16);
    q(
        "qcow2 LUKS (crypt_method 2 + encryption header)",
        build_qcow2(&Qcow2Spec {
            crypt_method: 2,
            extensions: vec![(QCOW2_EXT_ENCRYPTION, luks_ext.clone())],
            ..spec.clone()
        })
        .bytes,
        Expect::Fails(&["encrypt"]),
    );
    q(
        "qcow2 encryption header with crypt_method 0",
        build_qcow2(&Qcow2Spec {
            extensions: vec![(QCOW2_EXT_ENCRYPTION, luks_ext)],
            ..spec.clone()
        })
        .bytes,
        Expect::Fails(&["encrypt"]),
    );
    let edit = |f: &dyn Fn(&mut Qcow2File)| -> Vec<u8> {
        let mut file = build_qcow2(&spec);
        f(&mut file);
        file.bytes
    };
    q(
        "qcow2 version 4",
        edit(&|f| set_be32(&mut f.bytes, 4, 4)),
        Expect::Fails(&["version"]),
    );
    q(
        "qcow2 cluster_bits 31",
        edit(&|f| set_be32(&mut f.bytes, Qcow2File::CLUSTER_BITS, 31)),
        Expect::Fails(&["cluster_bits"]),
    );
    q(
        "qcow2 cluster_bits 8",
        edit(&|f| set_be32(&mut f.bytes, Qcow2File::CLUSTER_BITS, 8)),
        Expect::Fails(&["cluster_bits"]),
    );
    q(
        "qcow2 corrupt bit set",
        edit(&|f| set_be64(&mut f.bytes, Qcow2File::INCOMPATIBLE, 1 << 1)),
        Expect::Fails(&["corrupt"]),
    );
    q(
        "qcow2 unknown incompatible feature bit 63",
        edit(&|f| set_be64(&mut f.bytes, Qcow2File::INCOMPATIBLE, 1 << 63)),
        Expect::Fails(&["incompatible", "feature"]),
    );
    q(
        "qcow2 header_length 0xFFFFFFF8",
        edit(&|f| set_be32(&mut f.bytes, Qcow2File::HEADER_LENGTH, 0xffff_fff8)),
        Expect::Fails(&["header_length", "qcow2"]),
    );
    q(
        "qcow2 header extension longer than the cluster",
        build_qcow2(&Qcow2Spec {
            extensions: vec![(0x1234_5678, vec![0; 8])],
            ..spec.clone()
        })
        .bytes
        .iter()
        .enumerate()
        .map(|(i, &b)| if (108..112).contains(&i) { 0xff } else { b })
        .collect(),
        Expect::Fails(&["extension", "qcow2"]),
    );
    q(
        "qcow2 virtual size 1 TiB (L1 sized to match)",
        edit(&|f| {
            set_be64(&mut f.bytes, Qcow2File::SIZE, 1 << 40);
            set_be32(&mut f.bytes, Qcow2File::L1_SIZE, 2048);
        }),
        Expect::Fails(&["does not fit"]),
    );
    q(
        "qcow2 virtual size 2^64 - 512",
        edit(&|f| set_be64(&mut f.bytes, Qcow2File::SIZE, u64::MAX - 511)),
        Expect::Fails(&["l1", "does not fit", "size"]),
    );
    q(
        "qcow2 L1 table at offset 0 (over the header)",
        edit(&|f| set_be64(&mut f.bytes, Qcow2File::L1_TABLE_OFFSET, 0)),
        Expect::Fails(&["l1", "qcow2"]),
    );
    q(
        "qcow2 L1 table beyond the end of the file",
        edit(&|f| set_be64(&mut f.bytes, Qcow2File::L1_TABLE_OFFSET, 1 << 40)),
        Expect::Fails(&["l1", "qcow2"]),
    );
    q(
        "qcow2 L1 table offset unaligned",
        edit(&|f| set_be64(&mut f.bytes, Qcow2File::L1_TABLE_OFFSET, f.l1_offset + 8)),
        Expect::Fails(&["l1", "qcow2", "align"]),
    );
    q(
        "qcow2 L2 entry beyond the end of the file",
        edit(&|f| {
            let l2 = f.l2_offsets[0];
            f.set_l2(l2, 5, 1 << 40);
        }),
        Expect::Fails(&["qcow2"]),
    );
    q(
        "qcow2 L2 entry unaligned",
        edit(&|f| {
            let l2 = f.l2_offsets[0];
            let (g, h) = f.data[0];
            f.set_l2(l2, g / f.cluster_size, h + 512);
        }),
        Expect::Fails(&["qcow2"]),
    );
    q(
        "qcow2 compressed cluster of garbage",
        edit(&|f| {
            let l2 = f.l2_offsets[0];
            let (g, h) = f.data[0];
            // Compressed descriptor: bit 62, offset in the low bits, one extra 512-byte sector.
            let x = 62 - (16 - 8);
            f.set_l2_raw(l2, g / f.cluster_size, (1 << 62) | (1 << x) | h);
            f.bytes[h as usize..h as usize + 1024].fill(0x5a);
        }),
        Expect::Fails(&["compress"]),
    );
    // Readable, but not what qemu-img writes: a refusal or qemu's reading are both fine.
    let oracle_row =
        |name: &str, f: &dyn Fn(&mut Qcow2File), spec: &Qcow2Spec| -> (String, Vec<u8>, Vec<u8>) {
            let mut file = build_qcow2(spec);
            f(&mut file);
            let want = qcow2_guest(&file.bytes)
                .unwrap_or_else(|e| panic!("{name}: oracle cannot read it: {e}"));
            (name.to_string(), file.bytes, want)
        };
    let readable = vec![
        oracle_row(
            "qcow2 L2 table placed on the L1 table (overlap)",
            &|f| {
                let l1 = f.l1_offset;
                f.set_l1(0, l1)
            },
            &spec,
        ),
        oracle_row(
            "qcow2 L2 table placed on the refcount table (overlap)",
            &|f| {
                let rt = f.cluster_size;
                f.set_l1(0, rt)
            },
            &spec,
        ),
        oracle_row(
            "qcow2 L2 entry pointing at its own L2 table (loop)",
            &|f| {
                let l2 = f.l2_offsets[0];
                f.set_l2(l2, 3, l2)
            },
            &spec,
        ),
        oracle_row(
            "qcow2 every L2 entry → one data cluster",
            &|f| {
                let l2 = f.l2_offsets[0];
                let h = f.data[f.data.len() / 2].1;
                for j in 0..(8 << 20) / f.cluster_size {
                    f.set_l2(l2, j, h)
                }
            },
            &spec,
        ),
        oracle_row(
            "qcow2 every L2 entry → the first data cluster (behind the stream)",
            &|f| {
                let l2 = f.l2_offsets[0];
                let h = f.data[0].1;
                for j in 0..(8 << 20) / f.cluster_size {
                    f.set_l2(l2, j, h)
                }
            },
            &spec,
        ),
        oracle_row(
            "qcow2 refcount table of 2^32-1 clusters",
            &|f| set_be32(&mut f.bytes, 56, u32::MAX),
            &spec,
        ),
        oracle_row(
            "qcow2 2^32-1 snapshots beyond the end of the file",
            &|f| {
                set_be32(&mut f.bytes, 60, u32::MAX);
                set_be64(&mut f.bytes, 64, 1 << 40);
            },
            &spec,
        ),
    ];
    for (name, file, want) in readable {
        q(&name, file, Expect::FailsOrWrites(&["qcow2"], want));
    }
    rig.finish();
}

#[test]
fn configdrive_table() {
    // The config-2 partition is 64 MiB at the end of the disk: room for it and the image.
    let Some(mut rig) = Rig::new("hostile_image::configdrive_table", "configdrive", 80 << 20)
    else {
        return;
    };
    let img = test_image(TableKind::Mbr, 4 << 20, 0xcd).bytes;
    rig.images.add("disk.raw", img.clone());
    let ii = info(&rig.url("disk.raw"), &sha256_hex(&img), Some("raw"));
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let base = rig.images.base_url();
    let at = |name: &str| json!(format!("{base}/{name}"));
    let bomb = gzip_bomb(b"", 1 << 30);
    // The largest body the API accepts costs several copies of itself (request body, parsed
    // JSON, the command's parameters): observed ~3.3×; allow 4× the 96 MiB body limit.
    rig.max_growth = 4 * 96 * MIB;
    rig.run(Case {
        name: "70 MiB uncompressed, inline (93 MiB of base64, under the body limit)".into(),
        image_info: ii.clone(),
        blobs: vec![],
        configdrive: Some(json!(b64(&vec![0x41u8; 70 << 20]))),
        expect: Expect::Fails(&["too large"]),
    });
    rig.max_growth = MAX_GROWTH;
    let mut cd =
        |name: &str, value: Value, blobs: Vec<(String, Vec<u8>, Fault)>, expect: Expect| {
            let c = Case {
                name: name.into(),
                image_info: ii.clone(),
                blobs,
                configdrive: Some(value),
                expect,
            };
            rig.run(c);
        };
    cd(
        "valid config drive, inline (control)",
        json!(configdrive_b64()),
        vec![],
        Expect::Writes(img.clone()),
    );
    cd(
        "valid config drive from a URL (control)",
        at("cd.b64"),
        vec![blob(
            "cd.b64",
            configdrive_b64().as_bytes().to_vec(),
            Fault::None,
        )],
        Expect::Writes(img.clone()),
    );
    cd(
        "not base64",
        json!("this is *not* base64 at all!"),
        vec![],
        Expect::Fails(&["base64"]),
    );
    cd(
        "gzip bomb: 1 GiB of zeros, inline",
        json!(b64(&bomb)),
        vec![],
        Expect::Fails(&["too large"]),
    );
    cd(
        "gzip of 65 MiB (over 64 MiB after decoding)",
        json!(b64(&gzip(&vec![0x20; 65 << 20]))),
        vec![],
        Expect::Fails(&["too large"]),
    );
    cd(
        "80 MiB uncompressed, inline (107 MiB of base64, over the body limit)",
        Value::Null,
        vec![],
        Expect::Http(413, (80u64 << 20) / 3 * 4 + 200),
    );
    let iso_gz = base64::engine::general_purpose::STANDARD
        .decode(configdrive_b64())
        .expect("fixture is base64");
    cd(
        "gzip cut in half",
        json!(b64(&iso_gz[..iso_gz.len() / 2])),
        vec![],
        Expect::Fails(&["gzip"]),
    );
    cd(
        "URL that 404s",
        at("missing.iso"),
        vec![blob(
            "missing.iso",
            Vec::new(),
            Fault::ErrorFirst {
                times: 1000,
                status: 404,
            },
        )],
        Expect::Fails(&["404"]),
    );
    cd(
        "URL that answers 500 forever",
        at("broken.iso"),
        vec![blob(
            "broken.iso",
            Vec::new(),
            Fault::ErrorFirst {
                times: 1000,
                status: 500,
            },
        )],
        Expect::Fails(&["500"]),
    );
    cd(
        "URL that redirects to itself forever",
        at("cdloop"),
        vec![blob(
            "cdloop",
            Vec::new(),
            Fault::Redirect(format!("{base}/cdloop")),
        )],
        Expect::Fails(&["redirect"]),
    );
    cd(
        "URL serving 100 MiB",
        at("huge.iso"),
        vec![blob("huge.iso", vec![0x41; 100 << 20], Fault::None)],
        Expect::Fails(&["exceeds", "too large"]),
    );
    cd(
        "URL serving a raw (not base64) gzip bomb",
        at("bomb.gz"),
        vec![blob("bomb.gz", bomb.clone(), Fault::None)],
        Expect::Fails(&["too large"]),
    );
    cd(
        "URL `http://[::1` (unparseable)",
        json!("http://[::1"),
        vec![],
        Expect::Fails(&[]),
    );
    rig.finish();
}

/// IPA gunzips every config drive and fails when it is not gzip
/// (`partition_utils.get_configdrive`: `gzip.GzipFile(...)` → "Encountered error while
/// decompressing and writing config drive"); Ferric also takes an uncompressed ISO. Bytes that
/// are neither must be refused before the disk is touched, not written as a config-2 partition
/// cloud-init cannot read.
#[test]
fn configdrive_garbage_is_refused() {
    let Some(mut rig) = Rig::new(
        "hostile_image::configdrive_garbage",
        "configdrive-garbage",
        80 << 20,
    ) else {
        return;
    };
    let img = test_image(TableKind::Mbr, 4 << 20, 0xcd).bytes;
    rig.images.add("disk.raw", img.clone());
    let ii = info(&rig.url("disk.raw"), &sha256_hex(&img), Some("raw"));
    let garbage = base64::engine::general_purpose::STANDARD.encode(pattern(256 << 10, 3));
    rig.run(Case {
        name: "base64 of 256 KiB of garbage (neither gzip nor ISO)".into(),
        image_info: ii,
        blobs: vec![],
        configdrive: Some(json!(garbage)),
        expect: Expect::Fails(&["config drive"]),
    });
    rig.finish();
}

/// A qcow2 whose header claims 2^32-1 L1 entries (a 32 GiB L1 table overlapping every other
/// structure of the file). qemu refuses to open it ("Active L1 table too large"), so IPA's
/// `qemu-img convert` fails; a table that cannot exist must be refused, not half-read.
#[test]
fn qcow2_absurd_l1_size_is_refused() {
    let Some(mut rig) = Rig::new("hostile_image::qcow2_l1", "qcow2-absurd-l1", 32 << 20) else {
        return;
    };
    let guest = test_image(TableKind::Mbr, 8 << 20, 0x9c0).bytes;
    let mut f = build_qcow2(&Qcow2Spec::plain(guest));
    set_be32(&mut f.bytes, Qcow2File::L1_SIZE, u32::MAX);
    let c = served(
        &rig,
        "qcow2 L1 size 2^32-1 (32 GiB table)",
        "l1.qcow2",
        f.bytes,
        Fault::None,
        Some("qcow2"),
        Expect::Fails(&["l1", "qcow2"]),
    );
    rig.run(c);
    rig.finish();
}

/// Several L1 entries naming the same L2 table: qemu reads it (each 2 MiB of the guest maps
/// through the one table; `qemu-img convert` agrees with [`qcow2_guest`]). Either qemu's
/// reading or a refusal is right; a SUCCEEDED half image (only one L1 entry's range written,
/// as an early converter did) is not.
#[test]
fn qcow2_shared_l2_table_is_read_like_qemu_or_refused() {
    let Some(mut rig) = Rig::new(
        "hostile_image::qcow2_shared_l2",
        "qcow2-shared-l2",
        32 << 20,
    ) else {
        return;
    };
    let guest = test_image(TableKind::Mbr, 8 << 20, 0x9c0).bytes;
    let mut f = build_qcow2(&Qcow2Spec {
        cluster_bits: 12,
        ..Qcow2Spec::plain(guest)
    });
    let first = f.l2_offsets[0];
    for i in 0..f.l1_size {
        f.set_l1(i, first);
    }
    let want = qcow2_guest(&f.bytes).expect("qemu-readable");
    let c = served(
        &rig,
        "qcow2 4 KiB clusters, all L1 entries → one L2 table",
        "shared.qcow2",
        f.bytes,
        Fault::None,
        Some("qcow2"),
        Expect::FailsOrWrites(&["qcow2"], want),
    );
    rig.run(c);
    rig.finish();
}
