"""A real Asterisk 22 (Debian sid) in a chroot, for engine tests.

The chroot is built once by ``scripts/asterisk-chroot.sh`` (mmdebstrap,
mirror from the host's apt sources) and cached; each ``start()`` writes a
fresh /etc/asterisk (a minimal asterisk.conf / modules.conf / logger.conf
plus the files under test), bind-mounts /proc and /dev and runs
``chroot DIR asterisk -f`` on loopback.  Needs root.

Several may run at once from the one chroot (the cluster test): an
instance with a ``name`` has its own /etc/asterisk-<name>, run, log, spool
and lib directories and ``systemname`` (what the dialplan's
``${SYSTEMNAME}`` and the unique ids carry); /proc and /dev stay mounted
while any instance runs.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = Path(os.environ.get("DUSTEL_ASTERISK_CHROOT", "/var/cache/dustel/asterisk-sid"))

MODULES = [
    "res_pjproject.so", "res_sorcery_config.so", "res_sorcery_memory.so", "res_sorcery_astdb.so",
    "res_timing_timerfd.so", "res_rtp_asterisk.so", "res_srtp.so", "res_pjsip.so", "res_pjsip_session.so",
    "res_pjsip_authenticator_digest.so", "res_pjsip_endpoint_identifier_user.so",
    "res_pjsip_endpoint_identifier_ip.so", "res_pjsip_registrar.so", "res_pjsip_caller_id.so",
    "res_pjsip_sdp_rtp.so", "res_pjsip_nat.so", "res_pjsip_acl.so", "res_pjsip_t38.so",
    "res_pjsip_dtmf_info.so", "res_pjsip_pubsub.so", "res_pjsip_outbound_authenticator_digest.so",
    "chan_pjsip.so", "res_pjsip_header_funcs.so",
    "res_musiconhold.so", "res_speech.so", "res_agi.so", "res_fax.so", "res_fax_spandsp.so",
    "pbx_config.so", "app_dial.so", "app_exec.so", "app_queue.so", "app_playback.so", "app_echo.so", "app_stack.so",
    "func_timeout.so", "func_callerid.so", "func_logic.so", "func_strings.so", "func_channel.so",
    "codec_ulaw.so", "codec_alaw.so", "codec_g722.so", "format_wav.so", "format_pcm.so", "format_gsm.so",
    "format_sln.so", "bridge_simple.so", "bridge_native_rtp.so", "bridge_softmix.so", "bridge_holding.so",
    "res_stasis.so", "res_clioriginate.so", "func_cut.so", "pbx_spool.so",
]

ASTERISK_CONF = """[directories]
astetcdir => /etc/asterisk
astmoddir => /usr/lib/x86_64-linux-gnu/asterisk/modules
astvarlibdir => /var/lib/asterisk
astdbdir => /var/lib/asterisk
astkeydir => /var/lib/asterisk
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astspooldir => /var/spool/asterisk
astrundir => /var/run/asterisk
astlogdir => /var/log/asterisk

[options]
verbose = 3
nocolor = yes
"""
LOGGER_CONF = """[general]
dateformat = %F %T
[logfiles]
messages.log => notice,warning,error,verbose(3)
"""


class Unavailable(Exception):
    """The chroot cannot be built or Asterisk cannot run here (the reason)."""


def _asterisk_conf(suffix: str, systemname: str) -> str:
    if not suffix:
        return ASTERISK_CONF
    text = ASTERISK_CONF
    for d in ("astetcdir => /etc/asterisk", "astvarlibdir => /var/lib/asterisk", "astdbdir => /var/lib/asterisk",
              "astkeydir => /var/lib/asterisk", "astspooldir => /var/spool/asterisk", "astrundir => /var/run/asterisk",
              "astlogdir => /var/log/asterisk"):
        text = text.replace(d + "\n", d + suffix + "\n")
    return text + f"systemname = {systemname}\n"


class Asterisk:
    # the chroot's /proc and /dev: mounted by the first instance to start, unmounted by the last to stop
    _mounts: dict[Path, list[Path]] = {}
    _running: dict[Path, set[int]] = {}

    def __init__(self, root: Path = DEFAULT_ROOT, name: str = "") -> None:
        self.root = root
        self.name = name
        self.suffix = f"-{name}" if name else ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: BinaryIO | None = None

    def instance(self, name: str) -> Asterisk:
        """Another Asterisk of the same chroot with its own directories."""
        return Asterisk(self.root, name)

    # ------------------------------------------------------------ setup
    @classmethod
    def ensure_built(cls, root: Path = DEFAULT_ROOT) -> Asterisk:
        if os.geteuid() != 0:
            raise Unavailable("engine tests need root (chroot, bind mounts)")
        if shutil.which("mmdebstrap") is None and not (root / ".dustel-complete").exists():
            raise Unavailable("mmdebstrap is not installed (make system-deps)")
        r = subprocess.run([str(REPO / "scripts" / "asterisk-chroot.sh"), str(root)],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise Unavailable("building the Asterisk chroot failed: " + " | ".join(tail))
        return cls(root)

    @property
    def etc(self) -> Path:
        return self.root / "etc" / f"asterisk{self.suffix}"

    @property
    def conf(self) -> str:
        """asterisk.conf as the chroot sees it (-C: which instance a CLI command reaches)."""
        return f"/etc/asterisk{self.suffix}/asterisk.conf"

    def write_config(self, files: dict[str, str]) -> None:
        dist = self.root / "etc" / "asterisk.dist"
        if not dist.exists():
            shutil.copytree(self.root / "etc" / "asterisk", dist)
        if self.etc.exists():
            shutil.rmtree(self.etc)
        self.etc.mkdir(mode=0o755)
        base = {
            "asterisk.conf": _asterisk_conf(self.suffix, self.name),
            "logger.conf": LOGGER_CONF,
            "modules.conf": "[modules]\nautoload = no\n" + "".join(f"load = {m}\n" for m in MODULES),
            "rtp.conf": "[general]\nrtpstart=20000\nrtpend=20999\n",
            # modules and the core read these; empty is their documented default
            **{name: "[general]\n" for name in ("cdr.conf", "cel.conf", "features.conf",
                                                "udptl.conf", "pjproject.conf", "ccss.conf")},
            "acl.conf": "",
            "indications.conf": "[general]\ncountry=de\n\n[de]\ndescription=Germany\nringcadence=1000,4000\n"
                                "dial=425\nbusy=425/480,0/480\nring=425/1000,0/4000\ncongestion=425/240,0/240\n",
        }
        for name, text in {**base, **files}.items():
            (self.etc / name).parent.mkdir(mode=0o755, exist_ok=True)
            (self.etc / name).write_text(text)
            (self.etc / name).chmod(0o644)

    def update_config(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            (self.etc / name).write_text(text)

    # ------------------------------------------------------------ run
    def _mount(self) -> None:
        mounted = self._mounts.setdefault(self.root, [])
        for sub in ("proc", "dev"):
            target = self.root / sub
            if subprocess.run(["mountpoint", "-q", str(target)]).returncode != 0:
                subprocess.run(["mount", "--bind", f"/{sub}", str(target)], check=True)
                mounted.append(target)
        self._running.setdefault(self.root, set()).add(id(self))

    def _stop_stray(self) -> None:
        """An Asterisk of this instance left running in this chroot by an
        interrupted run would answer our CLI and hold the ports: stop it
        first (another instance's is left alone)."""
        root = str(self.root.resolve())
        for pid in Path("/proc").iterdir():
            if not pid.name.isdigit():
                continue
            try:
                if Path(pid, "root").resolve() != Path(root) or Path(pid, "comm").read_text().strip() != "asterisk":
                    continue
                argv = Path(pid, "cmdline").read_bytes().split(b"\0")
                conf = argv[argv.index(b"-C") + 1].decode() if b"-C" in argv else "/etc/asterisk/asterisk.conf"
                if conf == self.conf:
                    os.kill(int(pid.name), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                continue

    def _umount(self) -> None:
        running = self._running.get(self.root, set())
        running.discard(id(self))
        if running:
            return
        mounted = self._mounts.get(self.root, [])
        while mounted:
            subprocess.run(["umount", "-l", str(mounted.pop())], check=False)

    @property
    def var(self) -> dict[str, Path]:
        return {d: self.root / "var" / d / f"asterisk{self.suffix}" for d in ("run", "log", "spool", "lib")}

    @property
    def log_path(self) -> Path:
        return self.var["log"] / "messages.log"

    def add_moh_class_dir(self, path: str) -> None:
        """A hold-music directory with one second of silence (8 kHz WAV):
        Asterisk skips a files-mode class whose directory is empty."""
        d = self.root / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        with wave.open(str(d / "silence.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(b"\x00\x00" * 8000)

    def start(self, files: dict[str, str], dirs: Sequence[str] = (), fresh: bool = True) -> None:
        """Start Asterisk on ``files``.  ``fresh``: forget what an earlier run
        stored (astdb: registered contacts survive a restart, as in
        production — ``fresh=False`` is such a restart)."""
        self.write_config(files)
        for d in self.var.values():
            d.mkdir(parents=True, exist_ok=True)
        for d in dirs:
            (self.root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        self._stop_stray()
        if fresh:
            for f in self.var["lib"].glob("astdb.sqlite3*"):
                f.unlink()
        if self.log_path.exists():
            self.log_path.unlink()
        self._mount()
        stderr_path = self.var["log"] / "stderr.log"
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(["chroot", str(self.root), "asterisk", "-f", "-C", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._stderr.close()
                err = stderr_path.read_text(errors="replace")
                self._umount()
                raise Unavailable(f"asterisk exited with {self.proc.returncode}: {err.strip()[-300:]}")
            r = subprocess.run(["chroot", str(self.root), "asterisk", "-C", self.conf, "-rx", "core waitfullybooted"],
                               capture_output=True, text=True, timeout=30)
            if r.returncode == 0 and "fully booted" in r.stdout:
                return
            time.sleep(0.2)
        self.stop()
        raise Unavailable("asterisk did not boot within 60 s")

    def cli(self, command: str) -> str:
        r = subprocess.run(["chroot", str(self.root), "asterisk", "-C", self.conf, "-rx", command],
                           capture_output=True, text=True, timeout=30)
        return r.stdout

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def errors(self) -> list[str]:
        return [ln for ln in self.log().splitlines() if " ERROR[" in ln]

    def kill(self) -> None:
        """SIGKILL: the node dies as a crashed host's would (no BYE, no goodbye)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            subprocess.run(["chroot", str(self.root), "asterisk", "-C", self.conf, "-rx", "core stop now"],
                           capture_output=True, timeout=30)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._umount()
