"""The demo app: a triage agent handing off to a billing and a technical specialist.

    agents-worker run workers.demo:app           # serve it
    agents-worker submit triage "My invoice 1042 was charged twice" --follow

Without ``OPENAI_API_KEY`` (or ``models.base_url``) the agents run on the offline demo model,
which routes by keywords, calls the specialists' tools and hands off deterministically.
"""

from __future__ import annotations

from agents import Agent, function_tool

from runtime.agents import AgentApp

_INVOICES = {
    1042: ("ACME Corp", 129.00, "charged twice on 2026-11-02"),
    1043: ("Globex", 49.90, "paid"),
}


@function_tool
def lookup_invoice(invoice_id: int) -> str:
    """Look up an invoice by its number: customer, amount, charges and payment state."""
    customer, amount, state = _INVOICES.get(invoice_id, ("unknown customer", 0.0, "not found"))
    return f"invoice {invoice_id}: {customer}, {amount:.2f} EUR, {state}"


@function_tool
def issue_refund(invoice_id: int, reason: str) -> str:
    """Refund a duplicate charge on an invoice; returns the refund reference."""
    return f"refund R-{invoice_id}-1 issued for invoice {invoice_id} ({reason[:40]})"


@function_tool
def check_service_status(component: str) -> str:
    """Report the status of a service component: login, api, app or payments."""
    return f"status of {component[:40]!r}: login service degraded since 09:12 UTC, fix deploying"


@function_tool
def reset_password(username: str) -> str:
    """Send a password reset link to the user."""
    return f"password reset link sent for {username[:40]!r}"


billing = Agent(
    name="billing",
    handoff_description="Billing specialist: invoices, refunds, charges, payments, prices.",
    instructions="Billing specialist. Look up invoices and refund duplicate charges.",
    tools=[lookup_invoice, issue_refund],
)
technical = Agent(
    name="technical",
    handoff_description="Technical support: errors, crashes, login, passwords, outages.",
    instructions="Technical support specialist. Check service status and reset passwords.",
    tools=[check_service_status, reset_password],
)
triage = Agent(
    name="triage",
    instructions="Triage agent. Hand the customer to billing or technical support.",
    handoffs=[billing, technical],
)

app = AgentApp("demo", agents=[triage, billing, technical])
