"""Calls (itemised), credit, top-ups, invoices (PDF, XML), the SEPA mandate,
and the tenant's portal settings — the billing modules' own functions."""
from __future__ import annotations

from fastapi import Depends, Request, Response
from pydantic import BaseModel

from ...billing import einvoice, invoices, months, sepa
from ...errors import DustelError, NotFound
from .. import itemised, users
from ..web import admin, portal_of, router

api = router(tags=["money"])


@api.get("/calls")
def call_list(request: Request, before: str | None = None, limit: int = 50, caller: users.Caller = Depends(admin)):
    """The tenant's calls, newest first; ``next`` is the cursor of the page after."""
    with portal_of(request).tx() as conn:
        return itemised.page(conn, caller.tenant_id, before, limit)


@api.get("/credit")
def credit(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        m = conn.execute("""SELECT balance_cents, reserved_cents, free_seconds - reserved_free AS free_seconds_left
                              FROM tenant_money WHERE tenant_id = %s""", (caller.tenant_id,)).fetchone()
        m["active_calls"] = conn.execute("SELECT count(*) AS n FROM calls WHERE tenant_id = %s AND state = 'active'",
                                         (caller.tenant_id,)).fetchone()["n"]
        return m


@api.get("/topups")
def topups(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return conn.execute("""SELECT created_at, amount_cents, ref FROM ledger WHERE tenant_id = %s AND kind = 'topup'
                                ORDER BY created_at DESC, id DESC LIMIT 200""", (caller.tenant_id,)).fetchall()


@api.get("/invoices")
def invoice_list(request: Request, month: str | None = None, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return invoices.listing(conn, caller.tenant_id, months.month_of(month) if month else None)


def invoice_of(conn, caller: users.Caller, number: str) -> tuple[dict, dict | None]:
    """The caller's tenant's invoice and its mandate; another tenant's is no invoice."""
    try:
        return invoices.document(conn, number, caller.tenant_id)
    except DustelError:
        raise NotFound("invoice", f"no invoice or credit note {number}") from None


@api.get("/invoices/{number}/pdf")
def invoice_pdf(number: str, request: Request, caller: users.Caller = Depends(admin)):
    portal = portal_of(request)
    with portal.tx() as conn:
        inv, mandate = invoice_of(conn, caller, number)
    data = einvoice.facturx_pdf(inv, einvoice.Issuer.of(portal.settings), mandate=mandate)
    return Response(data, media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="{inv["number"]}.pdf"'})


@api.get("/invoices/{number}/xml")
def invoice_xml(number: str, request: Request, caller: users.Caller = Depends(admin)):
    portal = portal_of(request)
    with portal.tx() as conn:
        inv, mandate = invoice_of(conn, caller, number)
    xr = inv["recipient"].get("customer_type") == "public_body"
    data = einvoice.build_xml(inv, einvoice.Issuer.of(portal.settings), xrechnung=xr, mandate=mandate)
    return Response(data, media_type="application/xml",
                    headers={"Content-Disposition": f'attachment; filename="{inv["number"]}.xml"'})


@api.get("/mandate")
def mandate(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        m = sepa.active_mandate(conn, caller.tenant_id)
    if m is None:
        return None
    return {"reference": m["reference"], "holder": m["holder"], "iban": einvoice.mask_iban(m["iban"]),
            "bic": m["bic"], "signed_on": m["signed_on"]}


class SettingsIn(BaseModel):
    show_full_numbers: bool


@api.get("/settings")
def settings_show(request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        return {"show_full_numbers": itemised.show_full(conn, caller.tenant_id)}


@api.put("/settings")
def settings_set(body: SettingsIn, request: Request, caller: users.Caller = Depends(admin)):
    with portal_of(request).tx() as conn:
        itemised.set_show_full(conn, caller.tenant_id, body.show_full_numbers)
    return {"show_full_numbers": body.show_full_numbers}
