"""The tamper-evident audit log: the writer (log.py), its hash chain (chain.py), its key (signing.py),
and reading it back for verification and export (reader.py)."""
from .chain import Problem, Report
from .log import DEFAULT_MAX_BUFFER, AuditLog
from .reader import export, open_readonly, verify_file

__all__ = ["DEFAULT_MAX_BUFFER", "AuditLog", "Problem", "Report", "export", "open_readonly",
           "verify_file"]
