"""Write data/invoices.jsonl: short invoices and billing letters for the extraction demo.

    python data/generate_invoices.py                       # 300 documents, deterministic
    python data/generate_invoices.py --rows 5000 --out /tmp/invoices.jsonl

Each row is ``{"id", "kind", "text", "expected"}``: ``text`` is the document as a model would
see it (a formal invoice, a letter, or a payment reminder, with the vendor, date, currency,
line items and total written the way such documents write them: ``March 3, 2024``,
``03.03.2024``, ``€ 1.234,50``, ``CHF 1'234.50`` ...), and ``expected`` the facts it holds, in
the shape of ``jobs/schemas/invoice.json``, for checking what a model extracted.
"""

from __future__ import annotations

import argparse
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

VENDORS = [
    ("Northwind Office Supply", "14 Harbour Road, Portsmouth"),
    ("Bergmann & Söhne GmbH", "Industriestraße 8, 70565 Stuttgart"),
    ("Atelier Lumière SARL", "22 rue des Tanneurs, 69002 Lyon"),
    ("Kowalski Print Studio", "ul. Długa 5, 80-827 Gdańsk"),
    ("Bluefin Logistics Ltd", "Unit 4, Dock Street, Leeds LS10 1JF"),
    ("Alpenblick Software AG", "Seestrasse 120, 8002 Zürich"),
    ("Sakura Trading Co.", "2-3-1 Marunouchi, Chiyoda-ku, Tokyo"),
    ("Redwood Catering LLC", "880 Mission Street, San Francisco, CA 94103"),
    ("Greenleaf Garden Services", "7 Orchard Lane, Bath BA1 2QT"),
    ("Helios Solar Systems BV", "Keizersgracht 301, 1016 ED Amsterdam"),
    ("Pinecrest IT Consulting Inc.", "410 Pine Avenue, Denver, CO 80202"),
    ("Costa Azul Traduções Lda", "Rua Augusta 54, 1100-053 Lisboa"),
]
CURRENCIES = {
    "USD": ("$", "{sym}{amount}", "us"),
    "EUR": ("€", "€ {amount}", "eu"),
    "GBP": ("£", "£{amount}", "us"),
    "CHF": ("CHF", "CHF {amount}", "ch"),
    "JPY": ("¥", "¥{amount}", "jp"),
}
VENDOR_CURRENCY = {
    "Northwind Office Supply": "GBP",
    "Bergmann & Söhne GmbH": "EUR",
    "Atelier Lumière SARL": "EUR",
    "Kowalski Print Studio": "EUR",
    "Bluefin Logistics Ltd": "GBP",
    "Alpenblick Software AG": "CHF",
    "Sakura Trading Co.": "JPY",
    "Redwood Catering LLC": "USD",
    "Greenleaf Garden Services": "GBP",
    "Helios Solar Systems BV": "EUR",
    "Pinecrest IT Consulting Inc.": "USD",
    "Costa Azul Traduções Lda": "EUR",
}
ITEMS = [
    ("A4 copy paper, box of 5 reams", 18, 42),
    ("Toner cartridge, black", 45, 120),
    ("On-site support, per hour", 60, 180),
    ("Software licence, annual", 300, 1500),
    ("Brochure printing, 500 copies", 150, 600),
    ("Freight, pallet", 80, 260),
    ("Translation, per 1,000 words", 70, 160),
    ("Garden maintenance visit", 55, 140),
    ("Solar panel inspection", 200, 450),
    ("Lunch buffet, per person", 15, 38),
    ("Consulting day", 600, 1400),
    ("Ergonomic office chair", 180, 520),
]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def money(value: float, currency: str) -> str:
    """``value`` written the way a document in ``currency`` writes it."""
    sym, pattern, style = CURRENCIES[currency]
    if style == "jp":
        text = f"{round(value):,}"
    elif style == "eu":
        text = f"{value:,.2f}".replace(",", " ").replace(".", ",").replace(" ", ".")
    elif style == "ch":
        text = f"{value:,.2f}".replace(",", "'")
    else:
        text = f"{value:,.2f}"
    return pattern.format(sym=sym, amount=text)


def written_date(day: date, currency: str, rng: random.Random) -> str:
    choice = rng.random()
    if choice < 0.35:
        return day.isoformat()
    if choice < 0.7:
        return f"{MONTHS[day.month - 1]} {day.day}, {day.year}"
    if currency == "USD":
        return f"{day.month:02d}/{day.day:02d}/{day.year}"
    return f"{day.day:02d}.{day.month:02d}.{day.year}"


def document(index: int, rng: random.Random) -> dict[str, Any]:
    vendor, address = rng.choice(VENDORS)
    currency = VENDOR_CURRENCY[vendor]
    issued = date(2024, 1, 1) + timedelta(days=rng.randrange(0, 366))
    number = f"{vendor.split()[0][:3].upper()}-{issued.year}-{rng.randint(100, 9999):04d}"
    scale = 150 if currency == "JPY" else 1
    items = []
    for description, low, high in rng.sample(ITEMS, rng.randint(1, 4)):
        quantity = rng.choice([1, 1, 2, 3, 5, 10])
        unit = round(rng.uniform(low, high) * scale, 0 if currency == "JPY" else 2)
        items.append(
            {
                "description": description,
                "quantity": quantity,
                "unit_price": unit,
                "amount": round(quantity * unit, 2),
            }
        )
    subtotal = round(sum(i["amount"] for i in items), 2)
    tax_rate = {"EUR": 0.2, "GBP": 0.2, "CHF": 0.081, "JPY": 0.1, "USD": 0.0}[currency]
    tax = round(subtotal * tax_rate, 0 if currency == "JPY" else 2)
    total = round(subtotal + tax, 2)
    when = written_date(issued, currency, rng)
    lines = "\n".join(
        f"  {i['quantity']} x {i['description']} @ {money(i['unit_price'], currency)}"
        f" = {money(i['amount'], currency)}"
        for i in items
    )
    kind = rng.choice(["invoice", "invoice", "letter", "reminder"])
    if kind == "invoice":
        text = (
            f"{vendor}\n{address}\n\nINVOICE {number}\nDate: {when}\n\n{lines}\n\n"
            f"Subtotal: {money(subtotal, currency)}\n"
            f"Tax ({tax_rate:.1%}): {money(tax, currency)}\n"
            f"TOTAL DUE: {money(total, currency)}\n"
            "Payment within 30 days. Thank you for your business."
        )
    elif kind == "letter":
        text = (
            f"Dear customer,\n\nthank you for your order. As agreed, {vendor} ({address}) "
            f"invoices you on {when} for the following:\n{lines}\n"
            f"With tax of {money(tax, currency)}, the amount due is {money(total, currency)}. "
            f"Please quote invoice number {number} with your payment.\n\n"
            f"Kind regards,\nAccounts, {vendor}"
        )
    else:
        text = (
            f"PAYMENT REMINDER from {vendor}\n\nOur records show that invoice {number}, "
            f"issued {when}, is still open:\n{lines}\n"
            f"Outstanding (tax included): {money(total, currency)}.\n"
            "If you have already paid, please disregard this reminder."
        )
    expected = {
        "vendor": vendor,
        "invoice_number": number,
        "date": issued.isoformat(),
        "currency": currency,
        "line_items": items,
        "total": total,
    }
    return {"id": f"inv-{index:05d}", "kind": kind, "text": text, "expected": expected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "invoices.jsonl"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with args.out.open("wb") as handle:
        for index in range(1, args.rows + 1):
            handle.write(orjson.dumps(document(index, rng)) + b"\n")
    print(f"wrote {args.rows:,} documents to {args.out}")


if __name__ == "__main__":
    main()
