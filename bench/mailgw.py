"""The e-mail to fax gateway under hostile mail (issue 26): its peak memory.

    .venv/bin/python bench/mailgw.py

Starts ``dustel mailgw serve`` as its own process on loopback (a fresh
database: DATABASE_URL's server or the embedded one), sends it ordinary
and hostile mail with smtplib, and prints after each scenario the
gateway's peak resident memory (VmHWM of /proc/<pid>/status) and how long
the scenario took.  The budget the issue sets: under 300 MB at every step.
Before issue 26 one 335-byte PDF with a 10 x 300 000 pt page took 4-5.6 GB
and 18-30 s, once per recipient.
"""
from __future__ import annotations

import concurrent.futures
import email.policy
import io
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import psycopg
import pypdf
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._db import fresh_database  # noqa: E402
from bench.fax import document  # noqa: E402
from dustel.fax import mailgw  # noqa: E402
from dustel.provisioning import numbers, targets, tenants  # noqa: E402
from tests.fax_support import fax_pdf  # noqa: E402
from tests.net import free_port  # noqa: E402
from tests.security.test_hostile_mail import bomb_pdf  # noqa: E402

BUDGET_MB = 300
DOMAIN = "fax.bench.invalid"


def setup(url: str) -> None:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        t = tenants.add(conn, name="Bench GmbH", customer_type="business", plan="business_flex", number_quota=50)
        tenants.add_address(conn, t["id"], kind="seat", street="Benchweg 1", postcode="40213", city="Düsseldorf",
                            area_code="0211")
        conn.execute("UPDATE tenants SET email = 'chef@bench.example' WHERE id = %s", (t["id"],))
        targets.faxbox_add(conn, t["id"], "office", "office@bench.example", pin="4711")
        numbers.add(conn, t["id"], "+492119876600")
        numbers.assign(conn, "+492119876600", "fax", "office")


def mail(subject: str, pdf: bytes | None) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "chef@bench.example", f"+4940123456@{DOMAIN}", subject
    msg.set_content("bitte faxen")
    if pdf is not None:
        msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="doc.pdf")
    return msg.as_bytes(policy=email.policy.SMTP)


def send(port: int, content: bytes, rcpts: int = 1, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=120, source_address=(source, 0)) as s:
        s.sendmail("chef@bench.example", [f"+49401234{5000 + i}@{DOMAIN}" for i in range(rcpts)], content)


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    url = fresh_database("dustel_bench_mailgw")
    setup(url)
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="dustel-mailgw-bench-"))
    (state / "dustel.toml").write_text(f'mailgw_port = {port}\nfax_mail_domain = "{DOMAIN}"\n')
    dustel = Path(sys.executable).with_name("dustel")
    gw = subprocess.Popen([str(dustel), "--state-dir", str(state), "mailgw", "serve"],
                          env={**os.environ, "DATABASE_URL": url}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    listening = threading.Event()

    def drain() -> None:                                   # read every line, or the gateway blocks on its log
        for line in gw.stdout or []:
            if "listening" in line:
                listening.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not listening.wait(60):
            raise SystemExit("the gateway did not start")
        office = document()                                # 10 A4 pages scanned at 300 dpi (3.1 MiB)
        w = pypdf.PdfWriter()
        for _ in range(5):                                 # 50 of them: 15.7 MiB, over the mail size limit
            w.append(pypdf.PdfReader(io.BytesIO(office)))
        buf = io.BytesIO()
        w.write(buf)
        huge = buf.getvalue()
        fifty = fax_pdf(50)                                # 50 A4 pages (the page limit) of a small PDF
        bomb = bomb_pdf()

        deferred = []

        def try_send(content: bytes, source: str) -> None:
            try:
                send(port, content, 1, source)
            except smtplib.SMTPSenderRefused as exc:       # 451: the gateway is busy (a real sender retries)
                deferred.append(exc.smtp_code)

        w = pypdf.PdfWriter()
        for _ in range(2):                                 # 20 scanned pages: under the mail size limit
            w.append(pypdf.PdfReader(io.BytesIO(office)))
        buf = io.BytesIO()
        w.write(buf)
        twenty = buf.getvalue()

        def parallel(content: bytes, sources: list[str]) -> None:
            with concurrent.futures.ThreadPoolExecutor(len(sources)) as pool:
                list(pool.map(lambda src: try_send(content, src), sources))

        scenarios = [
            ("started, idle", lambda: None),
            ("10-page office PDF to 10 numbers", lambda: send(port, mail("PIN 4711", office), 10)),
            ("50-page PDF (the page limit) to 10 numbers", lambda: send(port, mail("PIN 4711", fifty), 10)),
            (f"{mailgw.MAX_INFLIGHT} parallel 20-page scans of {len(mail('', twenty)) / 2**20:.1f} MiB from "
             f"{mailgw.MAX_INFLIGHT} addresses",
             lambda: parallel(mail("PIN 4711", twenty), [f"127.0.3.{i}" for i in range(mailgw.MAX_INFLIGHT)])),
            ("poisoned subject (CR/LF encoded word)",
             lambda: send(port, b"From: chef@bench.example\r\nTo: x@" + DOMAIN.encode() + b"\r\n"
                                b"Subject: =?utf-8?q?a=0D=0ABcc:_v@example.net?=\r\n\r\nx\r\n")),
            (f"PDF bomb ({len(bomb)} bytes, 10 x 300000 pt) x 5 mails to 10 numbers",
             lambda: [send(port, mail("PIN 4711", bomb), 10) for _ in range(5)]),
            (f"a {len(huge) / 2**20:.1f} MiB PDF (the mail over {mailgw.MAX_MAIL_BYTES // 2**20} MiB)",
             lambda: send(port, mail("PIN 4711", huge), 1)),
            ("RCPT flood: 200 recipients in one mail, a wrong PIN",
             lambda: send(port, mail("PIN 0000", office), 200)),
            ("spoofed sender: 40 parallel sessions from 20 addresses, wrong PINs",
             lambda: parallel(mail("PIN 1234", office), [f"127.0.4.{i // 2}" for i in range(40)])),
        ]
        print(f"{'scenario':<66} {'seconds':>8} {'peak RSS MB':>12}")
        worst = 0.0
        for name, run in scenarios:
            t0 = time.perf_counter()
            try:
                run()
            except smtplib.SMTPException as exc:
                name += f" (refused: {getattr(exc, 'smtp_code', type(exc).__name__)})"
            dt = time.perf_counter() - t0
            mb = peak_mb(gw.pid)
            worst = max(worst, mb)
            print(f"{name:<66} {dt:>8.2f} {mb:>12.1f}")
        with psycopg.connect(url, row_factory=dict_row) as conn:
            n = conn.execute("""SELECT (SELECT count(*) FROM fax_jobs) AS jobs,
                                       (SELECT count(*) FROM mail_outbox WHERE kind = 'refusal_report') AS reports,
                                       (SELECT count(*) FROM mailgw_pin_failures) AS failures""").fetchone()
        print(f"fax jobs {n['jobs']} (10 + 10 + {mailgw.MAX_INFLIGHT} sent), refusal reports {n['reports']} (at "
              f"most {mailgw.REPORTS_PER_HOUR} an hour), wrong PINs recorded {n['failures']} (the tenant's cap: "
              f"{mailgw.TENANT_LOCK_AFTER}), mails deferred with 451 (busy) {len(deferred)}")
        print(f"gateway peak RSS {worst:.1f} MB: {'within' if worst < BUDGET_MB else 'OVER'} the {BUDGET_MB} MB budget")
    finally:
        gw.terminate()
        gw.wait(30)


if __name__ == "__main__":
    main()
