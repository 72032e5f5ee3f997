#!/usr/bin/env python3
"""VALIDATION ONLY: a tiny IPA-like stand-in used to prove that run.sh drives a real Ironic
correctly before the Ferric agent could. The real test runs the Ferric binary
(FERRIC_AGENT); never point CI at this file.

It accepts the Ferric agent's flags (--api-url, --install-device, --listen, --advertise,
--power-action exit, --cmdline-file) and does just enough: lookup, heartbeats,
get_deploy_steps / write_image (sha256, raw, config drive partition via sgdisk),
get_partition_uuids, install_bootloader, power_off (exits), get_clean_steps,
erase_devices_metadata, erase_devices. With STANDIN_TLS=1 it serves HTTPS with a fresh
self-signed certificate (IP SAN = the advertised host) and sends it as agent_verify_ca, as
IPA's automatic TLS does.
"""

import argparse
import base64
import gzip
import hashlib
import http.server
import json
import os
import random
import ssl
import subprocess
import tempfile
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

VERSION = "0.0.0.harness-stand-in"
MIB = 1 << 20


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


class Agent:
    def __init__(self, args):
        self.a = args
        self.commands = []
        self.lock = threading.Lock()
        self.busy = None
        self.token = None
        self.node = None
        self.kick = threading.Event()
        self.started = time.time()
        self.proto = "http"
        self.cert_pem = None

    # ------------------------------------------------------------ Ironic side
    def ironic(self, method, path, body=None, version="1.68"):
        req = urllib.request.Request(self.a.api_url.rstrip("/") + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Accept", "application/json")
        req.add_header("X-OpenStack-Ironic-API-Version", version)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
            return r.status, (json.loads(data) if data else None)

    def lookup(self, mac):
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                _, d = self.ironic("GET", "/v1/lookup?addresses=" + mac, version="1.62")
                self.node = d["node"]
                tok = d["config"].get("agent_token")
                if tok and tok != "******":
                    self.token = tok
                log("lookup ok", self.node["uuid"])
                return d
            except urllib.error.HTTPError as e:
                log("lookup", e.code)
            except OSError as e:
                log("lookup error", e)
            time.sleep(1)
        raise SystemExit("lookup timed out")

    def heartbeat_loop(self):
        while True:
            body = {"callback_url": self.proto + "://" + self.a.advertise,
                    "agent_token": self.token, "agent_version": VERSION}
            if self.cert_pem:
                body["agent_verify_ca"] = self.cert_pem
            try:
                st, _ = self.ironic("POST", f"/v1/heartbeat/{self.node['uuid']}", body)
                log("heartbeat", st)
            except urllib.error.HTTPError as e:
                log("heartbeat", e.code, e.read()[:300])
            except OSError as e:
                log("heartbeat error", e)
            self.kick.wait(random.uniform(4, 6))
            self.kick.clear()

    # ------------------------------------------------------------ commands
    def result(self, name, status="RUNNING", res=None, err=None):
        return {"id": str(uuid.uuid4()), "command_name": name.split(".", 1)[1],
                "command_status": status, "command_error": err, "command_result": res}

    def run(self, name, params, wait):
        ext_cmd = {
            "deploy.get_deploy_steps": (True, lambda p: {"deploy_steps": {"GenericHardwareManager": [
                {"step": "erase_devices_metadata", "priority": 0, "interface": "deploy",
                 "reboot_requested": False},
                {"step": "write_image", "priority": 0, "interface": "deploy",
                 "reboot_requested": False}]},
                "hardware_manager_version": {"generic_hardware_manager": "1.2"}}),
            "clean.get_clean_steps": (True, lambda p: {"clean_steps": {"GenericHardwareManager": [
                {"step": "erase_devices", "priority": 10, "interface": "deploy",
                 "reboot_requested": False, "abortable": True},
                {"step": "erase_devices_metadata", "priority": 99, "interface": "deploy",
                 "reboot_requested": False, "abortable": True}]},
                "hardware_manager_version": {"generic_hardware_manager": "1.2"}}),
            "deploy.execute_deploy_step": (False, self.deploy_step),
            "clean.execute_clean_step": (False, self.clean_step),
            "standby.get_partition_uuids": (True, lambda p: {"root uuid": self.disk_id()}),
            "image.install_bootloader": (False, lambda p: None),
            "standby.sync": (True, lambda p: os.sync()),
            "standby.power_off": (False, self.power_off),
            "log.collect_system_logs": (True, lambda p: {"system_logs": base64.b64encode(
                gzip.compress(b"")).decode()}),
        }
        if name not in ext_cmd:
            return 404, {"faultcode": "Client", "faultstring": f"Unknown command: {name}"}
        sync, fn = ext_cmd[name]
        with self.lock:
            if self.busy and self.busy["command_status"] == "RUNNING":
                return 409, {"faultcode": "Client",
                             "faultstring": f"Agent is busy: executing command {self.busy['command_name']}"}
            r = self.result(name)
            self.commands.append(r)
            if not sync:
                self.busy = r

        def work():
            try:
                r["command_result"] = fn(params)
                r["command_status"] = "SUCCEEDED"
            except Exception as e:  # noqa: BLE001 - a stand-in reports every failure
                log("command failed", name, e)
                r["command_status"] = "FAILED"
                r["command_error"] = {"type": type(e).__name__, "code": 500, "message": str(e),
                                      "details": str(e)}
            if not sync:
                self.kick.set()

        if sync or wait:
            work()
        else:
            threading.Thread(target=work, daemon=True).start()
        return 200, r

    def disk_id(self):
        out = subprocess.run(["sgdisk", "-p", self.a.install_device], capture_output=True,
                             text=True).stdout
        for line in out.splitlines():
            if line.startswith("Disk identifier (GUID):"):
                return line.split(":", 1)[1].strip().lower()
        return None

    def deploy_step(self, p):
        step = p["step"]
        if step["step"] != "write_image":
            raise RuntimeError(f"stand-in cannot run deploy step {step['step']}")
        info = step["args"]["image_info"]
        dev = self.a.install_device
        h = hashlib.new(info.get("os_hash_algo") or "sha256")
        with urllib.request.urlopen(info["urls"][0], timeout=60) as r, open(dev, "r+b") as out:
            while chunk := r.read(MIB):
                h.update(chunk)
                out.write(chunk)
            os.fsync(out.fileno())
        if info.get("os_hash_value") and h.hexdigest() != info["os_hash_value"]:
            raise RuntimeError("image checksum mismatch")
        cd = step["args"].get("configdrive")
        if cd:
            iso = gzip.decompress(base64.b64decode(cd))
            subprocess.run(["sgdisk", "-e", dev], check=True, capture_output=True)
            subprocess.run(["sgdisk", "-n", "0:-64M:0", "-c", "0:config-2", dev], check=True,
                           capture_output=True)
            out = subprocess.run(["sgdisk", "-p", dev], capture_output=True, text=True).stdout
            last = out.strip().splitlines()[-1].split()
            start = int(last[1]) * 512
            with open(dev, "r+b") as f:
                f.seek(start)
                f.write(iso)
                os.fsync(f.fileno())
        return {"deploy_result": {"result": f"prepare_image: image ({info['id']}) written to device {dev} root_uuid={self.disk_id()}"},
                "deploy_step": step}

    def clean_step(self, p):
        step = p["step"]
        dev = self.a.install_device
        with open(dev, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if step["step"] == "erase_devices_metadata":
                for off in (0, size - MIB):
                    f.seek(off)
                    f.write(bytes(MIB))
                f.seek(63 * MIB)  # the old image's backup GPT
                f.write(bytes(MIB))
            elif step["step"] == "erase_devices":
                f.seek(0)
                for _ in range(size // (4 * MIB)):
                    f.write(bytes(4 * MIB))
            else:
                raise RuntimeError(f"stand-in cannot run clean step {step['step']}")
            os.fsync(f.fileno())
        return {"clean_result": None, "clean_step": step}

    def power_off(self, p):
        def later():
            time.sleep(0.5)
            log("power_off: exiting")
            os._exit(0)
        threading.Thread(target=later, daemon=True).start()


def serve(agent):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            log("api", fmt % args)

        def reply(self, code, obj):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def authed(self, q):
            if q.get("agent_token") != agent.token:
                self.reply(401, {"faultcode": "Client", "faultstring": "401 Unauthorized: Token invalid."})
                return False
            return True

        def do_GET(self):
            u = urllib.parse.urlsplit(self.path)
            q = dict(urllib.parse.parse_qsl(u.query))
            path = u.path.rstrip("/").removeprefix("/v1")
            if path == "/status":
                return self.reply(200, {"started_at": agent.started, "version": VERSION})
            if path == "/commands":
                if self.authed(q):
                    self.reply(200, {"commands": agent.commands})
                return
            self.reply(404, {"faultcode": "Client", "faultstring": "not found"})

        def do_POST(self):
            u = urllib.parse.urlsplit(self.path)
            q = dict(urllib.parse.parse_qsl(u.query))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if u.path.rstrip("/").removeprefix("/v1") != "/commands":
                return self.reply(404, {"faultcode": "Client", "faultstring": "not found"})
            if not self.authed(q):
                return
            try:
                d = json.loads(body)
                name, params = d["name"], d["params"]
            except (ValueError, KeyError):
                return self.reply(400, {"faultcode": "Client", "faultstring": "bad command"})
            log("command", name)
            code, r = agent.run(name, params, q.get("wait") == "true")
            self.reply(code, r)

    host, port = agent.a.listen.rsplit(":", 1)
    srv = http.server.ThreadingHTTPServer((host, int(port)), H)
    srv.daemon_threads = True
    if os.environ.get("STANDIN_TLS") == "1":
        d = tempfile.mkdtemp()
        adv_host = agent.a.advertise.rsplit(":", 1)[0]
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                        f"/CN={adv_host}", "-addext", f"subjectAltName=IP:{adv_host}",
                        "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"],
                       check=True, capture_output=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"{d}/cert.pem", f"{d}/key.pem")
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        agent.proto = "https"
        agent.cert_pem = open(f"{d}/cert.pem").read()
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api-url", required=True)
    ap.add_argument("--install-device", required=True)
    ap.add_argument("--listen", default="127.0.0.1:9999")
    ap.add_argument("--advertise", default="127.0.0.1:9999")
    ap.add_argument("--power-action", default="exit")
    ap.add_argument("--cmdline-file", required=True)
    args = ap.parse_args()
    mac = None
    for word in open(args.cmdline_file).read().split():
        if word.startswith("BOOTIF="):
            mac = word.split("=", 1)[1][3:].replace("-", ":")
    agent = Agent(args)
    serve(agent)
    agent.lookup(mac)
    agent.heartbeat_loop()


if __name__ == "__main__":
    main()
