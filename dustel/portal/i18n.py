"""The pages' words in German and English (one table; a test checks that
both languages have every key)."""
from __future__ import annotations

LANGS = ("de", "en")
DEFAULT = "de"

TEXTS: dict[str, dict[str, str]] = {
    "de": {
        "title": "Kundencenter", "login": "Anmelden", "logout": "Abmelden", "user": "Benutzername",
        "password": "Passwort", "home": "Übersicht", "forwarding": "Rufumleitung", "fax": "Fax senden",
        "invoices": "Rechnungen", "live": "Warteschlangen live", "error": "Fehler", "saved": "Gespeichert",
        "account": "SIP-Konto", "mode": "Art", "targets": "Ziele", "timeout": "nach Sekunden",
        "immediate": "sofort", "no-answer": "bei Nichtmelden", "unregistered": "wenn nicht angemeldet",
        "none": "keine", "set": "Setzen", "clear": "Aufheben", "group": "Gruppenruf",
        "from": "Absender", "to": "Empfänger", "file": "PDF-Datei", "send": "Senden", "queued": "eingereiht",
        "jobs": "Sendeaufträge", "pages": "Seiten", "state": "Status", "attempts": "Versuche",
        "number": "Nummer", "kind": "Art", "period": "Zeitraum", "issued": "Datum", "due": "fällig",
        "gross": "Brutto", "net": "Netto", "queue": "Warteschlange", "waiting": "Wartende Anrufer",
        "wait": "Wartezeit", "caller": "Anrufer", "agents": "Agenten", "agent_state": "Status",
        "service_level": "Servicelevel heute", "offered": "angeboten", "answered": "angenommen",
        "abandoned": "aufgelegt", "available": "frei", "paused": "Pause", "on_call": "im Gespräch",
        "logged_out": "abgemeldet", "connected": "verbunden", "disconnected": "Verbindung unterbrochen",
        "nobody_waiting": "Niemand wartet", "role_admin": "Administrator", "role_supervisor": "Supervisor",
        "role_agent": "Agent", "welcome": "Willkommen", "language": "Sprache", "within": "in",
        "seconds": "s", "forbidden": "Keine Berechtigung", "invoice_none": "Noch keine Rechnungen",
    },
    "en": {
        "title": "Customer centre", "login": "Log in", "logout": "Log out", "user": "Login",
        "password": "Password", "home": "Overview", "forwarding": "Call forwarding", "fax": "Send a fax",
        "invoices": "Invoices", "live": "Live queues", "error": "Error", "saved": "Saved",
        "account": "SIP account", "mode": "Mode", "targets": "Targets", "timeout": "after seconds",
        "immediate": "immediately", "no-answer": "on no answer", "unregistered": "when not registered",
        "none": "none", "set": "Set", "clear": "Clear", "group": "Group call",
        "from": "From", "to": "To", "file": "PDF file", "send": "Send", "queued": "queued",
        "jobs": "Fax jobs", "pages": "Pages", "state": "State", "attempts": "Attempts",
        "number": "Number", "kind": "Kind", "period": "Period", "issued": "Date", "due": "due",
        "gross": "Gross", "net": "Net", "queue": "Queue", "waiting": "Waiting callers",
        "wait": "Wait", "caller": "Caller", "agents": "Agents", "agent_state": "State",
        "service_level": "Service level today", "offered": "offered", "answered": "answered",
        "abandoned": "abandoned", "available": "available", "paused": "paused", "on_call": "on a call",
        "logged_out": "logged out", "connected": "connected", "disconnected": "connection lost",
        "nobody_waiting": "Nobody is waiting", "role_admin": "Administrator", "role_supervisor": "Supervisor",
        "role_agent": "Agent", "welcome": "Welcome", "language": "Language", "within": "within",
        "seconds": "s", "forbidden": "Not allowed", "invoice_none": "No invoices yet",
    },
}


def language(query: str | None, cookie: str | None, accept: str) -> str:
    """?lang= first, then the cookie it set, then the browser's first
    language we have, else German."""
    for choice in (query, cookie):
        if choice in LANGS:
            return choice
    for part in accept.split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGS:
            return code
    return DEFAULT
