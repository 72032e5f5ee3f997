#!/usr/bin/env python3
"""Helpers for tests/real-ironic/run.sh (standard library only, pycdlib optional).

Subcommands:
  make-image OUT MIB              raw whole-disk image: GPT, one partition, random payload
  verify-deploy DEV IMAGE [1|0]   the image is on DEV and (1, default) a config-2 partition
                                  follows it
  verify-inspect AGENT.json IRONIC.json PORTS.json PXE_MAC NODE.json
                                  Ironic stored the inventory the agent produces, created a
                                  port for PXE_MAC and set properties.cpu_arch
  verify-clean DEV full|metadata IMAGE_SIZE
                                  DEV was erased the way the clean steps promise
  record-proxy OUT.jsonl LPORT=HOST:PORT:DIR ...
                                  HTTP proxy that records every exchange, one JSON line each,
                                  in the format of shared/recordings (dir, method, path, ...)

Every check prints what it found; a failed check exits 1 with the reason.
"""

import http.client
import http.server
import json
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import zlib

SECTOR = 512
MIB = 1 << 20


def fail(msg):
    print(f"CHECK FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------- image


def make_image(out, mib):
    size = int(mib) * MIB
    with open(out, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n
    # One Linux partition from 1 MiB to the end of the usable area; sfdisk writes the
    # protective MBR, both GPT headers and both entry arrays over the random bytes.
    script = "label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n"
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", out],
                   input=script.encode(), check=True)
    gpt = read_gpt(open(out, "rb"), size, lba=1)
    if gpt is None or len(gpt["parts"]) != 1:
        fail("sfdisk did not produce the expected GPT")
    print(f"image {out}: {size} bytes, partition {gpt['parts'][0]['first']}..{gpt['parts'][0]['last']}")


# --------------------------------------------------------------------------- GPT


def read_gpt(f, dev_size, lba):
    """Parse the GPT header at `lba` and its entries; None if absent or corrupt."""
    f.seek(lba * SECTOR)
    hdr = f.read(SECTOR)
    if len(hdr) < 92 or hdr[:8] != b"EFI PART":
        return None
    hsize = struct.unpack_from("<I", hdr, 12)[0]
    if not 92 <= hsize <= SECTOR:
        return None
    crc = struct.unpack_from("<I", hdr, 16)[0]
    h = bytearray(hdr[:hsize])
    h[16:20] = b"\0\0\0\0"
    if zlib.crc32(h) & 0xFFFFFFFF != crc:
        return {"bad": "header CRC"}
    my_lba, alt_lba, first_usable, last_usable = struct.unpack_from("<QQQQ", hdr, 24)
    disk_guid = str(uuid.UUID(bytes_le=hdr[56:72]))
    ent_lba, n_ent, ent_size, ent_crc = struct.unpack_from("<QIII", hdr, 72)
    if ent_size < 128 or n_ent > 4096:
        return {"bad": "entry geometry"}
    f.seek(ent_lba * SECTOR)
    ents = f.read(n_ent * ent_size)
    if zlib.crc32(ents) & 0xFFFFFFFF != ent_crc:
        return {"bad": "entries CRC"}
    parts = []
    for i in range(n_ent):
        e = ents[i * ent_size:(i + 1) * ent_size]
        if e[:16] == b"\0" * 16:
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        name = e[56:128].decode("utf-16-le", "replace").rstrip("\0")
        parts.append({
            "index": i + 1,
            "type": str(uuid.UUID(bytes_le=e[0:16])),
            "guid": str(uuid.UUID(bytes_le=e[16:32])),
            "first": first,
            "last": last,
            "name": name,
        })
    return {"my_lba": my_lba, "alt_lba": alt_lba, "first_usable": first_usable,
            "last_usable": last_usable, "disk_guid": disk_guid, "parts": parts}


def dev_size(path):
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


def iso_volume_id(f, offset):
    f.seek(offset + 16 * 2048)
    pvd = f.read(2048)
    if pvd[0:1] != b"\x01" or pvd[1:6] != b"CD001":
        return None
    return pvd[40:72].decode("ascii", "replace").strip()


def verify_deploy(dev, image, configdrive="1"):
    size = dev_size(dev)
    img = open(image, "rb").read()
    n = len(img)
    ok = True
    with open(dev, "rb") as f:
        on_disk = f.read(n)
        # The GPT structures may legitimately change (a config drive partition is added and
        # the backup header moves to the real end of the disk); every other byte must not.
        gpt_primary = (SECTOR, 34 * SECTOR)
        gpt_backup = (n - 33 * SECTOR, n)
        regions = [(0, 440), (gpt_primary[1], gpt_backup[0])]
        for a, b in regions:
            if on_disk[a:b] != img[a:b]:
                first = next(i for i in range(a, b) if on_disk[i] != img[i])
                print(f"  image bytes {a}..{b}: DIFFER (first difference at byte {first})")
                ok = False
            else:
                print(f"  image bytes {a}..{b}: identical")
        if not ok:
            fail("the disk does not hold the image")

        img_gpt = read_gpt(open(image, "rb"), n, 1)
        gpt = read_gpt(f, size, 1)
        if not gpt or "bad" in gpt:
            fail(f"primary GPT on {dev} unreadable: {gpt}")
        last_lba = size // SECTOR - 1
        print(f"  primary GPT: disk guid {gpt['disk_guid']}, {len(gpt['parts'])} partitions, "
              f"backup at LBA {gpt['alt_lba']} (disk's last LBA {last_lba})")
        if configdrive != "1":
            # Without a config drive the table may stay as the image had it (IPA leaves it),
            # or be moved to the end of the disk; either way the partitions must be the image's.
            if gpt["parts"] != img_gpt["parts"]:
                fail(f"partitions changed without a config drive: {gpt['parts']}")
            backup = read_gpt(f, size, gpt["alt_lba"])
            if not backup or "bad" in backup or backup["parts"] != gpt["parts"]:
                fail(f"backup GPT at LBA {gpt['alt_lba']} unreadable or different: {backup}")
            print("verify-deploy (no config drive): OK")
            return
        if gpt["alt_lba"] != last_lba:
            fail(f"the backup GPT header is at LBA {gpt['alt_lba']}, not at the end of the disk ({last_lba})")
        backup = read_gpt(f, size, last_lba)
        if not backup or "bad" in backup:
            fail(f"backup GPT at the end of the disk unreadable: {backup}")
        if backup["parts"] != gpt["parts"]:
            fail("backup GPT entries differ from the primary ones")
        for p in img_gpt["parts"]:
            if p not in gpt["parts"]:
                fail(f"the image's partition {p} is gone or changed on disk")
        new = [p for p in gpt["parts"] if p not in img_gpt["parts"]]
        if len(new) != 1:
            fail(f"expected exactly one new (config drive) partition, found {new}")
        cd = new[0]
        print(f"  config drive partition #{cd['index']}: LBA {cd['first']}..{cd['last']} "
              f"name '{cd['name']}' type {cd['type']}")
        if cd["first"] * SECTOR < n:
            fail("the config drive partition overlaps the image")
        label = iso_volume_id(f, cd["first"] * SECTOR)
        print(f"  ISO 9660 volume id in it: {label!r}")
        if label != "config-2":
            fail("the new partition does not start with an ISO 9660 filesystem labelled config-2")
        check_configdrive_files(dev, cd["first"] * SECTOR, (cd["last"] - cd["first"] + 1) * SECTOR)
    print("verify-deploy: OK")


def check_configdrive_files(dev, offset, length):
    """Read openstack/latest/meta_data.json from the ISO (needs pycdlib: Ironic's venv has it)."""
    try:
        import io

        import pycdlib
    except ImportError:
        print("  (pycdlib not available: config drive contents not checked)")
        return
    with open(dev, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    out = io.BytesIO()
    for kw in ({"rr_path": "/openstack/latest/meta_data.json"},
               {"joliet_path": "/openstack/latest/meta_data.json"},
               {"iso_path": "/OPENSTAC/LATEST/META_DAT.JSO;1"}):
        try:
            iso.get_file_from_iso_fp(out, **kw)
            break
        except Exception:  # noqa: BLE001 - try the next naming scheme
            out = io.BytesIO()
    else:
        fail("openstack/latest/meta_data.json not found in the config drive")
    meta = json.loads(out.getvalue())
    print(f"  config drive meta_data.json: hostname={meta.get('hostname')!r} uuid={meta.get('uuid')!r}")
    if meta.get("hostname") != "ferric-test":
        fail("the config drive is not the one the harness asked Ironic for")


def verify_clean(dev, mode, image_size):
    size = dev_size(dev)
    image_size = int(image_size)
    with open(dev, "rb") as f:
        if mode == "full":
            zero = bytes(4 * MIB)
            pos = 0
            while pos < size:
                chunk = f.read(4 * MIB)
                if chunk != zero[:len(chunk)]:
                    first = next(i for i, b in enumerate(chunk) if b)
                    fail(f"byte {pos + first} of {dev} is not zero after erase_devices")
                pos += len(chunk)
            print(f"  all {size} bytes are zero")
        else:
            f.seek(0)
            mbr = f.read(SECTOR)
            if mbr[510:512] == b"\x55\xaa":
                fail("an MBR boot signature survived erase_devices_metadata")
            for lba, what in ((1, "primary"), (size // SECTOR - 1, "end-of-disk backup"),
                              (image_size // SECTOR - 1, "old image's backup")):
                f.seek(lba * SECTOR)
                if f.read(8) == b"EFI PART":
                    fail(f"the {what} GPT header (LBA {lba}) survived erase_devices_metadata")
            print("  no MBR signature, no GPT header left")
    print(f"verify-clean ({mode}): OK")


def verify_inspect(agent_json, ironic_json, ports_json, pxe_mac, node_json):
    with open(agent_json) as f:
        agent = json.load(f)
    with open(ironic_json) as f:
        stored = json.load(f)
    with open(ports_json) as f:
        ports = json.load(f)["ports"]
    with open(node_json) as f:
        node = json.load(f)
    inv = stored.get("inventory")
    if inv != agent:
        for key in sorted(set(agent) | set(inv or {})):
            if (inv or {}).get(key) != agent.get(key):
                print(f"inventory[{key!r}]: ironic {json.dumps((inv or {}).get(key))[:400]}")
                print(f"{' ' * (len(key) + 13)}agent  {json.dumps(agent.get(key))[:400]}")
        fail("the inventory Ironic stored differs from the agent's")
    if not inv["interfaces"] or not inv["disks"] or not inv["cpu"]["count"]:
        fail("the inventory is empty where the fixture is not")
    by_mac = {p["address"].lower(): p for p in ports}
    port = by_mac.get(pxe_mac.lower())
    if port is None:
        fail(f"no port for the PXE interface {pxe_mac}: {sorted(by_mac)}")
    if port.get("pxe_enabled") is not True:
        fail(f"the PXE interface's port is not pxe_enabled: {port}")
    arch = node["properties"].get("cpu_arch")
    if arch != inv["cpu"]["architecture"]:
        fail(f"properties.cpu_arch is {arch!r}, the inventory says {inv['cpu']['architecture']!r}")
    print(f"verify-inspect: OK ({len(inv['interfaces'])} interfaces, {len(inv['disks'])} disks, "
          f"{inv['cpu']['count']} CPUs, {inv['memory']['physical_mb']} MiB; port {pxe_mac}; "
          f"cpu_arch {arch}; plugin_data keys {sorted(stored.get('plugin_data') or {})})")


# --------------------------------------------------------------------------- proxy

HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


def _body(raw):
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def record_proxy(out, *routes):
    lock = threading.Lock()
    t0 = time.time()
    sink = open(out, "a", buffering=1)

    def make_handler(host, port, direction):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                sys.stderr.write(f"[{direction}] " + (fmt % args) + "\n")

            def _read_body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        n = int(self.rfile.readline().split(b";")[0], 16)
                        if n == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(n)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _forward(self):
                body = self._read_body()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                headers["Host"] = f"{host}:{port}"
                conn = http.client.HTTPConnection(host, port, timeout=180)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    status, rheaders = resp.status, resp.getheaders()
                except OSError as e:
                    status, rheaders, data = 502, [("Content-Type", "text/plain")], str(e).encode()
                finally:
                    conn.close()
                u = urllib.parse.urlsplit(self.path)
                rec = {
                    "dir": direction, "method": self.command, "path": u.path,
                    "query": dict(urllib.parse.parse_qsl(u.query)) or None,
                    "req_headers": dict(self.headers.items()), "body": _body(body),
                    "status": status, "resp_headers": dict(rheaders), "response": _body(data),
                    "rel": round(time.time() - t0, 3),
                }
                with lock:
                    sink.write(json.dumps(rec) + "\n")
                self.send_response_only(status)
                for k, v in rheaders:
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        return Handler

    servers = []
    for r in routes:
        lport, target = r.split("=", 1)
        host, port, direction = target.split(":", 2)
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(lport)),
                                              make_handler(host, int(port), direction))
        srv.daemon_threads = True
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        print(f"proxy 127.0.0.1:{lport} -> {host}:{port} ({direction})", flush=True)
    threading.Event().wait()


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    cmd, args = sys.argv[1], sys.argv[2:]
    {"make-image": make_image, "verify-deploy": verify_deploy,
     "verify-clean": verify_clean, "verify-inspect": verify_inspect,
     "record-proxy": record_proxy}[cmd](*args)


if __name__ == "__main__":
    main()
