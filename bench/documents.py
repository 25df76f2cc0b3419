"""Peak memory of a document job against a text job of the same row count, measured in one run.

    python bench/documents.py                       # 2,000 PDFs of ~300 KB vs 2,000 text rows
    python bench/documents.py --rows 500 --pad-kb 100 --concurrency 32

Makes the inputs in a temporary folder (``data/generate_scans.py`` and
``data/generate_invoices.py``), starts ``pipeline fake-provider`` as a process of its own (so its
memory is not counted), then runs ``pipeline run`` on each job as a child process and reads its
peak resident set size from ``os.wait4`` (``ru_maxrss``). Both jobs extract the same schema with
the same limits; they differ only in where the invoice comes from (a PDF attached, or text).
Prints both peaks, their difference and the document job's bytes sent; then how the same PDFs
split into batch part files at each provider's default byte limit (lines built and written one
at a time, as a batch run does; nothing is sent).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCHEMA = ROOT / "jobs" / "schemas" / "invoice.json"


def job(
    path: Path,
    *,
    name: str,
    inputs: str,
    db: Path,
    concurrency: int,
    attach: bool,
    window_mb: float | None = None,
) -> Path:
    request = (
        'attachments = ["{path}"]\nprompt = "Extract the invoice in this document."'
        if attach
        else 'prompt = "Extract the invoice in this document.\\n\\n{text}"'
    )
    path.write_text(
        f"""
name = "{name}"
[input]
path = "{inputs}"
{"" if attach else 'id = "id"'}
[request]
provider = "anthropic"
model = "claude-sonnet-4-5"
schema = "{SCHEMA}"
max_tokens = 1024
{request}
[limits]
concurrency = {concurrency}
{f"documents_in_flight_mb = {window_mb}" if attach and window_mb else ""}
[output]
db = "{db}"
"""
    )
    return path


def batch_split(pdfs: Path, out: Path) -> None:
    """Write the PDFs' batch lines into part files at each provider's limits; print the parts."""
    import resource

    from pipeline.execution.parts import PartWriter
    from pipeline.job import parse_job
    from pipeline.providers.anthropic_batch import AnthropicBatchProvider
    from pipeline.providers.openai_batch import OpenAIBatchProvider
    from pipeline.records import Row
    from pipeline.render import Renderer

    for name, cls, model in (
        ("openai", OpenAIBatchProvider, "gpt-4o"),
        ("anthropic", AnthropicBatchProvider, "claude-sonnet-4-5"),
    ):
        spec = parse_job(
            f'name = "b"\n[input]\npath = "{pdfs}/*.pdf"\n[request]\nprovider = "{name}"\n'
            f'model = "{model}"\nprompt = "Extract."\nattachments = ["{{path}}"]\n'
        ).request
        renderer = Renderer(spec)
        provider = cls(None, base_url="http://unused.invalid", api_key="unused")  # type: ignore[arg-type]
        writer = PartWriter(
            out / name, max_requests=provider.max_requests, max_bytes=provider.max_bytes
        )
        started = time.perf_counter()
        parts = []
        for path in sorted(pdfs.glob("*.pdf")):
            request = renderer.render(Row(str(path), {"path": str(path)}, str(path), 1))
            closed = writer.add(
                request.request_key, request.row_id, str(path), 1, provider.line(request)
            )
            if closed is not None:
                parts.append(closed[0])
        last = writer.close()
        if last is not None:
            parts.append(last[0])
        took = time.perf_counter() - started
        sizes = ", ".join(f"{p.count:,} rows / {p.bytes / 1e6:,.1f} MB" for p in parts)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"batch parts, {name} (limit {provider.max_bytes / 1e6:,.0f} MB): {len(parts)} parts: "
            f"{sizes} · {took:.1f} s · peak RSS of this process so far {peak:,.0f} MB"
        )
        for p in parts:
            p.path.unlink()


def peak_rss_mb(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a command; its peak RSS in MB and its wall time in seconds."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed ({status})")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--pad-kb", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--pdfs", type=Path, help="an existing folder of PDFs to use instead")
    parser.add_argument("--window-mb", type=float, help="the job's documents_in_flight_mb")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pdfs = args.pdfs
        if pdfs is None:
            pdfs = tmp / "pdfs"
            subprocess.run(
                [
                    sys.executable,
                    ROOT / "data" / "generate_scans.py",
                    *("--out", str(pdfs), "--pdfs", str(args.rows), "--pngs", "0"),
                    *("--pad-kb", str(args.pad_kb)),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        texts = tmp / "invoices.jsonl"
        subprocess.run(
            [
                sys.executable,
                ROOT / "data" / "generate_invoices.py",
                *("--rows", str(args.rows), "--out", str(texts)),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        fake = subprocess.Popen(
            [BIN / "pipeline", "fake-provider", "--port", str(port)], stdout=subprocess.DEVNULL
        )
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)  # the server is starting; nothing else to wait on
            env = {**os.environ, "ANTHROPIC_API_KEY": "bench-key"}
            url = f"http://127.0.0.1:{port}"
            figures = {}
            for name, inputs, attach in (
                ("text", str(texts), False),
                ("pdfs", f"{pdfs}/*.pdf", True),
            ):
                path = job(
                    tmp / f"{name}.toml",
                    name=name,
                    inputs=inputs,
                    db=tmp / f"{name}.duckdb",
                    concurrency=args.concurrency,
                    attach=attach,
                    window_mb=args.window_mb,
                )
                command = [str(BIN / "pipeline"), "run", str(path), "--base-url", url, "--quiet"]
                figures[name] = peak_rss_mb(command, env)
        finally:
            fake.terminate()
            fake.wait()
        size = sum(p.stat().st_size for p in Path(pdfs).glob("*.pdf"))
        batch_split(Path(pdfs), tmp / "parts")
    text_mb, text_s = figures["text"]
    pdf_mb, pdf_s = figures["pdfs"]
    print(f"text job, {args.rows:,} rows:  peak RSS {text_mb:,.0f} MB ({text_s:.1f} s)")
    print(
        f"PDF job, {args.rows:,} PDFs ({size / 1e6:,.0f} MB, {size / args.rows / 1e3:,.0f} KB "
        f"each): peak RSS {pdf_mb:,.0f} MB ({pdf_s:.1f} s)"
    )
    window = f"{args.window_mb} MB" if args.window_mb else "default"
    print(
        f"difference: {pdf_mb - text_mb:+,.0f} MB (concurrency {args.concurrency}, "
        f"documents_in_flight_mb {window})"
    )


if __name__ == "__main__":
    main()
