"""Write a folder of invoice PDFs and PNG scans for the document-extraction demo.

    python data/generate_scans.py                          # data/scans/: 24 PDFs, 12 PNGs
    python data/generate_scans.py --pdfs 2000 --pngs 0 --pad-kb 300 --out /tmp/scans

Deterministic (the same files every time for the same arguments); made at demo time, never
committed. Each document states its facts the way the demo's fake provider reads them
(``Vendor: ...`` lines and a ``Description | Quantity | Unit price | Amount`` table); a real model
reads any layout. PDFs are drawn with fpdf2 (a text layer, one or two pages); PNGs are a page
drawn with Pillow at 100 dpi, with the page's text in the PNG's ``Description`` chunk, which the
fake provider reads in place of OCR. ``--pad-kb`` adds a noise image to each PDF, to make
larger files (the memory benchmark). The facts of every document go to ``expected.jsonl`` next
to the folder (``data/scans-expected.jsonl``), in the shape of ``jobs/schemas/invoice.json``.
"""

from __future__ import annotations

import argparse
import io
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

VENDORS = [
    ("Northwind Office Supply", "GBP", "14 Harbour Road, Portsmouth"),
    ("Bergmann & Sohne GmbH", "EUR", "Industriestrasse 8, 70565 Stuttgart"),
    ("Atelier Lumiere SARL", "EUR", "22 rue des Tanneurs, 69002 Lyon"),
    ("Bluefin Logistics Ltd", "GBP", "Unit 4, Dock Street, Leeds LS10 1JF"),
    ("Alpenblick Software AG", "CHF", "Seestrasse 120, 8002 Zurich"),
    ("Redwood Catering LLC", "USD", "880 Mission Street, San Francisco, CA 94103"),
    ("Helios Solar Systems BV", "EUR", "Keizersgracht 301, 1016 ED Amsterdam"),
    ("Pinecrest IT Consulting Inc.", "USD", "410 Pine Avenue, Denver, CO 80202"),
]
ITEMS = [
    ("A4 copy paper, box of 5 reams", 18, 42),
    ("Toner cartridge, black", 45, 120),
    ("On-site support, per hour", 60, 180),
    ("Software licence, annual", 300, 1500),
    ("Brochure printing, 500 copies", 150, 600),
    ("Freight, pallet", 80, 260),
    ("Consulting day", 600, 1400),
    ("Ergonomic office chair", 180, 520),
]


def facts(index: int, rng: random.Random) -> dict[str, Any]:
    """One invoice's facts, in the shape of jobs/schemas/invoice.json."""
    vendor, currency, _ = VENDORS[rng.randrange(len(VENDORS))]
    day = date(2024, 1, 1) + timedelta(days=rng.randrange(330))
    lines = []
    for description, low, high in rng.sample(ITEMS, rng.randint(1, 4)):
        quantity = rng.randint(1, 6)
        unit = round(rng.uniform(low, high), 2)
        lines.append(
            {
                "description": description,
                "quantity": quantity,
                "unit_price": unit,
                "amount": round(quantity * unit, 2),
            }
        )
    subtotal = round(sum(line["amount"] for line in lines), 2)
    tax = round(subtotal * 0.2, 2)
    return {
        "vendor": vendor,
        "invoice_number": f"{vendor[:3].upper()}-2024-{1000 + index:04d}",
        "date": day.isoformat(),
        "currency": currency,
        "line_items": lines,
        "total": round(subtotal + tax, 2),
        "_subtotal": subtotal,
        "_tax": tax,
    }


def page_text(doc: dict[str, Any]) -> list[str]:
    """The lines of the invoice's page."""
    address = next(a for v, _, a in VENDORS if v == doc["vendor"])
    out = [
        doc["vendor"],
        address,
        "",
        "INVOICE",
        f"Vendor: {doc['vendor']}",
        f"Invoice number: {doc['invoice_number']}",
        f"Date: {doc['date']}",
        f"Currency: {doc['currency']}",
        "",
        "Description | Quantity | Unit price | Amount",
    ]
    for line in doc["line_items"]:
        out.append(
            f"{line['description']} | {line['quantity']} | {line['unit_price']:.2f} | "
            f"{line['amount']:.2f}"
        )
    out += [
        "",
        f"Subtotal {doc['currency']} {doc['_subtotal']:.2f}",
        f"Tax (20%) {doc['currency']} {doc['_tax']:.2f}",
        f"Total: {doc['total']:.2f}",
        "",
        "Payment within 30 days. Please quote the invoice number with your payment.",
    ]
    return out


def write_pdf(path: Path, lines: list[str], *, terms_page: bool, pad_kb: int, seed: int) -> None:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for line in lines:
        pdf.cell(0, 7, line, new_x="LMARGIN", new_y="NEXT")
    if pad_kb:
        pdf.image(_noise_png(pad_kb, seed), x=20, y=200, w=60)
    if terms_page:
        pdf.add_page()
        pdf.set_font("Helvetica", size=9)
        for n in range(1, 13):
            pdf.cell(
                0, 6, f"{n}. General terms of sale, clause {n}.", new_x="LMARGIN", new_y="NEXT"
            )
    pdf.output(str(path))


def _noise_png(kilobytes: int, seed: int) -> io.BytesIO:
    """A PNG of random grey pixels of about ``kilobytes`` (noise does not compress)."""
    from PIL import Image

    side = max(8, int((kilobytes * 1024) ** 0.5))
    noise = random.Random(seed).randbytes(side * side)
    out = io.BytesIO()
    Image.frombytes("L", (side, side), noise).save(out, format="PNG")
    out.seek(0)
    return out


def write_png(path: Path, lines: list[str]) -> None:
    from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

    image = Image.new("L", (827, 1169), 255)  # A4 at 100 dpi
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=16)
    y = 60
    for line in lines:
        draw.text((60, y), line, fill=20, font=font)
        y += 26
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", "\n".join(lines))
    image.save(path, pnginfo=info, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/scans"))
    parser.add_argument("--pdfs", type=int, default=24)
    parser.add_argument("--pngs", type=int, default=12)
    parser.add_argument("--pad-kb", type=int, default=0, help="noise added to each PDF, in KB")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    expected = []
    for index in range(args.pdfs + args.pngs):
        doc = facts(index, rng)
        lines = page_text(doc)
        if index < args.pdfs:
            path = args.out / f"invoice-{index + 1:05d}.pdf"
            write_pdf(
                path, lines, terms_page=index % 4 == 3, pad_kb=args.pad_kb, seed=args.seed + index
            )
        else:
            path = args.out / f"scan-{index + 1:05d}.png"
            write_png(path, lines)
        public = {k: v for k, v in doc.items() if not k.startswith("_")}
        expected.append({"path": str(path), "expected": public})
    listing = args.out.parent / f"{args.out.name}-expected.jsonl"
    listing.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in expected))
    print(f"wrote {args.pdfs} PDFs and {args.pngs} PNG scans to {args.out}/, facts in {listing}")


if __name__ == "__main__":
    main()
