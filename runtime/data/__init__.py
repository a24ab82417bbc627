"""Training data: sources, tokenisation, chat templates, packing, dynamic batching, mixtures,
streaming, bad-record accounting and a stateful, resumable loader (see loader.py)."""
from .bad_records import BadRecordError, BadRecords, gather_tally
from .checks import check_sources, estimate_mixture, format_estimate
from .kinds import load_tokenizer
from .loader import build_loader
from .sources import Source, infer_format, read_records

__all__ = ["Source", "load_tokenizer", "build_loader", "infer_format", "read_records", "BadRecords",
           "BadRecordError", "gather_tally", "check_sources", "estimate_mixture", "format_estimate"]
