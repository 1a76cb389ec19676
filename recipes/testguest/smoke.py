#!/usr/bin/env python3
"""Boot pifarm's test guest under QEMU and check it the way pifarm uses it.

Called by smoke.sh, which builds the images and prepares the copies:

  smoke.py boot     IMG LOGDIR   full check of the standard image (pi/raspberry)
  smoke.py seeded   IMG LOGDIR   image with pi locked, seeded with /boot/ssh and
                                 /boot/userconf.txt (password "secret")
  smoke.py timing   IMG LOGDIR   boot to the login prompt, report the time, quit

Environment: SMOKE_SSH_PORT (6700), SMOKE_SERIAL_PORT (6701), SMOKE_QEMU_EXTRA
(extra QEMU arguments, e.g. "-accel tcg,thread=single").
Only the standard library; the host's ssh, ssh-keygen and tar are used.
"""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time

APPEND = ("rw earlyprintk loglevel=8 console=ttyAMA0,115200 dwc_otg.lpm_enable=0 "
          "root=/dev/mmcblk0p2 rootdelay=1")
SSH_PORT = int(os.environ.get("SMOKE_SSH_PORT", "6700"))
SERIAL_PORT = int(os.environ.get("SMOKE_SERIAL_PORT", "6701"))
QEMU_EXTRA = shlex.split(os.environ.get("SMOKE_QEMU_EXTRA", ""))
PROMPT_PI = r"pi@raspberrypi:~ \$ "
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

T0 = time.time()
FAILURES = []


def stamp():
    return "%7.2f" % (time.time() - T0)


def note(msg):
    print("[%s] %s" % (stamp(), msg), flush=True)


def check(ok, what):
    note(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        FAILURES.append(what)
    return ok


class Console:
    """expect-style access to QEMU's serial console on TCP"""

    def __init__(self, port, log, timeout=60):
        end = time.time() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                if time.time() > end:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(0.2)
        self.log = open(log, "w", encoding="utf-8", errors="replace")
        self.buf = ""
        self.seen = ""      # everything, for later searches
        self.eof = False

    def _read(self):
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
            time.sleep(0.2)
            return
        text = data.decode("utf-8", "replace")
        self.log.write(text)
        self.log.flush()
        self.buf += text
        self.seen += text

    def expect(self, pattern, timeout):
        rx = re.compile(pattern)
        end = time.time() + timeout
        while True:
            m = rx.search(ANSI.sub("", self.buf))
            if m:
                # drop what was matched (positions differ after ANSI removal)
                clean = ANSI.sub("", self.buf)
                self.buf = clean[m.end():]
                return m
            if time.time() > end or self.eof:
                return None
            self._read()

    def send(self, text):
        self.sock.sendall(text.encode())

    def run(self, cmd, prompt, timeout=120):
        """run a shell command, return (exit code, output) or (None, partial)"""
        self.buf = ""
        start = len(self.seen)
        self.send(cmd + '; echo "__rc=$?__"\n')
        m = self.expect(r"__rc=(\d+)__", timeout)
        out = ANSI.sub("", self.seen[start:]).replace("\r", "")
        if not m:
            return None, out
        self.expect(prompt, 30)
        return int(m.group(1)), out


class Qemu:
    def __init__(self, image, logdir, tag):
        self.logdir = logdir
        self.tag = tag
        self.qmp_path = os.path.join(logdir, "qmp-%s.sock" % tag)
        boot = os.path.join(logdir, "boot-%s" % tag)
        os.makedirs(boot, exist_ok=True)
        kernel, dtb = os.path.join(boot, "kernel8.img"), os.path.join(boot, "bcm2710-rpi-3-b-plus.dtb")
        for name, dest in (("kernel8.img", kernel), ("bcm2710-rpi-3-b-plus.dtb", dtb)):
            subprocess.run(["mcopy", "-o", "-n", "-i", "%s@@%d" % (image, 8192 * 512), "::" + name, dest],
                           check=True)
        if os.path.exists(self.qmp_path):
            os.unlink(self.qmp_path)
        argv = ["qemu-system-aarch64", "-M", "raspi3b", "-m", "1G", "-smp", "4", "-usb",
                "-append", APPEND,
                "-drive", "media=disk,if=sd,format=raw,file=%s" % image,
                "-dtb", dtb, "-kernel", kernel,
                "-serial", "tcp:127.0.0.1:%d,server,nowait" % SERIAL_PORT,
                "-display", "none",
                "-netdev", "user,id=user0,ipv6=off,net=100.65.63.0/24,"
                           "hostfwd=tcp:127.0.0.1:%d-:22" % SSH_PORT,
                "-netdev", "hubport,id=lan0,hubid=60",
                "-netdev", "hubport,id=wlan0,hubid=61",
                "-device", "usb-mouse", "-device", "usb-kbd",
                "-device", "usb-net,netdev=user0",
                "-device", "usb-net,netdev=lan0",
                "-device", "usb-net,netdev=wlan0",
                "-qmp", "unix:%s,server,nowait" % self.qmp_path] + QEMU_EXTRA
        with open(os.path.join(logdir, "qemu-%s.cmd" % tag), "w") as f:
            f.write(" ".join(shlex.quote(a) for a in argv) + "\n")
        self.out = open(os.path.join(logdir, "qemu-%s.out" % tag), "w")
        self.t0 = time.time()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT)
        note("qemu pid %d (%s)" % (self.proc.pid, tag))

    def qmp(self, *commands, timeout=10):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(self.qmp_path)
        f = s.makefile("rw")
        replies = [json.loads(f.readline())]
        for c in ("qmp_capabilities",) + commands:
            f.write(json.dumps({"execute": c}) + "\n")
            f.flush()
            while True:
                line = f.readline()
                if not line:
                    replies.append("EOF")
                    break
                r = json.loads(line)
                if "event" not in r:
                    replies.append(r)
                    break
        s.close()
        return replies

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.qmp("quit")
            except OSError:
                pass
            if self.wait_exit(20) is None:
                self.proc.kill()
                self.proc.wait()


SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30", "-o", "BatchMode=no",
            "-p", str(SSH_PORT)]


def ssh(user, command, password=None, key=None, stdin=None, timeout=180):
    """run a command over ssh; returns (exit code, stdout+stderr)"""
    env = dict(os.environ)
    argv = ["ssh"] + SSH_OPTS
    if key:
        argv += ["-i", key, "-o", "PasswordAuthentication=no", "-o", "IdentitiesOnly=yes"]
    else:
        # password login without sshpass: ssh asks an askpass program
        askpass = tempfile.NamedTemporaryFile("w", delete=False, suffix=".sh")
        askpass.write("#!/bin/sh\necho %s\n" % shlex.quote(password))
        askpass.close()
        os.chmod(askpass.name, 0o700)
        env.update(SSH_ASKPASS=askpass.name, SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        argv += ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive",
                 "-o", "NumberOfPasswordPrompts=1"]
    argv += ["%s@127.0.0.1" % user, command]
    try:
        r = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=env,
                           start_new_session=True)
        rc, out = r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        rc, out = None, "TIMEOUT"
    finally:
        if not key:
            os.unlink(askpass.name)
    return rc, out


def wait_ssh(user, password=None, key=None, timeout=180):
    end = time.time() + timeout
    while time.time() < end:
        rc, out = ssh(user, "true", password=password, key=key, timeout=60)
        if rc == 0:
            return True
        time.sleep(2)
    return False


def login(con, user, password, prompt, timeout=60):
    con.send("\n")
    if not con.expect(r"raspberrypi login: $", timeout):
        return False
    con.send(user + "\n")
    if not con.expect(r"Password: $", 30):
        return False
    con.send(password + "\n")
    return con.expect(prompt + r"|Login incorrect", timeout)


def boot_to_prompt(qemu, logdir, tag):
    con = Console(SERIAL_PORT, os.path.join(logdir, "console-%s.log" % tag))
    m = con.expect(r"raspberrypi login: $", 600)
    t = time.time() - qemu.t0
    check(m is not None, "login prompt on ttyAMA0 after %.1f s" % t)
    return con, (t if m else None)


def scenario_boot(image, logdir):
    q = Qemu(image, logdir, "boot")
    try:
        con, t = boot_to_prompt(q, logdir, "boot")
        if t is None:
            return
        boot_log = ANSI.sub("", con.seen)
        check("My IP address is 100.65.63.15" in boot_log, "rc.local ran (\"My IP address is 100.65.63.15\")")

        m = login(con, "pi", "wrong-password", PROMPT_PI)
        check(m is not None and "Login incorrect" in m.group(0), "wrong password: Login incorrect")
        con.expect(r"raspberrypi login: $", 30)
        con.send("\n")
        m = login(con, "pi", "raspberry", PROMPT_PI)
        if not check(m is not None and "Login incorrect" not in m.group(0), "console login pi/raspberry, prompt 'pi@raspberrypi:~ $ '"):
            return

        def run(cmd, want_rc=0, want=None, timeout=120, what=None):
            rc, out = con.run(cmd, PROMPT_PI, timeout)
            ok = rc == want_rc and (want is None or re.search(want, out) is not None)
            check(ok, "%s (rc=%s)" % (what or "console: " + cmd, rc))
            if not ok:
                note("   output tail: %r" % out[-600:])
            return out

        run("id", want=r"uid=1000\(pi\) gid=1000\(pi\) groups=.*27\(sudo\)")
        run("sudo id -u", want=r"\n0\n")
        run("sudo -i pwd", want=r"\n/root\n")
        run("sudo sh -c 'echo $((6*7)) $USER $SUDO_USER'", want=r"\n42 root pi\n")
        run("systemctl is-enabled ssh", want_rc=1, want=r"\ndisabled")
        run("systemctl enable ssh", want_rc=1, want="Access denied")
        run("sudo systemctl enable ssh && sudo systemctl start ssh", want="Created symlink")
        run("systemctl is-enabled ssh", want=r"\nenabled")
        run("systemctl is-active ssh", want=r"\nactive")
        run("sudo systemctl disable hostapd; sudo systemctl stop hostapd", want="not a unit of this test guest")
        run("sudo systemctl disable bluetooth hciuart", want="Removed ")
        run("ls /sys/class/net", want=r"usb0\s+usb1\s+usb2")
        run("ip -4 addr show dev usb0", want=r"inet 100\.65\.63\.15/24")
        run("ip route", want=r"default via 100\.65\.63\.2 dev usb0")
        run("ping -c 1 -W 5 100.65.63.2", want=r" 1 received")
        run("cat /sys/bus/usb/devices/*/manufacturer", want=r"QEMU")
        run("grep ' /boot ' /proc/mounts", want=r"/dev/mmcblk0p1 /boot vfat rw")
        run("hostname; hostname -I", want=r"raspberrypi\n100\.65\.63\.15")

        # ssh from the host: password, exit status, keys for pi and root
        rc, out = ssh("pi", "echo hello-$(id -un); exit 3", password="raspberry")
        check(rc == 3 and "hello-pi" in out, "ssh pi with password, exit status 3 (rc=%s)" % rc)
        keydir = tempfile.mkdtemp(prefix="smoke-key-", dir=logdir)
        key = os.path.join(keydir, "id_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        pub = open(key + ".pub").read().strip()
        run("install -d -m 700 ~/.ssh && echo '%s' >> ~/.ssh/authorized_keys && chmod 600 ~/.ssh/authorized_keys" % pub,
            what="console: authorize a key for pi")
        rc, out = ssh("pi", "sudo install -d -m 700 /root/.ssh && sudo tee -a /root/.ssh/authorized_keys >/dev/null "
                      "&& sudo chmod 600 /root/.ssh/authorized_keys", key=key, stdin=(pub + "\n").encode())
        check(rc == 0, "ssh pi with key, authorize it for root via sudo (rc=%s) %s" % (rc, out.strip()[-200:]))
        rc, out = ssh("root", "id -u; echo $HOME", key=key)
        check(rc == 0 and re.search(r"^0\n/root", out) is not None, "ssh root with key (rc=%s)" % rc)

        # a tree uploaded as a tar stream into GNU tar -x, as pifarm does
        tree = tempfile.mkdtemp(prefix="smoke-tree-", dir=logdir)
        os.makedirs(os.path.join(tree, "etc/boot.d"))
        with open(os.path.join(tree, "etc/boot.d/10-hello"), "w") as f:
            f.write("#!/bin/sh\necho hello from boot.d\n")
        os.chmod(os.path.join(tree, "etc/boot.d/10-hello"), 0o755)
        tarball = subprocess.run(["tar", "-C", tree, "-cf", "-", "."], capture_output=True, check=True).stdout
        rc, out = ssh("root", "mkdir -p /tmp/up && tar -x --no-same-owner --no-overwrite-dir -C /tmp/up "
                      "&& /tmp/up/etc/boot.d/10-hello && tar --version | head -n 1", key=key, stdin=tarball)
        check(rc == 0 and "hello from boot.d" in out and "GNU tar" in out, "tar -x upload over ssh (rc=%s)" % rc)

        # scp (OpenSSH 9 speaks sftp: dropbear runs OpenSSH's sftp-server)
        scp = subprocess.run(["scp", "-q", "-i", key, "-o", "IdentitiesOnly=yes", "-P", str(SSH_PORT)]
                             + SSH_OPTS[:-2] + [os.path.join(tree, "etc/boot.d/10-hello"), "root@127.0.0.1:/tmp/scp-hello"],
                             capture_output=True, text=True, timeout=120)
        rc, out = ssh("root", "cat /tmp/scp-hello", key=key)
        check(scp.returncode == 0 and "hello from boot.d" in out, "scp (sftp) upload (rc=%s) %s" % (scp.returncode, scp.stderr[-200:]))

        # account and key tools pifarm runs on the guest
        cmds = ("useradd -m -s /bin/bash bob && usermod -a -G sudo,adm bob && id bob && getent passwd bob "
                "&& install -d -o bob -g bob -m 700 /home/bob/.ssh "
                "&& ssh-keygen -t ecdsa -N '' -f /home/bob/.ssh/id_ecdsa -q && chown bob:bob /home/bob/.ssh/id_ecdsa* "
                "&& chmod 600 /home/bob/.ssh/id_ecdsa && head -n 1 /home/bob/.ssh/id_ecdsa && cat /home/bob/.ssh/id_ecdsa.pub "
                "&& cp /home/bob/.ssh/id_ecdsa.pub /home/bob/.ssh/authorized_keys && chown bob:bob /home/bob/.ssh/authorized_keys "
                "&& ls -ld /home/bob /home/bob/.ssh")
        rc, out = ssh("root", cmds, key=key)
        check(rc == 0 and "uid=1001(bob) gid=1001(bob) groups=1001(bob),4(adm),27(sudo)" in out
              and "-----BEGIN OPENSSH PRIVATE KEY-----" in out and "ecdsa-sha2-nistp256 " in out
              and "bob:x:1001:1001::/home/bob:/bin/bash" in out,
              "useradd, usermod -aG, id, getent, install -o, ssh-keygen -t ecdsa, chown (rc=%s)" % rc)
        if rc != 0:
            note("   output: %r" % out[-800:])
        rc, out = ssh("root", "su -s /bin/sh bob -c 'ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                      "-o BatchMode=yes -i /home/bob/.ssh/id_ecdsa bob@localhost id -un' 2>&1; "
                      "su -s /bin/sh bob -c 'sudo -n true' 2>&1; echo sudo-rc=$?", key=key)
        check(re.search(r"(^|\n)bob\n", out) is not None and "sudo-rc=1" in out,
              "guest-side ssh with the generated ecdsa key; sudo refused without a NOPASSWD rule (%r)" % out[-200:])

        # the LAN side as pifarm's boot scripts set it up
        rc, out = ssh("root", "ip link set usb1 down && ip link set usb1 name lan0 && "
                      "ip link set dev lan0 address 52:54:00:42:00:07 && ip addr add 192.168.66.7/24 dev lan0 && "
                      "ip link set lan0 up && ip -br addr show lan0 && ip -br link show lan0", key=key)
        check(rc == 0 and "192.168.66.7/24" in out and "52:54:00:42:00:07" in out,
              "ip: rename usb1 -> lan0, set MAC and address (rc=%s) %r" % (rc, out.strip()[-200:]))

        # online resize of the root file system (the image file was grown beforehand)
        rc, out = ssh("root", "df -k / | tail -n 1; resize2fs /dev/mmcblk0p2; echo rc=$?; df -k / | tail -n 1", key=key,
                      timeout=600)
        sizes = re.findall(r"/dev/root\s+(\d+)", out) or re.findall(r"/dev/mmcblk0p2\s+(\d+)", out)
        check("rc=0" in out and len(sizes) == 2 and int(sizes[1]) > int(sizes[0]) * 1.5,
              "resize2fs /dev/mmcblk0p2 online: %s" % " -> ".join(sizes))
        if "rc=0" not in out:
            note("   output: %r" % out[-800:])

        # userconf.txt naming another user: uid 1000 (pi) is renamed first
        h = subprocess.run(["openssl", "passwd", "-6", "wonderland"], capture_output=True, text=True,
                           check=True).stdout.strip()
        rc, out = ssh("root", "mkdir -p /tmp/seed && echo 'alice:%s' > /tmp/seed/userconf.txt && "
                      "/usr/lib/pifarm-testguest/firstboot /tmp/seed && ls /tmp/seed && getent passwd 1000 && "
                      "id alice && ls -d /home/* && cat /etc/sudoers.d/010_pi-nopasswd" % h, key=key)
        check(rc == 0 and "alice:x:1000:1000:,,,:/home/alice:/bin/bash" in out and "/home/alice" in out
              and "/home/pi" not in out and "gid=1000(alice)" in out and "alice ALL=(ALL) NOPASSWD: ALL" in out,
              "userconf.txt alice:HASH renames pi to alice (rc=%s) %r" % (rc, out[-300:]))
        rc, out = ssh("alice", "id -un; sudo id -u", password="wonderland")
        check(rc == 0 and out.split() == ["alice", "0"], "ssh alice with the userconf password, sudo (%r)" % out)

        # power off from the console: QEMU must exit by itself
        con.buf = ""
        con.send("sudo poweroff\n")
        m = con.expect(r"reboot: Power down", 300)
        check(m is not None, "poweroff prints 'reboot: Power down'")
        rc = q.wait_exit(120)
        check(rc is not None, "QEMU exited by itself after poweroff (status %s)" % rc)
    finally:
        q.stop()


def scenario_seeded(image, logdir):
    q = Qemu(image, logdir, "seeded")
    try:
        con, t = boot_to_prompt(q, logdir, "seeded")
        if t is None:
            return
        boot_log = ANSI.sub("", con.seen)
        check("firstboot: ssh enabled" in boot_log, "seeding: /boot/ssh enabled ssh")
        check("firstboot: password of pi set" in boot_log, "seeding: userconf.txt set pi's password")
        m = login(con, "pi", "raspberry", PROMPT_PI)
        check(m is not None and "Login incorrect" in m.group(0), "console login pi/raspberry refused")
        ok = wait_ssh("pi", password="secret")
        check(ok, "ssh pi with the seeded password")
        rc, out = ssh("pi", "ls /boot; systemctl is-enabled ssh; sudo id -u", password="secret")
        check(rc == 0 and "ssh" not in out.split("enabled")[0].split() and "userconf.txt" not in out
              and "\nenabled\n0" in "\n" + out, "seed files deleted, ssh enabled, sudo works (%r)" % out)
        # halt: the kernel stops, QEMU keeps running until QMP quit
        con.buf = ""
        ssh("pi", "sudo halt", password="secret", timeout=60)
        m = con.expect(r"reboot: System halted", 300)
        check(m is not None, "halt prints 'reboot: System halted'")
        time.sleep(3)
        alive = q.proc.poll() is None
        status = q.qmp("query-status")[-1] if alive else None
        check(alive, "QEMU still running after halt (%s)" % (status,))
        q.qmp("quit")
        rc = q.wait_exit(30)
        check(rc is not None, "QEMU ended by QMP quit")
    finally:
        q.stop()


def scenario_timing(image, logdir):
    q = Qemu(image, logdir, "timing")
    try:
        con, t = boot_to_prompt(q, logdir, "timing")
        if t is not None:
            print("LOGIN_PROMPT_SECONDS %.1f" % t, flush=True)
    finally:
        q.stop()


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("boot", "seeded", "timing"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    mode, image, logdir = sys.argv[1:]
    os.makedirs(logdir, exist_ok=True)
    {"boot": scenario_boot, "seeded": scenario_seeded, "timing": scenario_timing}[mode](image, logdir)
    if FAILURES:
        note("%d check(s) failed in %s: %s" % (len(FAILURES), mode, "; ".join(FAILURES)))
        sys.exit(1)
    note("all checks passed in %s" % mode)


if __name__ == "__main__":
    main()
