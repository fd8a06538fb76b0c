"""Hash-chained JSONL audit log: writing, verifying, reading and redaction.

One file per container (``<dir>/<container>.jsonl``, system records of the supervisor
itself in ``_supervisor.jsonl``), one JSON record per line, each carrying the SHA-256 of the
line before it. :class:`AuditLog` writes (durably on :meth:`AuditLog.sync`),
:func:`verify_file` checks a file's chain, :func:`iter_records` / :func:`merge_records` read
them back with a :class:`RecordFilter`, and :class:`Redactor` keeps secrets out of them.
"""

from coi_watch.audit.chain import GENESIS, SCHEMA_VERSION, line_hash
from coi_watch.audit.log import SUPERVISOR_FILE, AuditLog, AuditStats, default_audit_dir
from coi_watch.audit.read import (
    AuditRecord,
    RecordFilter,
    expand_paths,
    format_record,
    iter_records,
    merge_records,
    parse_time,
)
from coi_watch.audit.redact import DEFAULT_PATTERNS, REDACTED, Pattern, Redactor
from coi_watch.audit.verify import VerifyResult, verify_file

__all__ = (
    "DEFAULT_PATTERNS",
    "GENESIS",
    "REDACTED",
    "SCHEMA_VERSION",
    "SUPERVISOR_FILE",
    "AuditLog",
    "AuditRecord",
    "AuditStats",
    "Pattern",
    "RecordFilter",
    "Redactor",
    "VerifyResult",
    "default_audit_dir",
    "expand_paths",
    "format_record",
    "iter_records",
    "line_hash",
    "merge_records",
    "parse_time",
    "verify_file",
)
