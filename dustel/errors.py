"""One error type for bad input: it names the field and the rule it broke.

Database-side rules (CHECKs, unique keys, triggers) are translated to the same
one-line form, so the CLI prints ``error: <field>: <rule>`` whichever layer
refused the input.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg


class DustelError(Exception):
    """Bad input or a refused operation; ``str()`` is the one-line message."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class NotFound(DustelError):
    pass


# Constraint name -> (field, rule).  Trigger-raised errors carry their own
# "field: rule" text (SQLSTATE DU001) and need no entry here.
CONSTRAINT_MESSAGES: dict[str, tuple[str, str]] = {
    "tenants_sip_domain_key": ("domain", "already used by another tenant"),
    "tenants_plan_customer_type_fkey": (
        "customer_type",
        "not allowed on this plan (complete: private only; business_flex: business or public body)",
    ),
    "tenants_name_check": ("name", "must be 1 to 100 characters"),
    "sip_accounts_username_key": ("username", "already taken platform-wide"),
    "sip_accounts_username_check": ("username", "must be 000387 followed by 6 digits"),
    "numbers_e164_key": ("number", "already provisioned"),
    "tenant_options_plan_option_fkey": ("option", "not available on the tenant's plan"),
    "tenant_options_tenant_id_plan_fkey": ("option", "not available on the tenant's plan"),
    "diversion_targets_position_check": ("targets", "at most 10 targets (F-05)"),
    "diversion_targets_account_id_target_account_id_key": ("targets", "listed twice"),
    "diversion_targets_account_id_external_e164_key": ("targets", "listed twice"),
    "diversion_targets_check1": ("targets", "an account cannot forward to itself"),
    "queues_tenant_id_name_key": ("queue", "name already used by this tenant"),
    "queues_tenant_id_code_key": ("code", "already used by another queue of this tenant"),
    "screening_pkey": ("pattern", "already on the list"),
    "speed_dials_pkey": ("code", "already used by another speed dial of this tenant"),
    "agents_tenant_id_name_key": ("agent", "name already used by this tenant"),
    "ring_groups_tenant_id_name_key": ("group", "name already used by this tenant"),
    "faxboxes_tenant_id_name_key": ("faxbox", "name already used by this tenant"),
}

RULE_SQLSTATE = "DU001"


def translate_db_error(exc: psycopg.Error) -> DustelError | None:
    """Map a database error caused by input to a DustelError, else None."""
    diag = exc.diag
    if exc.sqlstate == RULE_SQLSTATE and diag.message_primary:
        field, _, rule = diag.message_primary.partition(": ")
        return DustelError(field, rule or "refused")
    name = diag.constraint_name
    if name and name in CONSTRAINT_MESSAGES:
        return DustelError(*CONSTRAINT_MESSAGES[name])
    if isinstance(exc, psycopg.errors.CheckViolation) and name:
        # column-named CHECKs: "<table>_<column>_check"
        return DustelError(_column_of(name, diag.table_name), "not valid")
    if isinstance(exc, psycopg.errors.UniqueViolation) and name:
        return DustelError(_column_of(name, diag.table_name), "already exists")
    if isinstance(exc, psycopg.errors.ForeignKeyViolation):
        return DustelError(_column_of(name or "reference", diag.table_name), "refers to nothing")
    if isinstance(exc, psycopg.errors.NotNullViolation):
        return DustelError(diag.column_name or "value", "is required")
    return None


def _column_of(constraint: str, table: str | None) -> str:
    rest = constraint
    if table and rest.startswith(table + "_"):
        rest = rest[len(table) + 1 :]
    for suffix in ("_check", "_key", "_fkey", "_excl"):
        if rest.endswith(suffix):
            rest = rest[: -len(suffix)]
    return rest or constraint


@contextlib.contextmanager
def db_errors() -> Iterator[None]:
    """Raise database errors caused by input as DustelError ("field: rule");
    any other database error as a one-line DustelError on 'database'."""
    try:
        yield
    except psycopg.Error as exc:
        mapped = translate_db_error(exc)
        if mapped is not None:
            raise mapped from None
        if isinstance(exc, psycopg.errors.UndefinedTable):
            raise DustelError("database", "schema missing: run 'dustel db migrate'") from None
        raise DustelError("database", (exc.diag.message_primary or str(exc)).splitlines()[0]) from None
