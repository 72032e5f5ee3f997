#!/usr/bin/env python3
"""Write the seed corpora under fuzz/corpus/<target>/ (deterministic; re-run to regenerate).

Sources: the recorded conductor conversations (/work/shared/recordings, or RECORDINGS=dir),
the config drive fixture in tests/fixtures/configdrive.b64, and small hand-made inputs
(kernel command lines, checksum files, GPT/MBR disks). Every input is small: the targets'
-max_len in scripts/fuzz.sh is 4 to 64 KiB.

Usage: fuzz/make_seeds.py   (from anywhere; writes next to this file)
"""
import base64
import binascii
import gzip
import hashlib
import json
import os
import struct
import sys
import uuid
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RECORDINGS = os.environ.get("RECORDINGS", "/work/shared/recordings")
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def recordings():
    out = []
    for f in sorted(os.listdir(RECORDINGS)):
        if f.endswith(".jsonl"):
            with open(os.path.join(RECORDINGS, f)) as fh:
                out += [(f, i, json.loads(l)) for i, l in enumerate(fh)]
    return out


def slim(body):
    """Drop what makes a recorded body large and is not parsed by the fuzzed code: the
    config drive's base64 (fuzzed by its own target) and most of the node object."""
    b = json.loads(json.dumps(body))
    p = b.get("params", {})
    node = p.get("node")
    if isinstance(node, dict):
        p["node"] = {k: node[k] for k in ("uuid", "properties", "instance_info") if k in node}
        ii = p["node"].get("instance_info")
        if isinstance(ii, dict):
            p["node"]["instance_info"] = {k: v for k, v in ii.items() if k != "configdrive"}
    p.pop("ports", None)
    args = p.get("step", {}).get("args") if isinstance(p.get("step"), dict) else None
    if isinstance(args, dict):
        if "configdrive" in args:
            args["configdrive"] = "H4sIAAAAAAAAA0tMSs4vyk/LTEktSixJTQEAAP//"
        ii = args.get("image_info")
        if isinstance(ii, dict) and "configdrive" in ii:
            ii["configdrive"] = "aGVsbG8="
    return b


def compact(v):
    return json.dumps(v, separators=(",", ":"))


def http_request(method, path, query, headers, body):
    q = "&".join(f"{k}={v}" for k, v in (query or {}).items())
    target = path + ("?" + q if q else "")
    data = compact(body).encode() if body is not None else b""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1:9999"]
    for k, v in (headers or {}).items():
        if k.lower() in ("content-length", "host"):
            continue
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def api_seeds(recs):
    seen = set()
    for f, i, r in recs:
        if r["dir"] != "ironic->agent":
            continue
        body = r.get("body")
        slimmed = slim(body) if isinstance(body, dict) else None
        name = slimmed.get("name") if slimmed else "get"
        key = (r["method"], name, r["path"])
        if key in seen:
            continue
        seen.add(key)
        tag = f"{f[:2]}-{i:02d}-{name}"
        put("api_request", tag, http_request(r["method"], r["path"], r.get("query"),
                                             r.get("req_headers"), slimmed))
        if slimmed:
            # The runner never runs these for real (api_command skips them); keep their shape
            # with a harmless name so mutations start from real parameters.
            if slimmed["name"] == "deploy.execute_deploy_step":
                s = json.loads(json.dumps(slimmed))
                s["params"]["step"]["step"] = "erase_devices_metadata"
                put("api_command", tag + "-other-step", compact(s))
                s["params"]["deploy_version"] = {"generic_hardware_manager": "1.0"}
                put("api_command", tag + "-version-mismatch", compact(s))
            put("api_command", tag, compact(slimmed))
            # Image info and root device hints travel in these bodies too.
            step = slimmed["params"].get("step")
            if isinstance(step, dict):
                ii = step.get("args", {}).get("image_info")
                if isinstance(ii, dict):
                    put("image_info", tag, json.dumps(ii, indent=1))
    # Hand-made requests: the routes the recordings do not show.
    extra = {
        "root": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "v1": b"GET /v1 HTTP/1.1\r\nHost: a\r\n\r\n",
        "status": b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\n",
        "command-wait": b"GET /v1/commands/1234?agent_token=x&wait=true HTTP/1.1\r\nHost: a\r\n\r\n",
        "chunked": b"POST /v1/commands?agent_token=x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"1a\r\n{\"name\":\"a.b\",\"params\":{}}\r\n0\r\n\r\n",
        "too-large": b"POST /v1/commands HTTP/1.1\r\nHost: a\r\nContent-Length: 100663297\r\n\r\n{}",
        "pipelined": b"GET /v1/status HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/commands HTTP/1.1\r\nHost: a\r\n\r\n",
        "expect": b"POST /v1/commands/ HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
        "put": b"PUT /v1/commands HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    }
    for k, v in extra.items():
        put("api_request", "hand-" + k, v)
    cmds = {
        "list-busy": [{"name": "image.install_bootloader", "params": {"target_boot_mode": "uefi"}},
                      {"name": "deploy.get_deploy_steps", "params": {}}],
        "no-dot": {"name": "get_deploy_steps", "params": {}},
        "unknown-ext": {"name": "x.y", "params": {}},
        "unknown-cmd": {"name": "standby.x-y", "params": {}},
        "bad-step": {"name": "deploy.execute_deploy_step", "params": {"step": "write_image"}},
        "node-info": [{"name": "deploy.get_deploy_steps", "params": {"node": {"uuid": "u"}}},
                      {"name": "poll.get_node_info", "params": {}}],
        "hardware-info": {"name": "poll.get_hardware_info", "params": {}},
    }
    for k, v in cmds.items():
        put("api_command", "hand-" + k, compact(v))


def cmdline_seeds():
    lines = {
        "ferric-ramdisk": "BOOT_IMAGE=/vmlinuz console=ttyS0,115200n8 ipa-api-url=http://10.0.0.1:6385 "
                          "BOOTIF=01-52-54-00-12-34-56 ipa-debug=1 ipa-insecure=1",
        "e2e": "console=ttyS0 ipa-api-url=http://127.0.0.1:6385 BOOTIF=01-52-54-00-12-34-56 "
               "ipa-lookup-interval=1 ipa-lookup-timeout=120 ipa-listen-host=127.0.0.1 "
               "ipa-listen-port=9999 ipa-advertise-host=127.0.0.1",
        "quoted": 'ipa-api-url="http://a:6385,https://[fd00::1]:6385/" ipa-global-request-id="req-1 2" '
                  "ipa-advertise-protocol=https -- ipa-standalone=1",
        "standalone": "ipa-standalone ipa-agent-token=abcdefgh ipa-listen-host=:: ipa-advertise-port=65535",
        "timeouts": "ipa-api-url=http://x ipa-http-request-timeout=0.5 ipa-lookup-timeout=1e3 "
                    "ipa-image-download-connection-retries=3 "
                    "ipa-image-download-connection-retry-interval=2.5 ipa-ironic-api-version=1.68",
        "ipa-devstack": "ipa-inspection-callback-url=http://192.168.1.1:5050/v1/continue "
                        "ipa-inspection-collectors=default,logs ipa-enable-auto-tls=0 "
                        "ipa-api-url=http://192.168.1.1:6385 nofb nomodeset vga=normal",
    }
    for k, v in lines.items():
        put("cmdline", k, v)


def checksum_seeds():
    img = b"image bytes\n"
    md5 = hashlib.md5(img).hexdigest()
    s256 = hashlib.sha256(img).hexdigest()
    s512 = hashlib.sha512(img).hexdigest()
    put("checksum_file", "gnu-text", f"disk.raw\n{s256}  disk.raw\n{s256}  other.qcow2\n")
    put("checksum_file", "gnu-binary", f"disk.raw\n# comment\n{s512} *./disk.raw\n")
    put("checksum_file", "bsd", f"fedora.qcow2\nSHA256 (other.iso) = {s256}\nSHA256 (fedora.qcow2) = {s256}\n")
    put("checksum_file", "bare", f"disk.raw\n{md5}\n")
    put("checksum_file", "crlf", f"a b.img\r\n{s256.upper()}  a b.img\r\n\r\n")
    put("checksum_file", "none", f"disk.raw\n{s256}  disk.raw.xz\n")


def configdrive_seeds():
    with open(os.path.join(REPO, "tests/fixtures/configdrive.b64")) as f:
        b64 = f.read().strip()
    raw = base64.b64decode(b64)
    put("configdrive", "ironic-b64", b"\x00" + b64.encode())
    put("configdrive", "ironic-gzip", b"\x01" + raw)
    put("configdrive", "ironic-gzip-wrapped", b"\x02" + raw)
    put("configdrive", "url-body-b64", b"\x03" + b64.encode()[:4000])
    put("configdrive", "url-fails", b"\x04example.com/cd")
    # An uncompressed ISO 9660 volume descriptor labelled config-2, and a gzip with two members.
    iso = bytearray(0x8000 + 2048)
    iso[0x8000:0x8006] = b"\x01CD001"
    iso[0x8028:0x8048] = b"config-2".ljust(32)
    put("configdrive", "plain-iso", b"\x01" + gzip.compress(bytes(iso), mtime=0))
    put("configdrive", "two-members", b"\x01" + gzip.compress(b"a", mtime=0) + gzip.compress(b"b", mtime=0))


def image_info_seeds():
    s256 = "e6674a372fc17192cbd0290663b889467ffe27da8c4b6b6781f1d9b113d74934"
    seeds = {
        "legacy-md5": {"id": "i", "urls": ["http://h/a.img"], "checksum": "0" * 32},
        "checksum-url": {"id": "i", "urls": ["https://h/d/a.qcow2"], "checksum": "http://h/d/SHA256SUMS",
                         "disk_format": "qcow2"},
        "os-hash-url": {"id": "i", "urls": ["http://h/a"], "os_hash_algo": "sha512",
                        "os_hash_value": "https://h/SHA512SUMS",
                        "proxies": {"http": "http://proxy:3128", "https": "", "all": None},
                        "no_proxy": "localhost,.example.com,10.0.0.0/8"},
        "fallback": {"id": "i", "urls": ["http://h/a", "http://mirror/a"], "os_hash_algo": "sha3_256",
                     "os_hash_value": "ab", "checksum": s256},
        "auth": {"id": "i", "urls": ["http://h/a"], "os_hash_algo": "sha256", "os_hash_value": s256,
                 "image_server_auth_strategy": "http_basic", "image_server_user": "u",
                 "image_server_password": "p",
                 "image_request_authorization": base64.b64encode(b"Bearer abc").decode()},
    }
    for k, v in seeds.items():
        put("image_info", "hand-" + k, json.dumps(v))


def hints_seeds(recs):
    seeds = {
        "size": {"size": ">= 10"},
        "name": {"name": "/dev/sda"},
        "name-short": {"name": "nvme0n1"},
        "or": {"serial": "<or> z3t1abcd <or> S4EVNX0N 123"},
        "rotational": {"rotational": "true"},
        "model-wwn": {"model": "s== big  disk", "wwn": "eui.0025388b91b2a1c3"},
        "in": {"vendor": "<in> 0x1af4", "tran": "virtio"},
        "numeric": {"size": 20, "rotational": False},
        "hctl-bypath": {"hctl": "0:0:0:0", "by_path": "/dev/disk/by-path/pci-0000:00:1f.2-ata-1"},
        "legacy-eq": {"size": "= 100", "wwn_with_extension": "s!= 0x1"},
        "empty": {},
    }
    for k, v in seeds.items():
        put("hints", k, json.dumps(v))
    for f, i, r in recs:
        body = r.get("body")
        node = body.get("params", {}).get("node") if isinstance(body, dict) and isinstance(body.get("params"), dict) else None
        if isinstance(node, dict):
            rd = node.get("properties", {}).get("root_device")
            if rd:
                put("hints", f"rec-{f[:2]}-{i:02d}", json.dumps(rd))


# --- partition tables --------------------------------------------------------------------

SECTOR = 512


def mbr(entries, signature=0x1BADB002, boot=b""):
    s = bytearray(SECTOR)
    s[: len(boot)] = boot
    s[440:444] = struct.pack("<I", signature)
    for n, (kind, start, count) in enumerate(entries):
        s[446 + 16 * n: 462 + 16 * n] = struct.pack("<B3sB3sII", 0, b"\0\0\0", kind, b"\0\0\0", start, count)
    s[510:512] = b"\x55\xaa"
    return s


def guid(text):
    return uuid.UUID(text).bytes_le


def gpt_disk(sectors, parts, num_entries=128, esize=128):
    """A GPT disk image of `sectors` sectors with correct CRCs."""
    disk = bytearray(sectors * SECTOR)
    disk[0:SECTOR] = mbr([(0xEE, 1, min(sectors - 1, 0xFFFFFFFF))], signature=0)
    arr = bytearray(num_entries * esize)
    for n, (tguid, first, last, name) in enumerate(parts):
        e = bytearray(esize)
        e[0:16] = guid(tguid)
        e[16:32] = uuid.UUID(int=n + 1).bytes_le
        e[32:48] = struct.pack("<QQ", first, last)
        nm = name.encode("utf-16-le")[:72]
        e[56:56 + len(nm)] = nm
        arr[n * esize:(n + 1) * esize] = e
    arr_sectors = (len(arr) + SECTOR - 1) // SECTOR
    first_usable = 2 + arr_sectors
    last_usable = sectors - 2 - arr_sectors

    def header(my, alt, entries_lba):
        h = bytearray(92)
        struct.pack_into("<8sIIIIQQQQ16sQIII", h, 0, b"EFI PART", 0x10000, 92, 0, 0, my, alt,
                         first_usable, last_usable, uuid.UUID(int=0xF00D).bytes_le, entries_lba,
                         num_entries, esize, zlib.crc32(arr))
        struct.pack_into("<I", h, 16, zlib.crc32(h))
        return bytes(h).ljust(SECTOR, b"\0")

    disk[SECTOR:2 * SECTOR] = header(1, sectors - 1, 2)
    disk[2 * SECTOR:2 * SECTOR + len(arr)] = arr
    bstart = (sectors - 1 - arr_sectors) * SECTOR
    disk[bstart:bstart + len(arr)] = arr
    disk[(sectors - 1) * SECTOR:] = header(sectors - 1, 1, sectors - 1 - arr_sectors)
    return disk


def partition_seeds():
    linux = "0fc63daf-8483-4772-8e79-3d69d8477de4"
    esp = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    small = gpt_disk(16, [(esp, 4, 8, "EFI"), (linux, 9, 13, "config-2")], num_entries=4)
    put("partition_table", "gpt-small", b"\x03" + small)
    # The standard 128-entry array: 34 sectors in front, 33 at the end.
    std = gpt_disk(72, [(linux, 34, 38, "root")])
    put("partition_table", "gpt-128", b"\x03" + std)
    # Damaged primary header: the table must come from the backup.
    bad = bytearray(small)
    bad[SECTOR + 40] ^= 0xFF
    put("partition_table", "gpt-primary-damaged", b"\x02" + bad)
    # Backup written where a smaller image ended (what fix_gpt_backup repairs): disk grown.
    grown = small + bytearray(8 * SECTOR)
    put("partition_table", "gpt-backup-mid-disk", b"\x00" + grown)
    m = mbr([(0x83, 2, 4), (0x05, 6, 10)])
    disk = bytearray(16 * SECTOR)
    disk[0:SECTOR] = m
    # EBR chain inside the extended partition (LBA 6..15): two logicals.
    disk[6 * SECTOR:7 * SECTOR] = mbr([(0x83, 1, 2), (0x05, 4, 4)], signature=0)
    disk[10 * SECTOR:11 * SECTOR] = mbr([(0x82, 1, 2)], signature=0)
    put("partition_table", "mbr-logical", b"\x00" + disk)
    put("partition_table", "mbr-4-primaries", b"\x00" + mbr([(0x83, 1, 1), (0x83, 2, 1), (0x0C, 3, 1), (0x07, 4, 1)]))
    fat = bytearray(SECTOR)
    fat[0] = 0xEB
    fat[0x36:0x3B] = b"FAT16"
    fat[510:512] = b"\x55\xaa"
    put("partition_table", "fat-boot-sector", b"\x00" + fat)
    hybrid = bytearray(small)
    hybrid[0:SECTOR] = mbr([(0x0C, 4, 5), (0xEE, 1, 3)], signature=0x12345678)
    put("partition_table", "gpt-hybrid-mbr", b"\x03" + hybrid)
    # Edited as for a config drive (flag 4) on a 4 MiB disk (flag 8); see the target.
    put("partition_table", "edit-gpt-grown", b"\x0f" + small)
    put("partition_table", "edit-gpt-128-grown", b"\x0f" + std)
    put("partition_table", "edit-mbr-grown", b"\x0c" + disk)
    put("partition_table", "edit-mbr-full", b"\x0c" + mbr([(0x83, 1, 1), (0x83, 2, 1), (0x0C, 3, 1), (0x07, 4, 1)]))

    # wipe_plan: flag (bit 0: 4096-byte sectors), device size (0: the data's), split byte
    # (255: all data at the start), data.
    def wipe(name, data, size=0, flag=0, split=255):
        put("wipe_plan", name, bytes([flag]) + struct.pack("<Q", size) + bytes([split]) + data)

    wipe("gpt-small", small)
    wipe("gpt-128", std)
    wipe("gpt-primary-damaged", bad)
    wipe("mbr-logical", disk)
    wipe("gpt-hybrid-mbr", hybrid)
    wipe("gpt-128-on-4kn", std, flag=1)
    # A 300 GiB device: the 128-entry GPT's first 34 sectors at its start, the backup array
    # and header at its end (split after 34 of the 72 sectors).
    wipe("gpt-128-300gib", std, size=300 << 30, split=34 * 255 // 72 + 1)
    # A DDF anchor (magic DE11DE11) in the last sector, naming headers 8 and 16 sectors in.
    anchor = bytearray(SECTOR)
    anchor[0:4] = b"\xde\x11\xde\x11"
    anchor[96:104] = struct.pack(">Q", 8)
    anchor[104:112] = struct.pack(">Q", 16)
    wipe("ddf-anchor", bytes(anchor), size=64 << 20, split=0)


def qcow2_seeds():
    """Small qcow2 files from qemu-img (skipped with a note when it is missing), plus the
    compressed containers format detection unwraps. Flag byte: see fuzz_targets/qcow2.rs."""
    import shutil
    import subprocess
    import tempfile
    if not shutil.which("qemu-img"):
        print("qemu-img not found: no qcow2 seeds", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as d:
        raw = os.path.join(d, "disk.raw")
        data = bytearray(256 * 1024)
        for off in (0, 5000, 70000, 200000):
            data[off:off + 700] = bytes((i * 7 + off) & 0xFF for i in range(700))
        data[510:512] = b"\x55\xaa"
        with open(raw, "wb") as f:
            f.write(data)

        def convert(name, *opts):
            out = os.path.join(d, name)
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", *opts, raw, out], check=True)
            with open(out, "rb") as f:
                return f.read()

        put("qcow2", "v3-512", b"\x07" + convert("a", "-o", "cluster_size=512"))
        put("qcow2", "v2-512", b"\x07" + convert("b", "-o", "cluster_size=512,compat=0.10"))
        put("qcow2", "v3-4k-deflate", b"\x07" + convert("c", "-c", "-o", "cluster_size=4096"))
        put("qcow2", "v3-4k-zstd", b"\x07" + convert("d", "-c", "-o", "cluster_size=4096,compression_type=zstd"))
        small = convert("e", "-o", "cluster_size=1024")
        put("qcow2", "v3-1k-no-ranges", b"\x01" + small)
        put("qcow2", "gzip-qcow2", b"\x06" + gzip.compress(small, mtime=0))
        for tool, name in (("xz", "xz-qcow2"), ("zstd", "zstd-raw")):
            if shutil.which(tool):
                payload = small if tool == "xz" else bytes(data[:16384])
                out = subprocess.run([tool, "-c", "-q"], input=payload, capture_output=True, check=True).stdout
                put("qcow2", name, b"\x04" + out)
        back = os.path.join(d, "backed.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw",
                        "-o", "cluster_size=512", back], check=True)
        with open(back, "rb") as f:
            put("qcow2", "backing-file", b"\x07" + f.read())
        put("qcow2", "raw-mbr", b"\x04" + bytes(data[:2048]))


def main():
    recs = recordings()
    api_seeds(recs)
    cmdline_seeds()
    checksum_seeds()
    configdrive_seeds()
    image_info_seeds()
    hints_seeds(recs)
    partition_seeds()
    qcow2_seeds()


if __name__ == "__main__":
    sys.exit(main())
