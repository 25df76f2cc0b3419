"""What a job is: its file (``config``) and what its rows cost (``pricing``).

A job file is loaded once and checked key by key (``load_job``); the price of its model comes
from the job's ``[pricing]`` table or genai-prices, looked up once per run (``price_for``).
"""

from __future__ import annotations

from .config import (
    FALLBACK_WHEN,
    JOB_KEYS,
    PROVIDERS,
    BatchSpec,
    ClusterSpec,
    FallbackSpec,
    InputSpec,
    Job,
    LimitsSpec,
    OutputSpec,
    RequestSpec,
    job_from_mapping,
    load_job,
    parse_job,
)

__all__ = [
    "FALLBACK_WHEN",
    "JOB_KEYS",
    "PROVIDERS",
    "BatchSpec",
    "ClusterSpec",
    "FallbackSpec",
    "InputSpec",
    "Job",
    "LimitsSpec",
    "OutputSpec",
    "RequestSpec",
    "job_from_mapping",
    "load_job",
    "parse_job",
]
